"""Snakemake script of rule class_grid: one point's first seed block -> a sample grid by class."""

from edm2lib.pipeline import steps

sm = snakemake  # noqa: F821 (injected by Snakemake's `script:` directive)
steps.run_step(sm.log[0], steps.class_grid, sm.input.samples, sm.input.images, sm.output.grid)
