"""Snakemake script of rule detector: images.h5 + heldout.h5 -> the classifier detector and its identity."""

import torch

from edm2lib.pipeline import steps

sm = snakemake  # noqa: F821 (injected by Snakemake's `script:` directive)
torch.set_num_threads(sm.threads)
steps.run_step(
    sm.log[0],
    steps.detector,
    sm.input.images,
    sm.input.heldout,
    sm.params.settings,
    sm.output.classifier,
    sm.output.identity,
)
