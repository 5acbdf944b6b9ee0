"""Streaming float64 feature statistics (mu, sigma) across ranks; .npz stats files with detector identity."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edm2lib.files import atomic_path

STATS_FORMAT = "edm2lib.stats/1"


class FeatureStats:
    """Running sum of features and of their outer products in float64 (docs/metrics.md)."""

    def __init__(self, dim: int):
        self.dim = dim
        self.n = 0
        self.sum: torch.Tensor | None = None  # [dim] float64, on the features' device
        self.sum_sq: torch.Tensor | None = None  # [dim, dim] float64
        self.resolution: tuple[int, int] | None = None  # (H, W) of the images the features came from
        self.reduced = False
        self.correct = 0  # class-conditional images a classifier detector labels as their class
        self.labelled = 0  # class-conditional images seen by `count_classes`

    def count_classes(self, predicted: torch.Tensor, labels: torch.Tensor) -> None:
        """Add predicted class ids against the conditioning labels (-1 = unconditional, not counted)."""
        if self.reduced:
            raise ValueError("these statistics were already all-reduced; start a new FeatureStats")
        labels = labels.to(predicted.device).long()
        keep = labels >= 0
        self.correct += int((predicted[keep] == labels[keep]).sum())
        self.labelled += int(keep.sum())

    @property
    def class_accuracy(self) -> float | None:
        """Fraction of class-conditional images labelled as their class; None when none was counted."""
        return self.correct / self.labelled if self.labelled else None

    def update(self, features: torch.Tensor, resolution: tuple[int, int] | None = None) -> None:
        """Add a batch of features [B, dim] (from images of `resolution`, which must not change)."""
        if self.reduced:
            raise ValueError("these statistics were already all-reduced; start a new FeatureStats")
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"features have shape {tuple(features.shape)}, expected [B, {self.dim}]")
        if resolution is not None:
            resolution = (int(resolution[0]), int(resolution[1]))
            if self.resolution is not None and resolution != self.resolution:
                raise ValueError(f"images of {resolution} mixed with images of {self.resolution}")
            self.resolution = resolution
        f = features.detach().to(torch.float64)
        if self.sum is None:
            self.sum = torch.zeros(self.dim, dtype=torch.float64, device=f.device)
            self.sum_sq = torch.zeros(self.dim, self.dim, dtype=torch.float64, device=f.device)
        self.sum += f.sum(0)
        self.sum_sq += f.T @ f
        self.n += len(f)

    def all_reduce(self) -> FeatureStats:
        """Sum the statistics of all ranks (no-op unless torch.distributed is initialised); call once."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        if self.reduced:
            raise ValueError("all_reduce() called twice: the sums would be counted again")
        if self.sum is None:
            raise ValueError("a rank has no features; every rank must contribute at least one image")
        counts = [float(self.n), float(self.correct), float(self.labelled)]
        n = torch.tensor(counts, dtype=torch.float64, device=self.sum.device)
        for t in (n, self.sum, self.sum_sq):
            dist.all_reduce(t)
        self.n, self.correct, self.labelled = (int(v) for v in n.tolist())
        self.reduced = True
        return self

    def _require(self) -> None:
        if self.n < 2:
            raise ValueError(f"statistics need at least 2 images, got {self.n}")

    @property
    def mu(self) -> np.ndarray:
        """Mean feature, float64 [dim]."""
        self._require()
        return (self.sum / self.n).cpu().numpy()

    @property
    def sigma(self) -> np.ndarray:
        """Unbiased covariance (S - N mu mu^T) / (N - 1), float64 [dim, dim] (docs/metrics.md)."""
        self._require()
        mu = self.sum / self.n
        return ((self.sum_sq - self.n * torch.outer(mu, mu)) / (self.n - 1)).cpu().numpy()


def save_stats(
    path: str | os.PathLike, stats: FeatureStats, identity: dict[str, Any], source: str
) -> dict[str, Any]:
    """Write `mu`, `sigma`, `n` and a JSON `meta` (format, detector identity, resolution, count, source)
    as one .npz, atomically; returns the metadata."""
    meta = {
        "format": STATS_FORMAT,
        "detector": dict(identity),
        "resolution": list(stats.resolution) if stats.resolution else None,
        "count": stats.n,
        "source": str(source),
    }
    mu, sigma = stats.mu, stats.sigma
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, mu=mu, sigma=sigma, n=np.int64(stats.n), meta=np.array(json.dumps(meta, sort_keys=True)))
    return meta


def load_stats(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(mu, sigma, meta) of a stats file written by `save_stats`; never unpickles."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such stats file (compute it with reference_stats)")
    try:
        with np.load(path, allow_pickle=False) as z:
            mu, sigma, n, meta = z["mu"], z["sigma"], int(z["n"]), json.loads(str(z["meta"]))
    except (KeyError, ValueError, OSError) as e:
        raise ValueError(f"{path}: not an edm2lib stats file with mu, sigma, n, meta ({e})") from e
    if meta.get("format") != STATS_FORMAT or meta.get("count") != n:
        raise ValueError(f"{path}: format {meta.get('format')!r} / count mismatch; expected {STATS_FORMAT}")
    if mu.shape != (len(mu),) or sigma.shape != (len(mu), len(mu)):
        raise ValueError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not form a Gaussian")
    return mu, sigma, meta
