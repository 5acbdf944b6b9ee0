"""Learning-rate schedule of EDM2: inverse square-root decay after t_ref with a linear warm-up."""

from __future__ import annotations

import math


def learning_rate(nimg: int, lr_ref: float, t_ref: float, warmup: float = 10_000_000) -> float:
    """lr for the step taken after `nimg` training images (so the very first step has lr 0).

    `t_ref` and `warmup` are in images (the paper gives t_ref in batches: multiply by the batch size).
    """
    # EDM2 eq. 16 / EDM2-FACTS 6.2: alpha_ref / sqrt(max(t / t_ref, 1)), times a linear warm-up
    if nimg < 0 or t_ref <= 0 or warmup < 0:
        raise ValueError(
            f"learning_rate: need nimg >= 0, t_ref > 0, warmup >= 0 (got {nimg}, {t_ref}, {warmup})"
        )
    lr = lr_ref / math.sqrt(max(nimg / t_ref, 1.0))
    if warmup > 0:
        lr *= min(nimg / warmup, 1.0)
    return lr
