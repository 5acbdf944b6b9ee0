"""Snakemake script of rule train_config: the config's runs.<run> -> runs/<run>/training.yaml."""

from edm2lib.pipeline import steps

sm = snakemake  # noqa: F821 (injected by Snakemake's `script:` directive)
run = sm.config["runs"][sm.wildcards.run]  # params.run holds the keys that rerun this rule; runtime keys too
steps.run_step(sm.log[0], steps.train_config, run, sm.params.data, sm.output.config)
