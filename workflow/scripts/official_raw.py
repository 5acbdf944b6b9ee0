"""Snakemake script: a released run's raw EMA snapshots -> runs/<run>/snapshots/ + trained marker."""

from edm2lib.pipeline.steps import official_raw, run_step

sm = snakemake  # noqa: F821 (injected by Snakemake's `script:` directive)
run_step(
    sm.log[0], official_raw, sm.params.run, sm.config["official"], sm.params.snapshots, sm.output.trained
)
