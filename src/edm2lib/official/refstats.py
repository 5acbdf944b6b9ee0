"""NVIDIA's published reference statistics (dataset-refs/*.pkl) -> edm2lib statistics files, code-free.

The pickle is {num_images, fid: {mu, sigma}, fd_dinov2: {mu, sigma}} of float64 numpy
arrays (docs/official.md); it is read with an unpickler that knows numpy's array constructors only.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edm2lib.files import sha256_file
from edm2lib.metrics.stats import save_stats
from edm2lib.official.unpickler import NUMPY_GLOBALS, RestrictedUnpickler, UnsafePickleError

METRIC = {"inception": "fid", "dinov2": "fd_dinov2"}  # edm2lib detector -> key in the published pickle


class _NumpyUnpickler(RestrictedUnpickler):
    allowed = NUMPY_GLOBALS
    kind = "reference-statistics pickles (numpy arrays only)"


@dataclasses.dataclass
class PublishedStats:
    """mu, sigma, n and resolution of one published Gaussian, shaped like `FeatureStats` for `save_stats`."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    resolution: tuple[int, int] | None


def load_dataset_refs(path: str | os.PathLike) -> dict[str, Any]:
    """{num_images, fid?: {mu, sigma}, fd_dinov2?: {mu, sigma}} of a published refs pickle, validated."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as f:
        try:
            data = _NumpyUnpickler(f).load()
        except UnsafePickleError as e:
            raise UnsafePickleError(
                f"{path}: not a reference-statistics pickle: {e}; nothing was executed"
            ) from None
        except Exception as e:  # any unpickling failure of foreign bytes: truncated, not a pickle, ...
            raise ValueError(
                f"{path}: not a readable reference-statistics pickle ({type(e).__name__}: {e})"
            ) from None
    expected = "a dict {num_images, fid: {mu, sigma}, fd_dinov2: {mu, sigma}}"
    if not isinstance(data, dict) or not any(k in data for k in METRIC.values()):
        raise ValueError(f"{path}: holds {type(data).__name__} without fid/fd_dinov2, expected {expected}")
    n = data.get("num_images")
    if isinstance(n, np.integer):
        n = int(n)
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"{path}: num_images is {n!r}, expected an image count >= 2 in {expected}")
    out: dict[str, Any] = {"num_images": n}
    for metric in METRIC.values():
        if metric not in data:
            continue
        entry = data[metric]
        mu = entry.get("mu") if isinstance(entry, dict) else None
        sigma = entry.get("sigma") if isinstance(entry, dict) else None
        if not (isinstance(mu, np.ndarray) and isinstance(sigma, np.ndarray)):
            raise ValueError(f"{path}: '{metric}' is not {{mu: ndarray, sigma: ndarray}}")
        if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)) or not np.issubdtype(mu.dtype, np.floating):
            raise ValueError(f"{path}: '{metric}' mu {mu.shape} / sigma {sigma.shape} do not form a Gaussian")
        out[metric] = {"mu": mu, "sigma": sigma}
    return out


def import_dataset_refs(
    path: str | os.PathLike,
    out_paths: Mapping[str, str | os.PathLike],
    identities: Mapping[str, Mapping[str, Any]],
    dims: Mapping[str, int],
    resolution: int | None,
) -> dict[str, dict[str, Any]]:
    """Write one edm2lib stats file per detector in `out_paths` ('inception', 'dinov2') from the published
    pickle, stamped with the identity of the detector that will score against it; returns the metadata.

    `dims` are the detectors' feature sizes (a mismatch is an error); `resolution` is the image size the
    statistics describe (512 for img512, 64 for img64), checked against the samples at scoring time.
    """
    path = Path(path)
    refs = load_dataset_refs(path)
    for name in out_paths:
        if name not in METRIC:
            raise ValueError(f"unknown detector {name!r}; published statistics exist for {sorted(METRIC)}")
        if METRIC[name] not in refs:
            raise ValueError(f"{path}: has no '{METRIC[name]}' statistics for detector {name!r}")
        if len(refs[METRIC[name]]["mu"]) != dims[name]:
            raise ValueError(
                f"{path}: '{METRIC[name]}' has {len(refs[METRIC[name]]['mu'])} features, the {name} "
                f"detector gives {dims[name]}; score with the published detector"
            )
    source = f"{path.name} sha256 {sha256_file(path)} (published, {refs['num_images']} images)"
    size = None if resolution is None else (int(resolution), int(resolution))
    metas = {}
    for name, out in out_paths.items():
        g = refs[METRIC[name]]
        stats = PublishedStats(g["mu"], g["sigma"], refs["num_images"], size)
        metas[name] = save_stats(out, stats, dict(identities[name]), source)
    return metas
