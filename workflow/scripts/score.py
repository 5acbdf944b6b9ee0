"""Snakemake script: one seed block of samples -> metrics JSON with FID / FD-DINOv2."""

from edm2lib.pipeline.steps import run_step
from edm2lib.pipeline.table import score_point

sm = snakemake  # noqa: F821 (injected by Snakemake's `script:` directive)
refs = {name: path for name, path in sm.input.items() if name != "samples"}
run_step(
    sm.log[0], score_point, sm.input.samples, refs, sm.params.metrics, sm.params.point, sm.output.metrics
)
