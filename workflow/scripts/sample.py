"""Snakemake script: one seed block of one point -> samples HDF5 + PNG grid (edm2lib.sampling.generate)."""

from edm2lib.pipeline.steps import default_device, run_step
from edm2lib.sampling.generate import generate

sm = snakemake  # noqa: F821 (injected by Snakemake's `script:` directive)
first, end = sm.params.seeds
run_step(
    sm.log[0],
    generate,
    sm.params.net,
    range(first, end),
    out_h5=sm.output.images,
    gnet_path=sm.params.guide,
    guidance=sm.params.guidance["w"],
    guidance_interval=sm.params.guidance["interval"],
    num_steps=sm.params.sampling["num_steps"],
    batch_size=sm.params.sampling["batch"],
    device=default_device(),
    grid_png=sm.output.grid,
    progress=False,
)
