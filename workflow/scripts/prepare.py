"""Snakemake script: raw images -> data/<name>/images.h5 (edm2lib.data.prepare_dataset)."""

from edm2lib.data import prepare_dataset
from edm2lib.pipeline import data_source
from edm2lib.steps import run_step

sm = snakemake  # noqa: F821 (injected by Snakemake's `script:` directive)
data = sm.params.data
run_step(
    sm.log[0],
    prepare_dataset,
    data_source(data),
    sm.output.images,
    resolution=data["resolution"],
    transform=data["transform"],
    labels=data["labels"],
    max_images=data["max_images"],
    workers=sm.threads,
    progress=False,
)
