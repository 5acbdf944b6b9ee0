"""Training engine: EDM2 loss schedule, distributed setup, sampler, checkpoints, preemption and the loop."""

from edm2lib.training.config import TrainConfig
from edm2lib.training.loop import train
from edm2lib.training.preempt import EXIT_PREEMPTED

__all__ = ["EXIT_PREEMPTED", "TrainConfig", "train"]
