"""Snakemake script of rule train: runs/<run>/training.yaml -> training ranks -> runs/<run>/trained.json."""

from edm2lib.pipeline import steps

sm = snakemake  # noqa: F821 (injected by Snakemake's `script:` directive)
steps.run_step(
    sm.log[0],
    steps.train,
    sm.input.config,
    sm.output.trained,
    sm.params.identity,
    sm.resources.attempt,
    sm.params.launch,
)
