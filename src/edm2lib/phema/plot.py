"""PNG of post-hoc EMA target profiles next to their reconstructions from the snapshot profiles."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from edm2lib import files
from edm2lib.phema.profiles import posthoc_coefficients, profile_error, sigma_rel_to_gamma


def _profile(tau: np.ndarray, t: float, gamma: float) -> np.ndarray:
    """p(tau) = (gamma+1) tau^gamma / t^(gamma+1) on [0, t], 0 after (EDM2 Sec. 3.1)."""
    return np.where(tau <= t, (gamma + 1) * np.minimum(tau / t, 1.0) ** gamma / t, 0.0)


def plot_profiles(
    in_nimg: Sequence[float],
    in_sigma_rel: Sequence[float],
    out_nimg: float | Sequence[float],
    out_sigma_rel: float | Sequence[float],
    path: str | os.PathLike,
) -> None:
    """Plot each target's ideal averaging profile (dashed) and the reconstruction sum_i X_ik p_i (solid)."""
    from matplotlib.figure import Figure  # no pyplot: renders with Agg whatever the global backend

    t_in = np.asarray(in_nimg, dtype=np.float64)
    g_in = np.atleast_1d(sigma_rel_to_gamma(np.asarray(in_sigma_rel, dtype=np.float64)))
    t_out, s_out = (a.reshape(-1) for a in np.broadcast_arrays(np.asarray(out_nimg, float), out_sigma_rel))
    X = posthoc_coefficients(t_in, in_sigma_rel, t_out, s_out)
    err = profile_error(t_in, in_sigma_rel, t_out, s_out)
    tau = np.linspace(0.0, t_out.max(), 2000)
    fig = Figure(figsize=(8, 4.5), dpi=120)
    ax = fig.subplots()
    for k, (t, s) in enumerate(zip(t_out, s_out)):
        target = _profile(tau, t, float(sigma_rel_to_gamma(s)))
        recon = sum(X[i, k] * _profile(tau, t_in[i], g_in[i]) for i in np.flatnonzero(X[:, k]))
        (line,) = ax.plot(tau, recon, lw=1.5, label=f"sigma_rel {s:.3f} @ {int(t)}: error {err[k]:.1e}")
        ax.plot(tau, target, "--", lw=1, color=line.get_color())
    ax.set_xlabel("training images (nimg)")
    ax.set_ylabel("averaging weight density")
    ax.set_title("post-hoc EMA: target profiles (dashed) and reconstructions (solid)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
