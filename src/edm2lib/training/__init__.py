"""Training engine: EDM2 loss schedule, distributed setup, sampler, checkpoints, preemption and the loop."""

from edm2lib.training.config import TrainConfig
from edm2lib.training.preempt import EXIT_PREEMPTED

__all__ = ["EXIT_PREEMPTED", "TrainConfig", "train"]


def __getattr__(name: str):
    """`edm2lib.training.train`, imported on first use: the config alone (e.g. the pipeline's identity
    hashes while Snakemake builds its DAG) does not load torch."""
    if name == "train":
        from edm2lib.training.loop import train

        return train
    raise AttributeError(f"module 'edm2lib.training' has no attribute {name!r}")
