"""Snakemake script: results/fid_table.csv -> results/ours_vs_paper.png (edm2lib.pipeline.table)."""

from edm2lib.pipeline.steps import run_step
from edm2lib.pipeline.table import plot_vs_paper

sm = snakemake  # noqa: F821 (injected by Snakemake's `script:` directive)
run_step(sm.log[0], plot_vs_paper, sm.input.table, sm.output.plot)
