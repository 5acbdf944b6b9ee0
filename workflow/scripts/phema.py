"""Snakemake script of rule phema: a run's snapshots -> runs/<run>/phema/ (one pass, all targets)."""

from edm2lib.pipeline import steps

sm = snakemake  # noqa: F821 (injected by Snakemake's `script:` directive)
steps.run_step(sm.log[0], steps.phema, sm.input.trained, sm.params.targets, sm.output.phema)
