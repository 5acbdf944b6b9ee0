"""The training recipe of each ladder config A..G: the preset's values changed as in EDM2 Figs. 16-22."""

from __future__ import annotations

import math
from typing import Any

from edm2lib.nn.ladder import LETTERS, switches

ADM_P_MEAN, ADM_P_STD = -1.2, 1.2  # EDM's ImageNet-64 noise levels, kept by CONFIG A (EDM2 App. B.1)
A_HALFLIFE_NIMG, PAPER_DURATION = 50_000_000, 2**31  # CONFIG A's EMA half-life of its 2^31 images (Fig. 16)


def recipe(letter: str, preset_training: dict[str, Any]) -> dict[str, Any]:
    """TrainConfig values of CONFIG `letter` over a preset's training values (`Preset.training`).

    G is the preset unchanged. A-F, per EDM2 Figs. 16-21 (the ImageNet-512 S column; relative where the
    preset sets the scale): A doubles the batch (4096 at S), lr 1e-4, Adam beta2 0.999, ln(sigma) ~
    N(-1.2, 1.2^2) and a traditional EMA whose half-life is the paper's share of the run (50 Mimg of
    2^31, ramp-up 0.05 as EDM); A-C lr 2e-4 (B, C) and loss scaling 100; A-D a constant lr after the warm-up
    (t_ref = inf, EDM2 App. B.5); D-F keep the preset's lr. Every value is a default the training
    config may override.
    """
    switches(letter)  # an unknown letter fails here, naming the allowed ones
    values = dict(preset_training)
    if letter == "G":
        return values
    index = LETTERS.index(letter)
    if index <= LETTERS.index("D"):
        values["t_ref"] = math.inf  # EDM2 App. B.5: inverse-sqrt decay (Eq. 67) only from E on
    if index <= LETTERS.index("C"):
        values["loss_scaling"] = 100.0  # EDM2 Figs. 16-18 (loss scaling 100 before MP layers)
        values["lr_ref"] = 2e-4  # EDM2 App. B.2 (B, C)
    if letter == "A":
        values["batch"] = 2 * values["batch"]  # EDM2 App. B.2: B halves A's batch of 4096
        values["lr_ref"] = 1e-4  # EDM2 App. B.1 (EDM's ImageNet-64 recipe)
        values["adam_betas"] = [0.9, 0.999]  # EDM2 App. B.2: B lowers beta2 to 0.99
        values["P_mean"], values["P_std"] = ADM_P_MEAN, ADM_P_STD
        values["ema"] = "traditional"  # EDM2 App. B.1: EDM's EMA, half-life 50 Mimg of 2^31 (Fig. 16)
        values["ema_halflife_nimg"] = round(A_HALFLIFE_NIMG * values["duration"] / PAPER_DURATION)
        for key in ("duration", "snapshot_nimg", "checkpoint_nimg", "status_nimg"):
            values[key] = _multiple(values[key], values["batch"])
    return values


def _multiple(nimg: int, batch: int) -> int:
    """`nimg` rounded up to whole steps of `batch` (intervals must be multiples of the batch)."""
    return -(-nimg // batch) * batch
