"""Snakemake script of rule phema_plot: a run's target EMA profiles and their reconstructions (PNG)."""

from edm2lib.pipeline import steps

sm = snakemake  # noqa: F821 (injected by Snakemake's `script:` directive)
steps.run_step(sm.log[0], steps.phema_plot, sm.input.trained, sm.params.targets, sm.output.plot)
