"""Snakemake script: NVIDIA's published reference statistics -> data/<name>/ref-<detector>.npz."""

from edm2lib.pipeline.steps import official_refs, run_step

sm = snakemake  # noqa: F821 (injected by Snakemake's `script:` directive)
out = {name: path for name, path in sm.output.items()}
run_step(
    sm.log[0], official_refs, sm.params.refs, sm.params.resolution, sm.params.detectors,
    sm.config["metrics"]["download"], sm.config["official"], out,
)  # fmt: skip
