"""Power-function EMA math: gamma <-> sigma_rel, inner products, parity of the post-hoc solve."""

import json

import numpy as np
import pytest
from scipy.integrate import quad

from edm2lib.phema import profiles as phema


@pytest.mark.parametrize(
    ("sigma_rel", "gamma"), [(0.05, 16.9722), (0.10, 6.9372), (0.07, 11.2449), (0.15, 3.5579)]
)
def test_sigma_rel_to_gamma_matches_the_official_examples(sigma_rel, gamma):
    assert phema.sigma_rel_to_gamma(sigma_rel) == pytest.approx(gamma, abs=1e-4)


def test_sigma_rel_and_gamma_round_trip_vectorised():
    s = np.linspace(0.005, 0.275, 55)
    g = phema.sigma_rel_to_gamma(s)
    assert g.shape == s.shape and np.all(np.diff(g) < 0)  # longer EMA -> smaller exponent
    np.testing.assert_allclose(phema.gamma_to_sigma_rel(g), s, rtol=1e-12)


def test_power_function_beta_first_step_is_zero_and_then_grows():
    assert phema.power_function_beta(32, 32, 6.9) == 0.0
    assert phema.power_function_beta(64, 32, 1.0) == pytest.approx(0.25)
    assert phema.power_function_beta(3200, 32, 6.9) == pytest.approx(0.99**7.9)
    with pytest.raises(ValueError, match="batch_size"):
        phema.power_function_beta(16, 32, 6.9)


@pytest.mark.parametrize(("t_a", "t_b"), [(3.0, 7.0), (7.0, 3.0), (5.0, 5.0)])
def test_profile_inner_product_matches_numerical_integral(t_a, t_b):
    g_a, g_b = 6.9372, 16.9722

    def p(tau, t, g):
        return (g + 1) * tau**g / t ** (g + 1) if tau <= t else 0.0

    expected, _ = quad(lambda tau: p(tau, t_a, g_a) * p(tau, t_b, g_b), 0, min(t_a, t_b), epsabs=1e-13)
    assert phema.profile_inner_product(t_a, g_a, t_b, g_b) == pytest.approx(expected, rel=1e-9)


def test_posthoc_coefficients_reproduce_the_official_solve(reference_dir):
    ref = json.loads((reference_dir / "phema-coeffs.json").read_text())
    X = phema.posthoc_coefficients(ref["in_nimg"], ref["in_sigma_rel"], ref["out_nimg"], ref["out_sigma_rel"])
    assert X.dtype == np.float64 and X.shape == (32, 3)
    assert np.abs(X - np.array(ref["coeffs"])).max() <= 1e-9
    np.testing.assert_allclose(X.sum(axis=0), 1.0, atol=1e-12)


def test_tracked_profiles_reconstruct_themselves_exactly():
    t = np.repeat(np.arange(1, 9) * 1024.0, 2)
    s = np.tile([0.05, 0.10], 8)
    X = phema.posthoc_coefficients(t, s, 8192, [0.05, 0.10])
    np.testing.assert_allclose(X[-2:], np.eye(2), atol=1e-9)
    np.testing.assert_allclose(phema.profile_error(t, s, 8192, [0.05, 0.10]), 0.0, atol=1e-6)


def test_profile_error_small_inside_the_tracked_range_and_large_outside():
    t = np.repeat(np.arange(1, 17) * 8 * 2**20, 2)
    s = np.tile([0.05, 0.10], 16)
    targets = [0.01, 0.07, 0.15, 0.2, 0.27]
    err = phema.profile_error(t, s, t[-1], targets)
    assert err.shape == (5,)
    assert err[0] > 0.3  # far shorter than any tracked profile: not reconstructable
    assert err[1] < 0.005 and err[2] < 0.02 and err[3] < 0.03
    assert err[4] > err[3]


def test_time_grid_uses_only_snapshots_at_or_before_each_target():
    t = np.repeat([100.0, 200.0, 300.0, 400.0], 2)
    s = np.tile([0.05, 0.10], 4)
    X = phema.posthoc_coefficients(t, s, [200.0, 400.0, 400.0], [0.07, 0.07, 0.12])
    assert X.shape == (8, 3)
    assert np.all(X[4:, 0] == 0.0) and np.any(X[:4, 0] != 0.0)
    np.testing.assert_allclose(X.sum(axis=0), 1.0, atol=1e-12)
    # the 400-image target equals the solve restricted to all inputs
    np.testing.assert_allclose(X[:, 1], phema.posthoc_coefficients(t, s, 400.0, 0.07)[:, 0], atol=1e-12)


def test_snapshots_at_time_zero_are_ignored():
    t = np.array([0.0, 0.0, 100.0, 100.0, 200.0, 200.0])
    s = np.tile([0.05, 0.10], 3)
    X = phema.posthoc_coefficients(t, s, 200.0, 0.08)
    assert np.all(X[:2] == 0.0)
    np.testing.assert_allclose(X[2:, 0], phema.posthoc_coefficients(t[2:], s[2:], 200.0, 0.08)[:, 0])


def test_bad_inputs_raise_clear_errors():
    t, s = [100.0, 100.0, 200.0, 200.0], [0.05, 0.1, 0.05, 0.1]
    with pytest.raises(ValueError, match=r"0\.3"):
        phema.posthoc_coefficients(t, s, 200.0, 0.3)
    with pytest.raises(ValueError, match=r"-0\.1"):
        phema.sigma_rel_to_gamma(-0.1)
    with pytest.raises(ValueError, match="duplicated"):
        phema.posthoc_coefficients([100.0, 100.0], [0.05, 0.05], 200.0, 0.1)
    with pytest.raises(ValueError, match="before the first snapshot"):
        phema.posthoc_coefficients(t, s, 50.0, 0.1)
