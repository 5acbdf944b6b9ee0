"""The models, raw snapshots and reference statistics NVIDIA released with EDM2, and their URLs.

Post-hoc reconstructions: `<base>/posthoc-reconstructions/<name>-<kimg:07d>-<sigma_rel:.3f>.pkl`.
Raw snapshots of a run: `<base>/raw-snapshots/<name>/<name>-<kimg:07d>-<std:.3f>.pkl`, one per tracked EMA
(std 0.050 and 0.100) every 2^25 images (the paper saved every 2^23; NVIDIA published every fourth).
Reference statistics: `<base>/dataset-refs/<dataset>.pkl`. Time is kimg = nimg // 1000 in every file name.
"""

from __future__ import annotations

import dataclasses

from edm2lib.official.convert import nimg_from_kimg

BASE_URL = "https://nvlabs-fi-cdn.nvidia.com/edm2"
RAW_SNAPSHOT_NIMG = 2**25  # interval of the published raw snapshots in images (32 Mi)
RAW_STDS = (0.050, 0.100)  # the two power-function EMAs every EDM2 run tracked (EDM2 sec. 3.1)
DATASETS = {"img512": 512, "img64": 64}  # reference-statistics file -> image resolution it describes


@dataclasses.dataclass(frozen=True)
class Release:
    """One released training run: its name, the data set it was trained on and its final time."""

    name: str  # e.g. edm2-img512-xs, edm2-img512-xs-uncond
    dataset: str  # img512 | img64 (also the reference-statistics file)
    kimg: int | None  # final training time in kimg (None: only the times listed in `times` are known)
    times: tuple[int, ...] = ()  # other released post-hoc times in kimg (the autoguidance guides)

    @property
    def preset(self) -> str:
        """The edm2lib network preset of the run (unconditional runs use the conditional one, label_dim 0)."""
        return self.name.removesuffix("-uncond")

    @property
    def conditional(self) -> bool:
        return not self.name.endswith("-uncond")

    @property
    def nimg(self) -> int | None:
        """Final training time in images."""
        return None if self.kimg is None else nimg_from_kimg(self.kimg)


_KIMG_ALL = 2147483  # 2^31 images (EDM2 Table 2)
RELEASES: dict[str, Release] = {
    r.name: r
    for r in [
        # ImageNet-512, final times of EDM2 Table 2; 134217 / 268435 kimg are the autoguidance guides
        Release("edm2-img512-xs", "img512", _KIMG_ALL, (134217,)),
        Release("edm2-img512-s", "img512", _KIMG_ALL),
        Release("edm2-img512-m", "img512", _KIMG_ALL, (268435,)),
        Release("edm2-img512-l", "img512", 1879048),
        Release("edm2-img512-xl", "img512", 1342177),
        Release("edm2-img512-xxl", "img512", 939524),
        Release("edm2-img512-xs-uncond", "img512", _KIMG_ALL, (134217,)),  # the CFG guide
        Release("edm2-img512-s-uncond", "img512", _KIMG_ALL),
        # ImageNet-64, final times of EDM2 Table 3; XS only as an autoguidance guide
        Release("edm2-img64-xs", "img64", None, (134217,)),
        Release("edm2-img64-s", "img64", 1073741),
        Release("edm2-img64-m", "img64", _KIMG_ALL),
        Release("edm2-img64-l", "img64", 1073741),
        Release("edm2-img64-xl", "img64", 671088),
    ]
}


def release(name: str) -> Release:
    """The release called `name`; anything else is one line naming the released models."""
    try:
        return RELEASES[name]
    except KeyError:
        raise ValueError(f"unknown EDM2 release {name!r}; released models: {', '.join(RELEASES)}") from None


def _kimg(nimg: int) -> int:
    kimg = int(nimg) // 1000
    if nimg_from_kimg(kimg) != nimg:
        raise ValueError(f"nimg {nimg} is not a multiple of 1024 images; released times are")
    return kimg


def posthoc_name(name: str, nimg: int, sigma_rel: float) -> str:
    """File name of a released post-hoc reconstruction at `nimg` images."""
    rel = release(name)
    kimg = _kimg(nimg)
    if kimg != rel.kimg and kimg not in rel.times:
        known = [k for k in (rel.kimg, *rel.times) if k is not None]
        raise ValueError(f"{name}: no reconstruction released at {kimg} kimg; released times (kimg): {known}")
    return f"{name}-{kimg:07d}-{sigma_rel:.3f}.pkl"


def posthoc_url(name: str, nimg: int, sigma_rel: float, base: str = BASE_URL) -> str:
    return f"{base}/posthoc-reconstructions/{posthoc_name(name, nimg, sigma_rel)}"


def raw_times(name: str, until_nimg: int, every: int = RAW_SNAPSHOT_NIMG) -> list[int]:
    """Snapshot times (images) of a released run up to `until_nimg`, every `every` (a multiple of 2^25)."""
    rel = release(name)
    if rel.nimg is None:
        raise ValueError(f"{name}: no raw snapshots of this run are listed")
    if every % RAW_SNAPSHOT_NIMG or every <= 0:
        raise ValueError(f"snapshot interval {every} is not a multiple of the published {RAW_SNAPSHOT_NIMG}")
    if not 0 < until_nimg <= rel.nimg:
        raise ValueError(f"{name}: time {until_nimg} is outside its training (0, {rel.nimg}] images")
    return list(range(every, until_nimg + 1, every))


def raw_name(name: str, nimg: int, std: float) -> str:
    """File name of a released raw snapshot (EMA `std` at `nimg` images)."""
    release(name)
    if nimg % RAW_SNAPSHOT_NIMG:
        raise ValueError(f"{name}: raw snapshots exist every {RAW_SNAPSHOT_NIMG} images, not at {nimg}")
    if round(std, 3) not in RAW_STDS:
        raise ValueError(f"{name}: raw snapshots track EMA std {RAW_STDS}, not {std}")
    return f"{name}-{_kimg(nimg):07d}-{std:.3f}.pkl"


def raw_url(name: str, nimg: int, std: float, base: str = BASE_URL) -> str:
    return f"{base}/raw-snapshots/{name}/{raw_name(name, nimg, std)}"


def refs_name(dataset: str) -> str:
    if dataset not in DATASETS:
        raise ValueError(f"unknown reference statistics {dataset!r}; published: {', '.join(DATASETS)}")
    return f"{dataset}.pkl"


def refs_url(dataset: str, base: str = BASE_URL) -> str:
    return f"{base}/dataset-refs/{refs_name(dataset)}"
