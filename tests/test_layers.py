"""Magnitude-preserving primitives: unit variance in -> unit variance out, exact forms and weight handling."""

import math

import pytest
import torch

from edm2lib.nn.layers import MPConv, MPFourier, mp_cat, mp_silu, mp_sum, normalize, resample

N = 1 << 20  # a large unit-variance sample: the std estimate is good to ~0.1%


@pytest.fixture()
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def within_one_percent(x: torch.Tensor) -> bool:
    """Magnitude (RMS, the paper's measure; equal to the std for zero-mean outputs) within 1% of 1."""
    return abs(x.square().mean().sqrt().item() - 1) <= 0.01


def test_mp_silu_preserves_unit_magnitude(gen):
    y = mp_silu(torch.randn(N, generator=gen))
    assert within_one_percent(y)
    assert 0.2 < y.mean().item() < 0.4  # silu is not zero-mean: its std is below its RMS


@pytest.mark.parametrize("t", [0.3, 0.5, 0.8])
def test_mp_sum_preserves_unit_variance(gen, t):
    a, b = torch.randn(N, generator=gen), torch.randn(N, generator=gen)
    assert within_one_percent(mp_sum(a, b, t))
    assert torch.allclose(mp_sum(a, b, t), ((1 - t) * a + t * b) / math.sqrt((1 - t) ** 2 + t**2), atol=1e-6)


@pytest.mark.parametrize("t", [0.3, 0.5])
def test_mp_cat_preserves_unit_variance_and_balances_the_parts(gen, t):
    a, b = torch.randn(64, 48, 32, 32, generator=gen), torch.randn(64, 16, 32, 32, generator=gen)
    y = mp_cat(a, b, dim=1, t=t)
    assert y.shape == (64, 64, 32, 32)
    assert within_one_percent(y)
    # The share of b's energy in the output is t^2 / ((1-t)^2 + t^2), independent of the channel counts.
    energy_b = y[:, 48:].square().sum() / y.square().sum()
    assert abs(energy_b.item() - t**2 / ((1 - t) ** 2 + t**2)) < 0.005


def test_mp_fourier_preserves_unit_variance_and_is_sqrt2_cos(gen):
    torch.manual_seed(0)
    fourier = MPFourier(256)
    x = torch.randn(4096, generator=gen)
    y = fourier(x)
    assert y.shape == (4096, 256)
    assert within_one_percent(y)
    expected = math.sqrt(2) * torch.cos(x[:, None] * fourier.freqs + fourier.phases)
    assert torch.allclose(y, expected, atol=1e-5)


def test_mp_conv_preserves_unit_variance_for_conv_and_linear(gen):
    torch.manual_seed(0)
    conv, linear = MPConv(64, 96, [3, 3]).eval(), MPConv(256, 512, []).eval()
    y = conv(torch.randn(16, 64, 32, 32, generator=gen))
    assert within_one_percent(y[..., 1:-1, 1:-1])  # zero padding lowers the border pixels' magnitude
    assert within_one_percent(linear(torch.randn(4096, 256, generator=gen)))
    assert conv(torch.randn(2, 64, 8, 8)).shape == (2, 96, 8, 8)


def test_normalize_gives_unit_rms_with_eps_added_to_the_rms():
    x = torch.randn(8, 3, 5, 5) * 7
    y = normalize(x)
    rms = y.square().mean(dim=[1, 2, 3]).sqrt()
    assert torch.allclose(rms, torch.ones(8), atol=1e-4)
    assert torch.allclose(normalize(torch.zeros(2, 3)), torch.zeros(2, 3))
    assert torch.allclose(normalize(torch.ones(1, 4), eps=1.0), torch.full((1, 4), 0.5))  # 1 / (1 + 1)
    assert normalize(x.half()).dtype == torch.float16


def test_resample_is_average_pooling_and_nearest_upsampling():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    down = resample(x, mode="down")
    assert down.shape == (1, 1, 2, 2) and down[0, 0, 0, 0].item() == (0 + 1 + 4 + 5) / 4
    up = resample(down, mode="up")
    assert up.shape == (1, 1, 4, 4) and torch.equal(up[0, 0, :2, :2], down[0, 0, 0, 0].expand(2, 2))
    assert resample(x, mode="keep") is x
    # A general filter takes the conv path; [1, 1] through it equals the fast path.
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(resample(x, f=[1.0, 1.0], mode="down"), resample(x, f=(1, 1), mode="down"))
    assert resample(x, f=[1, 3, 3, 1], mode="down").shape == (2, 3, 4, 4)
    with pytest.raises(ValueError, match="'sideways'"):
        resample(x, mode="sideways")


def test_mp_conv_training_mode_renormalises_the_stored_weight_in_place():
    torch.manual_seed(0)
    conv = MPConv(4, 6, [3, 3])
    with torch.no_grad():
        conv.weight.mul_(5)
    before = conv.weight.detach().clone()
    conv.eval()(torch.randn(1, 4, 5, 5))
    assert torch.equal(conv.weight, before)  # eval mode leaves the stored weight alone
    conv.train()(torch.randn(1, 4, 5, 5))
    rms = conv.weight.detach().square().mean(dim=[1, 2, 3]).sqrt()
    assert torch.allclose(rms, torch.ones(6), atol=1e-3)
    assert torch.allclose(conv.weight.detach(), normalize(before))


def test_mp_conv_gain_scales_the_output_linearly():
    torch.manual_seed(0)
    linear = MPConv(8, 4, []).eval()
    x = torch.randn(3, 8)
    assert torch.allclose(linear(x, gain=torch.tensor(2.5)), 2.5 * linear(x), atol=1e-6)
    assert torch.equal(linear(x, gain=0), torch.zeros(3, 4))
