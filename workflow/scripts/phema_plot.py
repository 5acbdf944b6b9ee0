"""Snakemake script: a run's target EMA profiles and their reconstructions (PNG)."""

from edm2lib.pipeline.steps import plot_run_profiles, run_step

sm = snakemake  # noqa: F821 (injected by Snakemake's `script:` directive)
run_step(sm.log[0], plot_run_profiles, sm.input.trained, sm.params.targets, sm.output.plot)
