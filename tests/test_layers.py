"""Magnitude-preserving primitives: unit variance in -> unit variance out, exact forms and weight handling."""

import math

import pytest
import torch

from edm2lib.nn.layers import (
    GroupNorm,
    MPConv,
    MPFourier,
    PositionalEmbedding,
    mp_cat,
    mp_silu,
    mp_sum,
    normalize,
    resample,
)

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


def test_group_norms_adm_form_subtracts_the_mean_and_rms_form_does_not():
    x = torch.randn(4, 64, 8, 8) * 3 + 2
    adm, rms = GroupNorm(64, rms=False), GroupNorm(64, rms=True)
    assert adm.groups == 16 and GroupNorm(192, rms=True).groups == 32  # min(32, C / 4) groups
    assert [n for n, _ in adm.named_parameters()] == ["weight", "bias"] and not list(rms.parameters())
    assert torch.allclose(adm(x), torch.nn.functional.group_norm(x, 16, eps=1e-5), atol=1e-5)
    y = rms(x).reshape(4, 16, -1)
    assert torch.allclose(y.square().mean(dim=2), torch.ones(4, 16), atol=1e-3)  # unit RMS per group
    assert y.mean().item() > 0.5  # the mean is kept (EDM2 Eq. 29)


def test_positional_embedding_is_cos_then_sin_of_geometric_frequencies():
    x = torch.tensor([0.0, 0.5, -1.25])
    emb = PositionalEmbedding(8)(x)
    freqs = 10000.0 ** -(torch.arange(4) / 4)
    assert emb.shape == (3, 8)
    assert torch.allclose(emb, torch.cat([(x[:, None] * freqs).cos(), (x[:, None] * freqs).sin()], 1))


def test_fourier_features_without_mp_scaling_are_plain_cosines():
    torch.manual_seed(0)
    plain = MPFourier(64, mp=False)
    torch.manual_seed(0)
    scaled = MPFourier(64)
    x = torch.randn(32)
    assert torch.allclose(plain(x) * math.sqrt(2), scaled(x)) and plain(x).abs().max() <= 1


def test_learned_layer_switches_init_bias_and_weight_norm():
    torch.manual_seed(0)
    uniform = MPConv(50, 300, [3, 3], bias=True, init="uniform", weight_norm="none")
    bound = 1 / math.sqrt(450)
    assert uniform.weight.abs().max() <= bound and uniform.weight.abs().max() > 0.99 * bound
    assert uniform.bias.shape == (300,) and uniform.bias.abs().max() <= bound
    zero = MPConv(8, 4, [], bias=True, init="zero", weight_norm="none")
    assert not zero.weight.any() and not zero.bias.any()
    x = torch.randn(2, 50, 6, 6)
    expected = torch.nn.functional.conv2d(x, uniform.weight, uniform.bias, padding=1)
    assert torch.allclose(uniform.train()(x), expected, atol=1e-6)  # no normalisation anywhere
    on_use = MPConv(4, 6, [3, 3], weight_norm="on_use")
    with torch.no_grad():
        on_use.weight.mul_(5)
    before = on_use.weight.detach().clone()
    x = torch.randn(1, 4, 5, 5)
    y = on_use.train()(x)
    assert torch.equal(on_use.weight, before)  # config D never rewrites the stored weight
    forced = MPConv(4, 6, [3, 3])
    forced.load_state_dict(on_use.state_dict())
    # Same output up to the eps of the doubled normalisation, but the stored weight is reset (EDM2 Alg. 1).
    assert torch.allclose(forced.train()(x), y, rtol=1e-3, atol=1e-4)
    assert not torch.equal(forced.weight, before)
    with pytest.raises(ValueError, match="layer init 'he'"):
        MPConv(4, 6, [], init="he")
