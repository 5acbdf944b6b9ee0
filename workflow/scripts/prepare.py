"""Snakemake script of rule prepare: raw images -> data/<name>/images.h5."""

from edm2lib.pipeline import steps

sm = snakemake  # noqa: F821 (injected by Snakemake's `script:` directive)
steps.run_step(sm.log[0], steps.prepare, sm.params.data, sm.output.images, sm.threads)
