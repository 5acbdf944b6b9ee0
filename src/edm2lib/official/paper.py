"""The published FID / FD-DINOv2 of the released models and the settings that produced them.

EDM2 Tables 2 and 3 (no guidance; ImageNet-512 and -64), EDM2 Table 5 (classifier-free guidance by the
unconditional XS at the same sigma_rel) and the autoguidance paper (Karras et al. 2024, "Guiding a
diffusion model with a bad version of itself"): 32 Heun steps, 50k images, the minimum over three seed
blocks. Values are as published, not measured here.
"""

from __future__ import annotations

import dataclasses

from edm2lib.official.convert import nimg_from_kimg


@dataclasses.dataclass(frozen=True)
class PaperResult:
    """One published number: model at `kimg`, EMA `sigma_rel`, guidance weight `w` by `guide`."""

    model: str
    kimg: int
    metric: str  # fid | fd_dinov2
    value: float
    sigma_rel: float
    w: float = 1.0
    guide: tuple[str, int, float | str] | None = None  # (model, kimg, sigma_rel or 'same')

    @property
    def nimg(self) -> int:
        return nimg_from_kimg(self.kimg)


_A = 2147483  # kimg of the runs trained for 2^31 images
_ROWS = [
    # model, kimg, FID (sigma_rel), FD-DINOv2 (sigma_rel): EDM2 Tables 2 and 3, no guidance
    ("edm2-img512-xs", _A, 3.53, 0.135, 103.39, 0.200),
    ("edm2-img512-s", _A, 2.56, 0.130, 68.64, 0.190),
    ("edm2-img512-m", _A, 2.25, 0.100, 58.44, 0.155),
    ("edm2-img512-l", 1879048, 2.06, 0.085, 52.25, 0.155),
    ("edm2-img512-xl", 1342177, 1.96, 0.085, 45.96, 0.155),
    ("edm2-img512-xxl", 939524, 1.91, 0.070, 42.84, 0.150),
    ("edm2-img64-s", 1073741, 1.58, 0.075, None, None),
    ("edm2-img64-m", _A, 1.43, 0.060, None, None),
    ("edm2-img64-l", 1073741, 1.33, 0.040, None, None),
    ("edm2-img64-xl", 671088, 1.33, 0.040, None, None),
]
_CFG = [
    # model, FID (sigma_rel, w), FD-DINOv2 (sigma_rel, w): EDM2 Table 5; guide XS-uncond, same sigma_rel
    ("edm2-img512-xs", 2.91, 0.045, 1.40, 79.94, 0.150, 1.70),
    ("edm2-img512-s", 2.23, 0.025, 1.40, 52.32, 0.085, 1.90),
    ("edm2-img512-m", 2.01, 0.030, 1.20, 41.98, 0.015, 2.00),
    ("edm2-img512-l", 1.88, 0.015, 1.20, 38.20, 0.035, 1.70),
    ("edm2-img512-xl", 1.85, 0.020, 1.20, 35.67, 0.030, 1.70),
    ("edm2-img512-xxl", 1.81, 0.015, 1.20, 33.09, 0.015, 1.70),
]
_AG = [
    # model, metric, value, sigma_rel, guide model, guide kimg, guide sigma_rel, w (autoguidance paper)
    ("edm2-img512-s", "fid", 1.34, 0.070, "edm2-img512-xs", 134217, 0.125, 2.10),
    ("edm2-img512-s", "fd_dinov2", 36.67, 0.120, "edm2-img512-xs", 134217, 0.165, 2.45),
    ("edm2-img512-xxl", "fid", 1.25, 0.075, "edm2-img512-m", 268435, 0.155, 2.05),
    ("edm2-img512-xxl", "fd_dinov2", 24.18, 0.130, "edm2-img512-m", 268435, 0.205, 2.30),
    ("edm2-img512-s-uncond", "fid", 3.86, 0.070, "edm2-img512-xs-uncond", 134217, 0.110, 2.85),
    ("edm2-img512-s-uncond", "fd_dinov2", 90.39, 0.090, "edm2-img512-xs-uncond", 134217, 0.125, 2.90),
    ("edm2-img64-s", "fid", 1.01, 0.045, "edm2-img64-xs", 134217, 0.110, 1.70),
    ("edm2-img64-s", "fd_dinov2", 31.85, 0.105, "edm2-img64-xs", 134217, 0.175, 2.20),
]


def _results() -> list[PaperResult]:
    out = []
    kimg_of = {row[0]: row[1] for row in _ROWS}
    for model, kimg, fid, s_fid, fd, s_fd in _ROWS:
        out.append(PaperResult(model, kimg, "fid", fid, s_fid))
        if fd is not None:
            out.append(PaperResult(model, kimg, "fd_dinov2", fd, s_fd))
    for model, fid, s_fid, w_fid, fd, s_fd, w_fd in _CFG:
        guide = ("edm2-img512-xs-uncond", _A, "same")
        out.append(PaperResult(model, kimg_of[model], "fid", fid, s_fid, w_fid, guide))
        out.append(PaperResult(model, kimg_of[model], "fd_dinov2", fd, s_fd, w_fd, guide))
    for model, metric, value, s, g_model, g_kimg, g_s, w in _AG:
        out.append(PaperResult(model, kimg_of.get(model, _A), metric, value, s, w, (g_model, g_kimg, g_s)))
    return out


RESULTS: list[PaperResult] = _results()


def lookup(model: str, nimg: int, sigma_rel: float, w: float) -> dict[str, float]:
    """{metric: published value} for a point at exactly a published setting ({} for any other point)."""
    return {
        r.metric: r.value
        for r in RESULTS
        if r.model == model
        and r.nimg == int(nimg)
        and round(r.sigma_rel, 3) == round(float(sigma_rel), 3)
        and round(r.w, 3) == round(float(w), 3)
    }
