"""Snakemake script: one seed block of samples -> metrics JSON with FID / FD-DINOv2 (edm2lib.report)."""

from edm2lib.report import score_point
from edm2lib.steps import run_step

sm = snakemake  # noqa: F821 (injected by Snakemake's `script:` directive)
refs = {name: path for name, path in sm.input.items() if name != "samples"}
run_step(
    sm.log[0], score_point, sm.input.samples, refs, sm.params.metrics, sm.params.point, sm.output.metrics
)
