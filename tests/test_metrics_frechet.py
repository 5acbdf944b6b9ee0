"""Fréchet distance: closed-form Gaussian cases, invariances, and agreement of the eigh and sqrtm forms."""

import numpy as np
import pytest

from edm2lib.metrics import frechet_distance, frechet_distance_sqrtm

FORMS = [frechet_distance, frechet_distance_sqrtm]


def random_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def random_cov(d: int, rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    x = rng.standard_normal((n or 2 * d, d)) * rng.uniform(0.1, 3.0, d)
    return np.cov(x, rowvar=False)


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


@pytest.mark.parametrize("fd", FORMS)
def test_identical_gaussians_have_zero_distance(fd):
    rng = np.random.default_rng(0)
    mu, sigma = rng.standard_normal(64), random_cov(64, rng)
    assert abs(fd(mu, sigma, mu, sigma)) <= 1e-8 * np.trace(sigma)


@pytest.mark.parametrize("fd", FORMS)
def test_one_dimensional_distance_is_squared_mean_and_std_gaps(fd):
    value = fd([1.0], [[4.0]], [-0.5], [[0.25]])
    assert rel(value, 1.5**2 + (2.0 - 0.5) ** 2) <= 1e-12


@pytest.mark.parametrize("fd", FORMS)
def test_shifted_means_with_equal_covariance_give_squared_mean_gap(fd):
    rng = np.random.default_rng(1)
    sigma = random_cov(48, rng)
    mu1, mu2 = rng.standard_normal(48), rng.standard_normal(48)
    expected = float(np.sum((mu1 - mu2) ** 2))
    assert rel(fd(mu1, sigma, mu2, sigma), expected) <= 1e-8


@pytest.mark.parametrize("fd", FORMS)
def test_commuting_covariances_match_sum_of_sqrt_eigenvalue_gaps(fd):
    rng = np.random.default_rng(2)
    d = 96
    q = random_rotation(d, rng)
    l1, l2 = rng.uniform(0.01, 5, d), rng.uniform(0.01, 5, d)
    s1, s2 = (q * l1) @ q.T, (q * l2) @ q.T
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(l1) - np.sqrt(l2)) ** 2)
    assert rel(fd(mu1, s1, mu2, s2), expected) <= 1e-8


@pytest.mark.parametrize("fd", FORMS)
def test_scaled_covariance_gives_trace_times_one_minus_c_squared(fd):
    rng = np.random.default_rng(3)
    s1, c = random_cov(64, rng), 0.3
    mu = np.zeros(64)
    assert rel(fd(mu, s1, mu, c**2 * s1), np.trace(s1) * (1 - c) ** 2) <= 1e-8


@pytest.mark.parametrize("fd", FORMS)
def test_non_commuting_2x2_matches_closed_form_trace_sqrt(fd):
    # tr sqrt(S1 S2) = sqrt(tr(S1 S2) + 2 sqrt(det S1 det S2)) for 2x2 PSD matrices
    rng = np.random.default_rng(4)
    worst = 0.0
    for _ in range(50):
        s1, s2 = random_cov(2, rng, n=5), random_cov(2, rng, n=5)
        mu1, mu2 = rng.standard_normal(2), rng.standard_normal(2)
        tr_sqrt = np.sqrt(np.trace(s1 @ s2) + 2 * np.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
        expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
        worst = max(worst, rel(fd(mu1, s1, mu2, s2), expected))
    assert worst <= 1e-8


def test_distance_is_symmetric_translation_invariant_and_scales_quadratically():
    rng = np.random.default_rng(5)
    mu1, mu2 = rng.standard_normal(32), rng.standard_normal(32)
    s1, s2 = random_cov(32, rng), random_cov(32, rng)
    base = frechet_distance(mu1, s1, mu2, s2)
    shift = rng.standard_normal(32)
    assert rel(frechet_distance(mu2, s2, mu1, s1), base) <= 1e-10
    assert rel(frechet_distance(mu1 + shift, s1, mu2 + shift, s2), base) <= 1e-10
    assert rel(frechet_distance(3 * mu1, 9 * s1, 3 * mu2, 9 * s2), 9 * base) <= 1e-10


def test_eigen_form_agrees_with_scipy_sqrtm_form_full_rank_and_rank_deficient():
    rng = np.random.default_rng(6)
    d = 200
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    full = frechet_distance(mu1, random_cov(d, rng), mu2, random_cov(d, rng))
    s1, s2 = random_cov(d, rng, n=500), random_cov(d, rng, n=500)
    assert rel(frechet_distance(mu1, s1, mu2, s2), frechet_distance_sqrtm(mu1, s1, mu2, s2)) <= 1e-8
    assert full > 0
    # rank-deficient covariances (fewer samples than dimensions), as with small feature sets
    r1, r2 = random_cov(d, rng, n=60), random_cov(d, rng, n=80)
    assert rel(frechet_distance(mu1, r1, mu2, r2), frechet_distance_sqrtm(mu1, r1, mu2, r2)) <= 1e-6


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((np.zeros(3), np.eye(3), np.zeros(4), np.eye(3)), "mu2"),
        ((np.zeros(3), np.eye(2), np.zeros(3), np.eye(3)), "sigma1"),
        ((np.zeros(3), np.eye(3), np.zeros(3), np.eye(4)), "sigma2"),
        ((np.zeros(3), np.eye(3) * np.nan, np.zeros(3), np.eye(3)), "NaN"),
    ],
)
def test_mismatched_or_non_finite_inputs_raise_naming_the_argument(args, message):
    with pytest.raises(ValueError, match=message):
        frechet_distance(*args)
