"""Snakemake script of rule table: every metrics JSON -> results/fid_table.csv + fid_vs_sigma_rel.png."""

from edm2lib.pipeline import steps

sm = snakemake  # noqa: F821 (injected by Snakemake's `script:` directive)
steps.run_step(sm.log[0], steps.table, sm.input.metrics, sm.output.table, sm.output.plot, sm.input.floor)
