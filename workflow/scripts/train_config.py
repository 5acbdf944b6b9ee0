"""Snakemake script: the config's `runs.<run>` section -> runs/<run>/training.yaml for edm2lib.training."""

from edm2lib.pipeline.steps import run_step, write_training_config

sm = snakemake  # noqa: F821 (injected by Snakemake's `script:` directive)
run_step(sm.log[0], write_training_config, sm.params.run, sm.params.data, sm.output.config)
