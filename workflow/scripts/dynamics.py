"""Snakemake script of rule dynamics: a run's telemetry.jsonl -> results/dynamics-<run>.png."""

from edm2lib.pipeline import steps

sm = snakemake  # noqa: F821 (injected by Snakemake's `script:` directive)
steps.run_step(sm.log[0], steps.dynamics, sm.input.trained, sm.output.plot, sm.params.title)
