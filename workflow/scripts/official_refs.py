"""Snakemake script: NVIDIA's published reference statistics -> data/<name>/ref-<detector>.npz."""

from edm2lib.pipeline.steps import official_refs, run_step

sm = snakemake  # noqa: F821 (injected by Snakemake's `script:` directive)
out = {name: path for name, path in sm.output.items()}
data = {"name": sm.params.refs, "refs": sm.params.refs, "resolution": sm.params.resolution}
metrics = {**sm.params.detectors, "download": sm.config["metrics"]["download"]}
run_step(sm.log[0], official_refs, data, metrics, sm.config["official"], out)
