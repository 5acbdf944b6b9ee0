"""Snakemake script of rule refstats: real images -> reference statistics of one detector."""

from edm2lib.pipeline import steps

sm = snakemake  # noqa: F821 (injected by Snakemake's `script:` directive)
m = sm.config["metrics"]
steps.run_step(
    sm.log[0],
    steps.refstats,
    sm.input.images,
    sm.wildcards.detector,
    sm.params.detector,
    m["batch"],
    m["download"],
    sm.output.stats,
)
