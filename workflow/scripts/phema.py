"""Snakemake script: a run's snapshots -> runs/<run>/phema/ (one pass, all targets)."""

from edm2lib.pipeline.steps import reconstruct_run, run_step

sm = snakemake  # noqa: F821 (injected by Snakemake's `script:` directive)
run_step(sm.log[0], reconstruct_run, sm.input.trained, sm.params.targets, sm.output.phema)
