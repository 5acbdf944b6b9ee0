"""EDM sampler: official parity, closed-form ODE convergence, guidance (interval), per-seed noise, errors."""

import itertools
import math

import pytest
import torch

from edm2lib.sampling.heun import (
    count_nfe,
    edm_sampler,
    evaluation_sigmas,
    karras_sigmas,
    seed_noise_and_labels,
)

pytestmark = pytest.mark.usefixtures("one_thread")


class GaussianDenoiser(torch.nn.Module):
    """Exact denoiser of data ~ N(0, std^2 I): D(x, sigma) = x std^2 / (std^2 + sigma^2); counts its calls."""

    def __init__(self, std=0.5, resolution=4, channels=2, label_dim=0):
        super().__init__()
        self.std, self.label_dim = std, label_dim
        self.img_resolution, self.img_channels = resolution, channels
        self.calls, self.sigmas = 0, []

    def forward(self, x, sigma, labels=None):
        self.calls += 1
        self.sigmas.append(float(sigma.flatten()[0]))
        sigma = sigma.reshape(-1, 1, 1, 1).to(x.dtype)
        return x * self.std**2 / (self.std**2 + sigma**2)


class Blend(GaussianDenoiser):
    """Linear denoiser D(x) = x (c_g + w (c_main - c_g)): one Gaussian denoiser guided by another."""

    def __init__(self, main, guide, w):
        super().__init__()
        self.main, self.guide, self.w = main, guide, w

    def forward(self, x, sigma, labels=None):
        D_g = self.guide(x, sigma)
        return D_g + self.w * (self.main(x, sigma) - D_g)


class Nonlinear(GaussianDenoiser):
    """A per-image nonlinear denoiser, so batch mixing or reordering would change results."""

    def forward(self, x, sigma, labels=None):
        sigma = sigma.reshape(-1, 1, 1, 1)
        return torch.tanh(x / (1 + sigma)) * (0.5 + labels.argmax(1).reshape(-1, 1, 1, 1) / 10)


def test_sampler_reproduces_official_4_step_heun_run(tiny_reference):
    from edm2lib.nn.networks import Precond

    ref = tiny_reference
    net = Precond(**ref["config"]).eval().requires_grad_(False)
    net.load_state_dict(ref["state_dict"], strict=True)
    draw = seed_noise_and_labels(ref["sample_seeds"], ref["sample_noise"].shape[1:], net.label_dim)
    assert torch.equal(draw.noise, ref["sample_noise"])
    assert torch.equal(draw.labels, ref["sample_labels"])
    x = edm_sampler(net, draw.noise, draw.labels, karras_sigmas(ref["sample_steps"]))
    rel = (x - ref["samples"]).norm() / ref["samples"].norm()
    assert rel <= 1e-5, f"relative error {rel:.2e}"


def test_karras_sigmas_follow_edm_rho_schedule():
    t = karras_sigmas(5, 0.002, 80, 7)
    assert t.dtype == torch.float64 and len(t) == 6
    assert t[0] == pytest.approx(80) and t[4] == pytest.approx(0.002) and t[5] == 0
    # EDM eq. 5: t^(1/rho) is linear in the step index
    step = (0.002 ** (1 / 7) - 80 ** (1 / 7)) / 4
    assert torch.allclose(torch.diff(t[:5] ** (1 / 7)), torch.full([4], step, dtype=torch.float64))


def test_heun_converges_to_closed_form_ode_solution_at_second_order():
    # Data ~ N(0, s^2): x / sqrt(s^2 + sigma^2) is an ODE invariant: x(0) = x(80) s / sqrt(s^2 + 80^2)
    noise = torch.randn([3, 2, 4, 4], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = noise * 80 * 0.5 / math.sqrt(0.5**2 + 80**2)
    errors = []
    for N in (16, 32, 64, 128):
        x = edm_sampler(GaussianDenoiser(), noise, sigmas=karras_sigmas(N), dtype=torch.float64)
        errors.append(float((x - exact).norm() / exact.norm()))
    assert errors[-1] < 1e-3
    ratios = [a / b for a, b in itertools.pairwise(errors)]
    assert all(r > 3.5 for r in ratios), f"errors {errors} do not shrink ~4x per doubling of steps"


def test_deterministic_sampler_uses_2n_minus_1_evaluations_at_the_scheduled_sigmas():
    net = GaussianDenoiser()
    edm_sampler(net, torch.randn([2, 2, 4, 4]), sigmas=karras_sigmas(5))
    assert net.calls == 9 == count_nfe(karras_sigmas(5))["main"] == count_nfe(karras_sigmas(5))["total"]
    t = karras_sigmas(5).tolist()
    assert net.sigmas == pytest.approx([t[0], t[1], t[1], t[2], t[2], t[3], t[3], t[4], t[4]], rel=1e-6)
    assert count_nfe(karras_sigmas(32))["main"] == 63


def test_any_decreasing_schedule_is_followed_and_counted():
    sigmas = [10.0, 3.0, 0.5]  # ends above 0: every step, the last included, gets its Heun correction
    net = GaussianDenoiser()
    edm_sampler(net, torch.randn([1, 2, 4, 4]), sigmas=torch.tensor(sigmas))
    assert net.sigmas == pytest.approx([10.0, 3.0, 3.0, 0.5], rel=1e-6) == evaluation_sigmas(sigmas)
    assert net.calls == 4 == count_nfe(sigmas)["main"]
    with pytest.raises(ValueError, match="at least 2 steps"):
        karras_sigmas(1)


def test_guidance_is_lerp_from_guide_output_to_main_output():
    noise = torch.randn([2, 2, 4, 4], generator=torch.Generator().manual_seed(1))
    main, guide = GaussianDenoiser(std=0.5), GaussianDenoiser(std=0.3)
    x = edm_sampler(main, noise, sigmas=karras_sigmas(6), guidance=1.7, gnet=guide)
    expected = edm_sampler(
        Blend(GaussianDenoiser(0.5), GaussianDenoiser(0.3), 1.7), noise, sigmas=karras_sigmas(6)
    )
    torch.testing.assert_close(x, expected, rtol=1e-5, atol=1e-6)
    assert main.calls == guide.calls == 11
    unguided_guide = GaussianDenoiser(std=0.3)
    edm_sampler(GaussianDenoiser(), noise, sigmas=karras_sigmas(6), guidance=1.0, gnet=unguided_guide)
    assert unguided_guide.calls == 0  # w = 1: D = D_main, the guide is never evaluated


class LabelRecorder(GaussianDenoiser):
    """Records the labels it is called with."""

    def __init__(self, label_dim=0):
        super().__init__(label_dim=label_dim)
        self.labels = []

    def forward(self, x, sigma, labels=None):
        self.labels.append(labels)
        return super().forward(x, sigma, labels)


def test_conditional_guide_gets_the_same_labels_and_unconditional_guide_none():
    labels = torch.eye(3)[[2, 0]]
    main, auto_guide, cfg_guide = LabelRecorder(label_dim=3), LabelRecorder(label_dim=3), LabelRecorder()
    edm_sampler(
        main, torch.randn([2, 2, 4, 4]), labels, sigmas=karras_sigmas(2), guidance=1.5, gnet=auto_guide
    )
    assert len(auto_guide.labels) == 3 and all(torch.equal(lab, labels) for lab in auto_guide.labels)
    edm_sampler(
        main, torch.randn([2, 2, 4, 4]), labels, sigmas=karras_sigmas(2), guidance=1.5, gnet=cfg_guide
    )
    assert cfg_guide.labels == [None] * 3  # CFG: the unconditional guide gets no labels


def test_guidance_interval_skips_guide_outside_sigma_band_by_expected_count():
    steps, lo, hi = 8, 0.28, 5.42
    t = karras_sigmas(steps).tolist()
    # Euler evaluations at t_0..t_7, Heun corrections at t_1..t_7: t_i for 1 <= i <= 7 counts twice
    expected_guide = sum((2 if i >= 1 else 1) for i in range(steps) if lo < t[i] <= hi)
    main, guide = GaussianDenoiser(), GaussianDenoiser(std=0.3)
    kw = dict(sigmas=karras_sigmas(steps), guidance=2.0, guidance_interval=(lo, hi))
    edm_sampler(main, torch.randn([1, 2, 4, 4]), gnet=guide, **kw)
    assert main.calls == 15
    assert guide.calls == expected_guide == count_nfe(**kw)["guide"]
    assert 0 < expected_guide < 15  # the band really cuts evaluations on both sides
    assert all(lo < s <= hi for s in guide.sigmas)
    assert (
        count_nfe(karras_sigmas(steps), guidance=2.0)["guide"] == 15
    )  # without an interval every evaluation is guided


def test_guidance_outside_interval_equals_unguided_sampling():
    noise = torch.randn([2, 2, 4, 4], generator=torch.Generator().manual_seed(2))
    guide = GaussianDenoiser(std=0.3)
    kw = dict(sigmas=karras_sigmas(6), guidance=3.0, guidance_interval=(100, 200))
    x = edm_sampler(GaussianDenoiser(), noise, gnet=guide, **kw)
    assert guide.calls == 0
    assert torch.equal(x, edm_sampler(GaussianDenoiser(), noise, sigmas=karras_sigmas(6)))


def test_churn_evaluates_at_raised_sigma_and_draws_noise_from_seed_generators():
    kw = dict(sigmas=karras_sigmas(6), S_churn=2.0, S_min=0.05, S_max=50)
    net = GaussianDenoiser()
    draw = seed_noise_and_labels([0, 1], [2, 4, 4], 0)
    x1 = edm_sampler(net, draw.noise, generators=draw.generators, **kw)
    assert net.sigmas == pytest.approx(evaluation_sigmas(**kw), rel=1e-6)
    t = karras_sigmas(6).tolist()
    assert net.sigmas[0] == pytest.approx(t[0])  # 80 > S_max: no churn
    assert net.sigmas[2] == pytest.approx(t[1] * (1 + 2.0 / 6))  # gamma = S_churn / N < sqrt(2) - 1
    draw = seed_noise_and_labels([0, 1], [2, 4, 4], 0)
    assert torch.equal(x1, edm_sampler(GaussianDenoiser(), draw.noise, generators=draw.generators, **kw))
    plain = edm_sampler(GaussianDenoiser(), draw.noise, sigmas=karras_sigmas(6))
    assert not torch.allclose(x1, plain)


def test_seed_noise_and_labels_depend_only_on_the_seed():
    full = seed_noise_and_labels(list(range(16)), [2, 4, 4], 10)
    part = seed_noise_and_labels([5, 6], [2, 4, 4], 10)
    assert torch.equal(full.noise[5:7], part.noise) and torch.equal(full.classes[5:7], part.classes)
    wrapped = seed_noise_and_labels([5 + 2**32], [2, 4, 4], 10)
    assert torch.equal(wrapped.noise[0], full.noise[5])
    assert torch.equal(full.labels, torch.eye(10)[full.classes])
    fixed = seed_noise_and_labels(list(range(16)), [2, 4, 4], 10, class_idx=3)
    assert torch.equal(fixed.noise, full.noise) and (fixed.classes == 3).all()
    uncond = seed_noise_and_labels([0, 1], [2, 4, 4], 0)
    assert uncond.labels is None and uncond.classes.tolist() == [-1, -1]


@pytest.mark.parametrize("batch", [1, 4, 16])
def test_seeds_give_identical_samples_for_any_batch_size(batch):
    seeds, kw = list(range(16)), dict(sigmas=karras_sigmas(4), S_churn=1.0, S_noise=1.003)
    net = Nonlinear(label_dim=10)
    draw = seed_noise_and_labels(seeds, [2, 4, 4], 10)
    whole = edm_sampler(net, draw.noise, draw.labels, generators=draw.generators, **kw)
    parts = []
    for i in range(0, 16, batch):
        d = seed_noise_and_labels(seeds[i : i + batch], [2, 4, 4], 10)
        parts.append(edm_sampler(net, d.noise, d.labels, generators=d.generators, **kw))
    assert torch.equal(torch.cat(parts), whole)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(guidance=1.5), "needs a guiding network"),
        (dict(guidance=1.5, gnet=GaussianDenoiser(resolution=8)), "same space"),
        (dict(guidance=1.5, gnet=GaussianDenoiser(channels=3)), "same space"),
        (dict(labels=torch.eye(2)), "unconditional"),
        (dict(sigmas=[80.0, 1.0, 2.0, 0.0]), "strictly decreasing"),
        (dict(sigmas=32), "sequence of noise levels"),
        (dict(guidance=2.0, gnet=GaussianDenoiser(), guidance_interval=(5.0, 1.0)), "guidance_interval"),
        (dict(noise=torch.randn([2, 3, 4, 4])), "noise shape"),
        (dict(generators=[torch.Generator()]), "generators"),
    ],
)
def test_bad_inputs_raise_before_any_network_evaluation(kwargs, match):
    net = GaussianDenoiser()
    kwargs = {"noise": torch.randn([2, 2, 4, 4]), **kwargs}
    with pytest.raises(ValueError, match=match):
        edm_sampler(net, **kwargs)
    assert net.calls == 0


def test_class_idx_outside_label_range_is_rejected():
    with pytest.raises(ValueError, match="class_idx=10"):
        seed_noise_and_labels([0], [2, 4, 4], 10, class_idx=10)
