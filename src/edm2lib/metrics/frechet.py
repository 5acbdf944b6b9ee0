"""Fréchet distance between two Gaussians in float64: the symmetric eigenvalue form and EDM2's sqrtm form."""

from __future__ import annotations

import numpy as np


def _check(mu1, sigma1, mu2, sigma2) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[0] if mu1.ndim == 1 else -1
    for name, a, shape in [("mu1", mu1, (d,)), ("mu2", mu2, (d,)), ("sigma1", sigma1, (d, d))]:
        if a.shape != shape:
            raise ValueError(f"{name} has shape {a.shape}, expected {shape} (mu1 must be 1-D, sigmas [d, d])")
    if sigma2.shape != (d, d):
        raise ValueError(f"sigma2 has shape {sigma2.shape}, expected {(d, d)}")
    for name, a in [("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)]:
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} contains NaN or infinite values")
    return mu1, sigma1, mu2, sigma2


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a (numerically) positive semi-definite matrix; negative eigenvalues -> 0."""
    w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance ||mu1-mu2||^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), via `eigh` in float64.

    tr sqrt(S1 S2) = tr sqrt(S1^1/2 S2 S1^1/2) because the two matrices are similar; the right-hand one is
    symmetric PSD, so its eigenvalues are real and negatives (rounding only) are clipped to 0.
    """
    mu1, sigma1, mu2, sigma2 = _check(mu1, sigma1, mu2, sigma2)
    a = _psd_sqrt(sigma1)
    m = a @ sigma2 @ a
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    diff = mu1 - mu2
    # Frechet distance (Heusel et al. 2017; docs/metrics.md): ||mu1 - mu2||^2 + tr(S1 + S2 - 2 sqrtm(S1 S2))
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_sqrt)


def frechet_distance_sqrtm(mu1, sigma1, mu2, sigma2) -> float:
    """EDM2-compatible form: `scipy.linalg.sqrtm(S1 @ S2)` (no `disp=`, removed in SciPy 1.18), real part."""
    import scipy.linalg

    mu1, sigma1, mu2, sigma2 = _check(mu1, sigma1, mu2, sigma2)
    s = scipy.linalg.sqrtm(sigma1 @ sigma2)
    diff = mu1 - mu2
    # docs/metrics.md, Frechet numerics: real part of the total, no imaginary-part check, no eps retry
    return float(np.real(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(s)))
