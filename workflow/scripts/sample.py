"""Snakemake script of rule sample: one seed block of one point -> samples HDF5 + PNG grid."""

from edm2lib.pipeline import steps

sm = snakemake  # noqa: F821 (injected by Snakemake's `script:` directive)
p = sm.params
batch = sm.config["sampling"]["batch"]  # speed only: no param
steps.run_step(
    sm.log[0],
    steps.sample,
    p.net,
    p.guide,
    p.guidance,
    p.seeds,
    p.num_steps,
    batch,
    sm.output.images,
    sm.output.grid,
)
