"""Snakemake script of rule heldout: the source's held-out split -> data/<name>/heldout.h5."""

from edm2lib.pipeline import steps

sm = snakemake  # noqa: F821 (injected by Snakemake's `script:` directive)
steps.run_step(sm.log[0], steps.heldout, sm.params.data, sm.output.images)
