"""Snakemake script: real images -> reference feature statistics of one detector (edm2lib.report)."""

from edm2lib.report import reference_stats
from edm2lib.steps import run_step

sm = snakemake  # noqa: F821 (injected by Snakemake's `script:` directive)
run_step(
    sm.log[0], reference_stats, sm.input.images, sm.wildcards.detector, sm.params.metrics, sm.output.stats
)
