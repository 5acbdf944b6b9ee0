"""Snakemake script: real images -> reference feature statistics of one detector (edm2lib.pipeline.table)."""

from edm2lib.pipeline.steps import run_step
from edm2lib.pipeline.table import reference_stats

sm = snakemake  # noqa: F821 (injected by Snakemake's `script:` directive)
run_step(
    sm.log[0], reference_stats, sm.input.images, sm.wildcards.detector, sm.params.metrics, sm.output.stats
)
