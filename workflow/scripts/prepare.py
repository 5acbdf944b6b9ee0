"""Snakemake script: raw images -> data/<name>/images.h5 (edm2lib.data.prepare_dataset)."""

from edm2lib.pipeline.steps import prepare, run_step

sm = snakemake  # noqa: F821 (injected by Snakemake's `script:` directive)
run_step(sm.log[0], prepare, sm.params.data, sm.output.images, sm.threads)
