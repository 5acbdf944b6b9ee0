"""Snakemake script: every metrics JSON -> results/fid_table.csv + results/fid_vs_sigma_rel.png."""

from edm2lib.pipeline.steps import run_step
from edm2lib.pipeline.table import write_results

sm = snakemake  # noqa: F821 (injected by Snakemake's `script:` directive)
run_step(sm.log[0], write_results, list(sm.input.metrics), sm.output.table, sm.output.plot)
