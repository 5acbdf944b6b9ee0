"""Snakemake script of rule floor: one seed block's count of real held-out images -> a floor metrics JSON."""

from edm2lib.pipeline import steps

sm = snakemake  # noqa: F821 (injected by Snakemake's `script:` directive)
m = sm.config["metrics"]
refs = {name: path for name, path in sm.input.items() if name not in ("heldout", "classifier_file")}
steps.run_step(
    sm.log[0],
    steps.floor,
    sm.input.heldout,
    refs,
    sm.params.detectors,
    m["batch"],
    m["download"],
    sm.params.images,
    int(sm.wildcards.block),
    sm.output.metrics,
)
