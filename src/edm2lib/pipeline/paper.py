"""The EDM2 paper's published ImageNet results: best FID / FD-DINOv2 per preset and their post-hoc EMA / CFG.

One row per (preset, metric, guided): the score, the sigma_rel it was reached at and, with classifier-free
guidance, the guidance weight w (the guide is the unconditional XS at the same sigma_rel). Values: EDM2
Tables 2, 3 and 5 (ImageNet-512 and -64 at the preset's training length, 32 Heun steps = 63 NFE).
The shipped paper configs are checked against this table (tests/test_pipeline.py), and results tables can
put a published column beside the measured one.
"""

from __future__ import annotations

import dataclasses

FID, FD_DINOV2 = "fid", "fd_dinov2"


@dataclasses.dataclass(frozen=True)
class PaperResult:
    """One published optimum: `metric` of `preset` is `value` at post-hoc EMA `sigma_rel` (CFG weight `w`)."""

    preset: str
    metric: str  # FID or FD_DINOV2
    guided: bool  # classifier-free guidance by the unconditional XS
    value: float
    sigma_rel: float
    w: float = 1.0


def _rows(preset: str, fid: tuple, fd: tuple | None, cfg_fid: tuple | None, cfg_fd: tuple | None) -> list:
    rows = [PaperResult(preset, FID, False, *fid)]
    if fd is not None:
        rows.append(PaperResult(preset, FD_DINOV2, False, *fd))
    if cfg_fid is not None:
        rows.append(PaperResult(preset, FID, True, *cfg_fid))
    if cfg_fd is not None:
        rows.append(PaperResult(preset, FD_DINOV2, True, *cfg_fd))
    return rows


# (value, sigma_rel) without guidance; (value, sigma_rel, w) with guidance. EDM2 Tables 2, 3, 5.
RESULTS: tuple[PaperResult, ...] = tuple(
    _rows("edm2-img512-xs", (3.53, 0.135), (103.39, 0.200), (2.91, 0.045, 1.40), (79.94, 0.150, 1.70))
    + _rows("edm2-img512-s", (2.56, 0.130), (68.64, 0.190), (2.23, 0.025, 1.40), (52.32, 0.085, 1.90))
    + _rows("edm2-img512-m", (2.25, 0.100), (58.44, 0.155), (2.01, 0.030, 1.20), (41.98, 0.015, 2.00))
    + _rows("edm2-img512-l", (2.06, 0.085), (52.25, 0.155), (1.88, 0.015, 1.20), (38.20, 0.035, 1.70))
    + _rows("edm2-img512-xl", (1.96, 0.085), (45.96, 0.155), (1.85, 0.020, 1.20), (35.67, 0.030, 1.70))
    + _rows("edm2-img512-xxl", (1.91, 0.070), (42.84, 0.150), (1.81, 0.015, 1.20), (33.09, 0.015, 1.70))
    + _rows("edm2-img64-s", (1.58, 0.075), None, None, None)
    + _rows("edm2-img64-m", (1.43, 0.060), None, None, None)
    + _rows("edm2-img64-l", (1.33, 0.040), None, None, None)
    + _rows("edm2-img64-xl", (1.33, 0.040), None, None, None)
)


def results_for(preset: str) -> list[PaperResult]:
    """Every published optimum of `preset` (empty for presets the paper does not report)."""
    return [r for r in RESULTS if r.preset == preset]


def lookup(preset: str, metric: str, guided: bool) -> PaperResult | None:
    """The published optimum of one preset, metric and guidance choice, or None."""
    found = [r for r in RESULTS if (r.preset, r.metric, r.guided) == (preset, metric, guided)]
    return found[0] if found else None
