"""EMA profile math (numpy only): sigma_rel <-> gamma, per-step beta, profile inner products, the post-hoc
solve, and the traditional EMA's profile (CONFIG A)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SIGMA_REL_MAX = 0.28  # sigma_rel(gamma) -> sqrt(1/12) ~ 0.2887 as gamma -> 0; above ~0.28 gamma is not useful


def _check_sigma_rel(sigma_rel: np.ndarray) -> None:
    bad = sigma_rel[~((sigma_rel > 0) & (sigma_rel < SIGMA_REL_MAX))]
    if bad.size:
        raise ValueError(
            f"sigma_rel {bad.tolist()} outside (0, {SIGMA_REL_MAX}); pick relative EMA lengths in that range"
        )


def sigma_rel_to_gamma(sigma_rel: float | Sequence[float] | np.ndarray) -> float | np.ndarray:
    """The power-function exponent gamma whose averaging profile has relative width `sigma_rel`."""
    s = np.asarray(sigma_rel, dtype=np.float64)
    _check_sigma_rel(s.reshape(-1))
    out = []
    for v in s.reshape(-1):
        # EDM2 App. C, Alg. 2: largest real root of g^3 + 7g^2 + (16 - s^-2)g + (12 - s^-2) = 0
        roots = np.roots([1.0, 7.0, 16.0 - v**-2, 12.0 - v**-2])
        out.append(roots[np.isreal(roots)].real.max())
    g = np.asarray(out, dtype=np.float64).reshape(s.shape)
    return float(g) if g.ndim == 0 else g


def gamma_to_sigma_rel(gamma: float | np.ndarray) -> float | np.ndarray:
    """The relative standard deviation of the power-function profile with exponent `gamma`."""
    g = np.asarray(gamma, dtype=np.float64)
    if np.any(~(g > 0)):
        raise ValueError(f"gamma {g.tolist()} must be > 0")
    s = np.sqrt((g + 1) / ((g + 2) ** 2 * (g + 3)))  # EDM2 Sec. 3.1, App. C: sigma_rel(gamma)
    return float(s) if s.ndim == 0 else s


def power_function_beta(nimg: float, batch_size: float, gamma: float) -> float:
    """EMA decay for one training step that advanced time to `nimg` by `batch_size` images."""
    if not 0 < batch_size <= nimg:
        raise ValueError(f"need 0 < batch_size ({batch_size}) <= nimg ({nimg}); call after advancing nimg")
    return (1.0 - batch_size / nimg) ** (gamma + 1.0)  # EDM2 Eq. 2, t in images: beta = (1 - dt/t)^(gamma+1)


def profile_inner_product(t_a, gamma_a, t_b, gamma_b) -> np.ndarray:
    """<p_a, p_b> of two power-function profiles p(tau) = (gamma+1) tau^gamma / t^(gamma+1) on [0, t]."""
    t_a, gamma_a, t_b, gamma_b = (np.asarray(x, dtype=np.float64) for x in (t_a, gamma_a, t_b, gamma_b))
    # EDM2 App. C, Alg. 2: closed form of the integral over [0, min(t_a, t_b)]
    ratio = (t_a / t_b) ** np.where(t_a < t_b, gamma_b, -gamma_a)
    return (gamma_a + 1) * (gamma_b + 1) * ratio / ((gamma_a + gamma_b + 1) * np.maximum(t_a, t_b))


def _targets(out_nimg, out_sigma_rel) -> tuple[np.ndarray, np.ndarray]:
    """Target (time, sigma_rel) columns: a scalar time is shared; a list gives one column per pair."""
    t, s = np.broadcast_arrays(np.asarray(out_nimg, np.float64), np.asarray(out_sigma_rel, np.float64))
    return t.reshape(-1), s.reshape(-1)


def _inputs(in_nimg, in_sigma_rel) -> tuple[np.ndarray, np.ndarray]:
    t, s = np.broadcast_arrays(np.asarray(in_nimg, np.float64), np.asarray(in_sigma_rel, np.float64))
    t, s = t.reshape(-1), s.reshape(-1)
    _check_sigma_rel(s)
    pairs = list(zip(t.tolist(), s.tolist()))
    dup = {p for p in pairs if pairs.count(p) > 1}
    if dup:
        raise ValueError(
            f"duplicated input snapshots (nimg, sigma_rel): {sorted(dup)}; keep one file per pair"
        )
    return t, s


def _solve(in_nimg, in_sigma_rel, out_nimg, out_sigma_rel):
    """Per-target least-squares solve; returns (X [inputs, outputs], squared error, target norm^2)."""
    t_in, s_in = _inputs(in_nimg, in_sigma_rel)
    t_out, s_out = _targets(out_nimg, out_sigma_rel)
    _check_sigma_rel(s_out)
    g_in, g_out = sigma_rel_to_gamma(s_in).reshape(-1), sigma_rel_to_gamma(s_out).reshape(-1)
    used_any = t_in > 0  # docs/phema.md: time-0 snapshots are ignored
    if not used_any.any() or np.any(t_out < t_in[used_any].min()):
        first = t_in[used_any].min() if used_any.any() else None
        raise ValueError(
            f"target nimg {t_out.tolist()} before the first snapshot (nimg {first}); nothing to use"
        )
    X = np.zeros((t_in.size, t_out.size))
    err2, qq = np.zeros(t_out.size), np.zeros(t_out.size)
    for k in range(t_out.size):
        idx = np.flatnonzero(used_any & (t_in <= t_out[k]))  # docs/phema.md: only 0 < t_i <= t_out
        ti, gi = t_in[idx], g_in[idx]
        A = profile_inner_product(ti[:, None], gi[:, None], ti[None, :], gi[None, :])  # A_ij = <p_i, p_j>
        b = profile_inner_product(ti, gi, t_out[k], g_out[k])  # b_i = <p_i, q_k>
        x = np.linalg.solve(A, b)  # EDM2 Sec. 3.2, Alg. 2: dense unregularised solve
        x = x / x.sum()  # docs/phema.md: column normalised to sum 1
        X[idx, k] = x
        qq[k] = profile_inner_product(t_out[k], g_out[k], t_out[k], g_out[k])
        err2[k] = x @ A @ x - 2 * x @ b + qq[k]  # ||sum_i x_i p_i - q||^2 via the Gram matrix
    return X, err2, qq


def posthoc_coefficients(in_nimg, in_sigma_rel, out_nimg, out_sigma_rel) -> np.ndarray:
    """Weights X[i, k] of input snapshot i in target k (float64 [inputs, outputs], columns sum to 1)."""
    return _solve(in_nimg, in_sigma_rel, out_nimg, out_sigma_rel)[0]


def profile_error(in_nimg, in_sigma_rel, out_nimg, out_sigma_rel) -> np.ndarray:
    """Relative L2 error ||reconstructed profile - ideal profile|| / ||ideal profile|| per target."""
    _, err2, qq = _solve(in_nimg, in_sigma_rel, out_nimg, out_sigma_rel)
    return np.sqrt(np.maximum(err2, 0.0) / qq)


def traditional_halflife(nimg_before: int, halflife_nimg: float, rampup_ratio: float | None) -> float:
    """EDM's half-life in images at training time `nimg_before` (images seen before the step): the
    configured one, shortened early in training to `rampup_ratio * nimg_before` (EDM's ramp-up)."""
    if rampup_ratio is None:
        return float(halflife_nimg)
    return min(float(halflife_nimg), nimg_before * rampup_ratio)  # Karras et al. 2022 (EDM) training loop


def traditional_beta(
    nimg_before: int, batch_size: int, halflife_nimg: float, rampup_ratio: float | None
) -> float:
    """Per-step decay of a traditional EMA: beta = 0.5 ** (batch / half-life) (EDM2 App. B.1, CONFIG A)."""
    halflife = traditional_halflife(nimg_before, halflife_nimg, rampup_ratio)
    return 0.5 ** (batch_size / max(halflife, 1e-8))  # first step (half-life 0 with ramp-up): beta 0 -> copy


def traditional_weights(
    nimg: int, batch_size: int, halflife_nimg: float, rampup_ratio: float | None
) -> np.ndarray:
    """Weight of the network after each step k = 1..nimg/batch in a traditional EMA at `nimg` (sums to 1)."""
    steps = int(nimg) // int(batch_size)
    before = np.arange(steps, dtype=np.float64) * batch_size  # images seen before step k
    halflife = np.full(steps, float(halflife_nimg))
    if rampup_ratio is not None:
        halflife = np.minimum(halflife, before * rampup_ratio)
    with np.errstate(divide="ignore"):
        log_beta = np.log(0.5) * batch_size / np.maximum(halflife, 1e-8)
    later = np.concatenate([np.cumsum(log_beta[::-1])[::-1][1:], [0.0]])  # sum of log beta_j for j > k
    return (1 - np.exp(log_beta)) * np.exp(later)  # ema = sum_k (1 - beta_k) prod_{j>k} beta_j theta_k


def traditional_sigma_rel(
    nimg: int, batch_size: int, halflife_nimg: float, rampup_ratio: float | None
) -> float:
    """The std of a traditional EMA's averaging profile relative to training time `nimg` (EDM2 Eq. 2's
    sigma_rel, the x-axis of Fig. 5a where CONFIG A is one point)."""
    w = traditional_weights(nimg, batch_size, halflife_nimg, rampup_ratio)
    t = np.arange(1, len(w) + 1, dtype=np.float64) * batch_size  # network k is the one at time k * batch
    mean = np.sum(w * t)
    return float(np.sqrt(np.sum(w * (t - mean) ** 2)) / nimg)
