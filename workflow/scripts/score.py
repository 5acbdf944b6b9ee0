"""Snakemake script of rule score: one seed block of samples -> metrics JSON with FID / FD-DINOv2."""

from edm2lib.pipeline import steps

sm = snakemake  # noqa: F821 (injected by Snakemake's `script:` directive)
m = sm.config["metrics"]
refs = {name: path for name, path in sm.input.items() if name not in ("samples", "classifier_file")}
steps.run_step(
    sm.log[0],
    steps.score,
    sm.input.samples,
    refs,
    sm.params.detectors,
    m["batch"],
    m["download"],
    sm.params.point,
    sm.output.metrics,
)
