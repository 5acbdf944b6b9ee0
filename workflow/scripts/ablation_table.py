"""Snakemake script of rule ablation_table: scores of configs A..G -> results/ablation_table.csv."""

from edm2lib.pipeline import steps

sm = snakemake  # noqa: F821 (injected by Snakemake's `script:` directive)
steps.run_step(
    sm.log[0],
    steps.ablation,
    list(sm.input.metrics),
    sm.params.runs,
    sm.params.phema_dirs,
    sm.params.detectors,
    sm.params.unguided,
    sm.output.table,
)
