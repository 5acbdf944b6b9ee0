"""Snakemake script of rule encode: images.h5 -> latents.h5 (data.encode_batch read at run time)."""

from edm2lib.pipeline import steps

sm = snakemake  # noqa: F821 (injected by Snakemake's `script:` directive)
batch = sm.config["data"]["encode_batch"]
steps.run_step(
    sm.log[0], steps.encode, sm.input.images, sm.output.latents, sm.params.vae, sm.params.revision, batch
)
