"""Snakemake script: images.h5 -> latents.h5 with the SD VAE (edm2lib.data.encode_dataset)."""

from edm2lib.data import encode_dataset
from edm2lib.pipeline.steps import default_device, run_step

sm = snakemake  # noqa: F821 (injected by Snakemake's `script:` directive)
run_step(
    sm.log[0],
    encode_dataset,
    sm.input.images,
    sm.output.latents,
    vae=sm.params.vae,
    revision=sm.params.revision,
    device=default_device(),
    progress=False,
)
