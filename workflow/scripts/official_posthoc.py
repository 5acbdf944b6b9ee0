"""Snakemake script: released post-hoc reconstructions -> runs/<run>/phema/ (edm2lib.official)."""

from edm2lib.pipeline.steps import official_posthoc, run_step

sm = snakemake  # noqa: F821 (injected by Snakemake's `script:` directive)
run_step(
    sm.log[0], official_posthoc, sm.params.run, sm.params.targets, sm.config["official"], sm.output.phema,
    sm.output.trained,
)  # fmt: skip
