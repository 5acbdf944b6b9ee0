"""Reference statistics of a prepared data set; FID / FD-DINOv2 of samples per seed block (min and mean)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edm2lib import distributed
from edm2lib.metrics.detectors import IDENTITY_KEYS, RANDOM_INIT, Detector, as_nchw_uint8
from edm2lib.metrics.frechet import frechet_distance
from edm2lib.metrics.stats import FeatureStats, load_stats, save_stats

Detectors = Detector | Sequence[Detector] | Mapping[str, Detector]


def _as_list(detectors: Detectors) -> list[Detector]:
    if isinstance(detectors, Detector):
        dets = [detectors]
    else:
        dets = list(detectors.values() if isinstance(detectors, Mapping) else detectors)
    if not dets or not all(isinstance(d, Detector) for d in dets):
        raise ValueError("detectors must be one or more Detector objects (see load_detector)")
    if len({d.name for d in dets}) != len(dets):
        raise ValueError(f"two detectors share a name: {[d.name for d in dets]}")
    return dets


class FeatureCollector:
    """Accumulates each detector's `FeatureStats` from uint8 batches ([B,H,W,3] or [B,3,H,W]).

    Call it with each batch; extra arguments are ignored, so it can be `generate(..., on_batch=collector)`.
    `resolution` (H, W), if given, is enforced on every batch.
    """

    def __init__(self, detectors: Detectors, resolution: tuple[int, int] | None = None):
        self.detectors = _as_list(detectors)
        self.resolution = tuple(resolution) if resolution is not None else None
        self.stats = {d.name: FeatureStats(d.dim) for d in self.detectors}

    def __call__(self, images: Any, seeds: Any = None, labels: Any = None, *_: Any) -> int:
        """Add a batch; `labels` (class ids, -1 unconditional) give classifier detectors' class accuracy."""
        x = as_nchw_uint8(images)
        size = (int(x.shape[2]), int(x.shape[3]))
        if self.resolution is not None and size != self.resolution:
            raise ValueError(
                f"images of {size[0]}x{size[1]}, but the reference statistics are of "
                f"{self.resolution[0]}x{self.resolution[1]} images; score samples at the data set's size"
            )
        for d in self.detectors:
            features = d(x)
            self.stats[d.name].update(features, size)
            if d.classes and labels is not None:
                self.stats[d.name].count_classes(d.classify(features), torch.as_tensor(np.asarray(labels)))
        return len(x)


def compute_stats(
    batches: Iterable[Any],
    detectors: Detectors,
    total: int | None = None,
    resolution: tuple[int, int] | None = None,
    progress: bool = True,
) -> dict[str, FeatureStats]:
    """Feature statistics of uint8 image batches for each detector, summed over ranks when
    torch.distributed is initialised. `total` sizes the progress bar; `resolution` is enforced."""
    from tqdm import tqdm

    collect = FeatureCollector(detectors, resolution)
    disable = not progress or distributed.rank_world()[0] != 0
    with tqdm(total=total, unit="img", desc="features", disable=disable) as bar:
        for batch in batches:  # uint8 images, or (images, seeds, labels) tuples
            bar.update(collect(*batch) if isinstance(batch, tuple) else collect(batch))
    for stats in collect.stats.values():
        stats.all_reduce()
    return collect.stats


def _open_images(path: str | os.PathLike):
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such HDF5 file")
    f = h5py.File(path, "r")
    images = f.get("images")
    if images is None or images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        desc = "missing" if images is None else f"{images.dtype} {images.shape}"
        f.close()
        raise ValueError(f"{path}: dataset 'images' must be uint8 [N,H,W,3], found {desc}")
    return f


def _share(indices: np.ndarray) -> np.ndarray:
    """This rank's contiguous share of `indices` (contiguous shares read fastest from HDF5 chunks)."""
    rank, world = distributed.rank_world()
    return np.array_split(indices, world)[rank]


def _h5_batches(
    path: str | os.PathLike, indices: np.ndarray, batch_size: int
) -> Iterator[tuple[np.ndarray, None, np.ndarray | None]]:
    """(uint8 [B,H,W,3] images, None, labels [B] or None) batches of `images[indices]` (indices ascending),
    this rank's share only; labels are the file's `labels` (class ids, -1 unconditional) when it has them."""
    mine = _share(indices)
    with _open_images(path) as f:
        images = f["images"]
        labels = np.asarray(f["labels"]) if "labels" in f else None
        for i in range(0, len(mine), batch_size):
            chunk = mine[i : i + batch_size]
            contiguous = chunk[-1] - chunk[0] == len(chunk) - 1
            batch = images[chunk[0] : chunk[-1] + 1] if contiguous else images[chunk]
            yield batch, None, None if labels is None else labels[chunk]


def reference_stats(
    images_h5: str | os.PathLike,
    out_paths: Mapping[str, str | os.PathLike],
    detectors: Detectors,
    batch_size: int = 64,
    max_images: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Reference statistics of a prepared data set (`images` uint8 [N,H,W,3]); the paper uses all images.

    `out_paths` maps each detector name ('inception', 'dinov2') to its .npz; `max_images` takes a random
    subset drawn with `seed`. Rank 0 writes the files; returns {name: metadata written}.
    """
    dets = _as_list(detectors)
    missing = [d.name for d in dets if d.name not in out_paths]
    if missing:
        raise ValueError(f"out_paths has no file for detector(s) {missing}")
    with _open_images(images_h5) as f:
        n_total = len(f["images"])
    indices = np.arange(n_total)
    if max_images is not None and max_images < n_total:
        indices = np.sort(np.random.default_rng(seed).choice(n_total, max_images, replace=False))
    if len(indices) < 2:
        raise ValueError(f"{images_h5}: {len(indices)} image(s); statistics need at least 2")
    batches = _h5_batches(images_h5, indices, batch_size)
    stats = compute_stats(batches, dets, len(_share(indices)), None, progress)
    subset = "" if len(indices) == n_total else f", random subset, seed {seed}"
    source = f"{images_h5} ({len(indices)} of {n_total} images{subset})"
    metas = {}
    for d in dets:
        if distributed.rank_world()[0] == 0:
            metas[d.name] = save_stats(out_paths[d.name], stats[d.name], d.identity, source)
    return metas


def _is_batch(x: Any) -> bool:
    return isinstance(x, np.ndarray | torch.Tensor)


def _blocks(
    samples: Any, seed_blocks: int | None, batch_size: int
) -> list[tuple[dict, Iterable, int | None]]:
    """[(block info, batches, image count or None)] for a file, files, batches, or lists of batches."""
    if isinstance(samples, str | os.PathLike):
        samples, single_file = [samples], True
    else:
        single_file = False
    if isinstance(samples, Sequence) and samples and all(isinstance(s, str | os.PathLike) for s in samples):
        if seed_blocks is not None and not single_file:
            raise ValueError("seed_blocks splits one file; with a list of files each file is one block")
        out = []
        for path in samples:
            with _open_images(path) as f:
                n = len(f["images"])
                seeds = np.asarray(f["seeds"]) if "seeds" in f else None
            k = seed_blocks or 1
            if n % k or n // k < 2:
                raise ValueError(f"{path}: {n} images do not split into {k} equal seed blocks of >= 2 images")
            for b in range(k):
                idx = np.arange(b * (n // k), (b + 1) * (n // k))
                info = {"source": str(path), "n": len(idx)}
                if seeds is not None:
                    info["seeds"] = [int(seeds[idx[0]]), int(seeds[idx[-1]])]
                out.append((info, _h5_batches(path, idx, batch_size), len(_share(idx))))
        return out
    if seed_blocks is not None:
        raise ValueError("seed_blocks applies to HDF5 files; pass batch iterators as a list, one per block")
    if _is_batch(samples):  # all images in one array: one block, read in batches
        batches = (samples[i : i + batch_size] for i in range(0, len(samples), batch_size))
        return [({"source": "array"}, batches, len(samples))]
    if isinstance(samples, Sequence) and samples and not _is_batch(samples[0]):
        return [({"source": "batches"}, block, None) for block in samples]
    return [({"source": "batches"}, samples, None)]


def load_references(
    ref_stats: Mapping[str, str | os.PathLike], detectors: Detectors
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[int, int] | None]:
    """({name: (mu, sigma)}, image resolution) of reference stats files, checked against the detectors'
    identities (name, arch, weights sha256, resize)."""
    refs, resolutions = {}, set()
    for d in _as_list(detectors):
        if d.name not in ref_stats:
            raise ValueError(f"ref_stats has no statistics file for detector {d.name!r}")
        mu, sigma, meta = load_stats(ref_stats[d.name])
        for key in IDENTITY_KEYS:
            theirs, ours = meta["detector"].get(key), d.identity.get(key)
            if theirs != ours:
                raise ValueError(
                    f"{ref_stats[d.name]}: computed with detector {key}={theirs!r} "
                    f"({meta['detector'].get('weights')}), but scoring uses {key}={ours!r} "
                    f"({d.identity.get('weights')}); recompute the reference statistics"
                )
        refs[d.name] = (mu, sigma)
        if meta.get("resolution"):
            resolutions.add(tuple(meta["resolution"]))
    if len(resolutions) > 1:
        raise ValueError(f"reference statistics of different resolutions {sorted(resolutions)}")
    return refs, (resolutions.pop() if resolutions else None)


def score_stats(
    blocks: Sequence[Mapping[str, FeatureStats]],
    ref_stats: Mapping[str, str | os.PathLike],
    detectors: Detectors,
    infos: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Scores of already accumulated statistics, one {detector name: FeatureStats} per seed block (e.g.
    `FeatureCollector.stats` fed by `generate`'s on_batch); all-reduces them first if needed."""
    dets = _as_list(detectors)
    refs, resolution = load_references(ref_stats, dets)
    rows = []
    for i, stats in enumerate(blocks):
        row = dict(infos[i]) if infos is not None else {"source": "batches"}
        for d in dets:
            s = stats[d.name]
            if not s.reduced:
                s.all_reduce()
            if resolution is not None and s.resolution not in (None, resolution):
                raise ValueError(
                    f"samples of {s.resolution}, but the reference statistics are of {resolution}"
                )
            row["n"] = s.n
            row[d.metric] = frechet_distance(s.mu, s.sigma, *refs[d.name])
            if s.class_accuracy is not None:
                row["class_acc"] = s.class_accuracy
        rows.append(row)
    if not rows:
        raise ValueError("no seed blocks to score")
    result: dict[str, Any] = {"blocks": rows, "num_blocks": len(rows)}
    for d in dets:
        values = [row[d.metric] for row in rows]
        result[f"{d.metric}_min"] = min(values)
        result[f"{d.metric}_mean"] = float(np.mean(values))
    accuracies = [row["class_acc"] for row in rows if "class_acc" in row]
    if accuracies:  # a classifier detector and class-conditional images: best (max) and mean over blocks
        result["class_acc_max"], result["class_acc_mean"] = max(accuracies), float(np.mean(accuracies))
    result["detectors"] = {d.metric: d.identity for d in dets}
    result["random_init"] = any(d.identity["sha256"].startswith(RANDOM_INIT) for d in dets)
    result["reference"] = {d.metric: str(ref_stats[d.name]) for d in dets}
    return result


def score_samples(
    samples: Any,
    ref_stats: Mapping[str, str | os.PathLike],
    detectors: Detectors,
    seed_blocks: int | None = None,
    batch_size: int = 64,
    progress: bool = True,
) -> dict[str, Any]:
    """FID / FD-DINOv2 of generated images against reference statistics, per seed block, with min and mean.

    `samples`: a samples HDF5 (`images` uint8 [N,H,W,3], optional `seeds`) split into `seed_blocks` equal
    contiguous blocks (default 1), a list of such files (one block each), one uint8 array of all images or
    an iterable of uint8 batches (one block), or a list of such iterables (one block each).
    `ref_stats` maps detector name -> .npz.
    The paper reports the minimum over three blocks of 50k (EDM2 App. D).
    Returns {'blocks': [{source, n, seeds?, fid, fd_dinov2}], 'fid_min', 'fid_mean', ..., 'detectors', ...};
    a classifier detector adds 'fd_classifier' and, for files with class labels, 'class_acc' per block.
    """
    dets = _as_list(detectors)
    _, resolution = load_references(ref_stats, dets)  # fail fast, before any feature is computed
    infos, blocks = [], []
    for info, batches, total in _blocks(samples, seed_blocks, batch_size):
        blocks.append(compute_stats(batches, dets, total, resolution, progress))
        infos.append(info)
    return score_stats(blocks, ref_stats, dets, infos)
