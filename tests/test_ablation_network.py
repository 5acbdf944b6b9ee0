"""The ablation ladder A..G as network switches: Table 1 sizes, magnitudes at init and under training."""

import dataclasses
import json
import statistics

import pytest
import torch

from edm2lib.nn.ladder import LETTERS, Switches, switches
from edm2lib.nn.layers import MPConv
from edm2lib.nn.networks import Block, Precond
from edm2lib.nn.presets import PRESETS, get_preset
from edm2lib.training.loss import edm2_loss

# EDM2 Table 1 (Mparams column, exact integers): U-Net parameters without the log-variance head.
TABLE1 = {
    "A": 295_902_724,
    "B": 291_757_828,
    "C": 277_816_512,
    "D": 277_816_512,
    "E": 277_816_512,
    "F": 280_212_672,
    "G": 280_212_709,
}
SMALL = dict(
    img_resolution=32,
    img_channels=3,
    label_dim=10,
    model_channels=32,
    channel_mult=[1, 2, 2],
    num_blocks=2,
    attn_resolutions=[16, 8],
)


def build_meta(network: dict) -> Precond:
    with torch.device("meta"):
        return Precond(**network)


def rms(x: torch.Tensor) -> float:
    return x.detach().float().square().mean().sqrt().item()


def small_inputs():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, 32, 32, generator=gen)  # unit variance, as c_in makes the U-Net input
    labels = torch.nn.functional.one_hot(torch.arange(16) % 10, 10).float()
    return x, torch.linspace(-2, 2, 16), labels


@pytest.mark.parametrize("letter", LETTERS)
def test_img512_s_parameter_counts_equal_table_1(letter):
    net = build_meta(get_preset("edm2-img512-s", config=letter).network)
    names = [n for n, _ in net.named_parameters()]
    unet = sum(p.numel() for n, p in net.named_parameters() if "logvar" not in n)
    assert unet == TABLE1[letter]
    logvar = [n for n in names if not n.startswith("unet.")]
    assert all("logvar" in n for n in logvar)
    assert bool(logvar) == (letter != "A")  # A trains with EDM's loss: no learned weighting
    heads = sum(1 for m in net.modules() if isinstance(m, Block) and m.num_heads)
    assert heads == (22 if letter == "A" else 15)  # EDM2 Sec. 2.1: 32x32 attention dropped from B on


def test_config_g_preset_is_the_published_one():
    for name in PRESETS:
        assert get_preset(name, config="G").network == get_preset(name).network
    assert "ablation" not in Precond(8, 3, 0, model_channels=16, channel_mult=[1]).config
    torch.manual_seed(0)
    default = Precond(**SMALL).state_dict()
    torch.manual_seed(0)
    explicit = Precond(**SMALL, ablation="G").state_dict()
    assert list(default) == list(explicit) and all(torch.equal(default[k], explicit[k]) for k in default)


@pytest.mark.parametrize("letter", LETTERS)
def test_every_size_preset_builds_every_config(letter):
    for name in PRESETS:
        preset = get_preset(name, config=letter)
        net = build_meta(preset.network)
        assert preset.config == letter and net.switches == switches(letter)
        if letter != "G":  # EDM2 Figs. 16-21: 10% dropout in A-F
            assert (preset.network["ablation"], preset.network["dropout"]) == (letter, 0.1)
    tiny = Precond(**get_preset("edm2-tiny", config=letter).network)
    assert {b.clip_act for b in tiny.modules() if isinstance(b, Block)} == {switches(letter).clip_act}
    rebuilt = Precond(**json.loads(json.dumps(tiny.config)))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in tiny.state_dict().items()
    }


def test_config_a_attends_one_level_finer_on_small_presets():
    assert get_preset("edm2-demo", config="A").network["attn_resolutions"] == [16, 8]
    assert get_preset("edm2-demo", config="B").network["attn_resolutions"] == [8]
    assert get_preset("edm2-tiny", config="A").network["attn_resolutions"] == [8]  # 16 is the image itself


def test_unknown_letters_and_impossible_switches_are_refused_by_name():
    with pytest.raises(ValueError, match=r"unknown config letter 'H'; allowed: A, B, C, D, E, F, G"):
        get_preset("edm2-demo", config="H")
    with pytest.raises(ValueError, match=r"unknown config letter 'g'; allowed: A, B"):
        Precond(8, 3, 0, model_channels=16, channel_mult=[1], ablation="g")
    with pytest.raises(ValueError, match=r"weight_norm='forced' cannot work with zero_init=True"):
        dataclasses.replace(switches("A"), weight_norm="forced")
    with pytest.raises(ValueError, match=r"switch attention='flash' is not one of \('standard', 'cosine'\)"):
        dataclasses.replace(switches("C"), attention="flash")
    assert isinstance(switches("E"), Switches)


@pytest.mark.parametrize("letter", LETTERS)
def test_learned_layers_are_magnitude_preserving_at_init_from_d_on(letter):
    """Output RMS / input RMS of every conv and linear: ~1 with weight normalisation (EDM2 Sec. 2.2)."""
    torch.manual_seed(0)
    unet = Precond(**SMALL, ablation=letter).unet.eval()
    ratios = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o, n=n: ratios.__setitem__(n, rms(o) / rms(i[0])))
        for n, m in unet.named_modules()
        if isinstance(m, MPConv)
    ]
    with torch.no_grad():
        unet(*small_inputs())
    for h in hooks:
        h.remove()
    live = [r for r in ratios.values() if r > 0]  # zero-init layers (A, B) and zero gains (G) output 0
    assert len(ratios) >= 99
    if letter in "DEFG":
        assert all(0.75 <= r <= 1.3 for r in live), ratios
    else:  # He-uniform init: output magnitude about 1/sqrt(3) of the input's
        assert statistics.median(live) < 0.7, ratios


@pytest.mark.parametrize("letter", LETTERS)
def test_only_config_g_keeps_every_block_output_at_unit_magnitude_at_init(letter):
    """A-C shrink (He-uniform, zero-init branches); D-F grow with depth (plain sums); G stays ~1."""
    torch.manual_seed(0)
    unet = Precond(**SMALL, ablation=letter).unet.eval()
    outputs = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: outputs.append(rms(o)))
        for m in unet.modules()
        if isinstance(m, Block)
    ]
    with torch.no_grad():
        unet(*small_inputs())
    for h in hooks:
        h.remove()
    assert len(outputs) == 8 + 13
    inside = [0.7 <= r <= 1.3 for r in outputs]
    if letter == "G":
        assert all(inside), outputs
    else:
        assert not all(inside), outputs
    if letter in "DEF":
        assert max(outputs) > 1.5, outputs  # residual + branch without the MP-Sum of EDM2 Eq. 88


def weight_rms_after_training(letter: str, steps: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel RMS of every stored weight, and its growth over the initial weight."""
    torch.manual_seed(0)
    net = Precond(16, 3, 10, model_channels=16, channel_mult=[1, 2], num_blocks=1, ablation=letter).train()
    layers = [m for m in net.modules() if isinstance(m, MPConv)]
    initial = [m.weight.detach().flatten(1).norm(dim=1) for m in layers]
    optimizer = torch.optim.Adam(net.parameters(), lr=0.05, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        images = torch.randn(8, 3, 16, 16, generator=gen) * 0.5
        labels = torch.nn.functional.one_hot(torch.randint(0, 10, (8,), generator=gen), 10).float()
        loss = edm2_loss(net, images, labels, generator=gen)
        optimizer.zero_grad()
        (loss.sum() / 8).backward()
        optimizer.step()
    weights = [m.weight.detach().flatten(1) for m in layers]
    channel_rms = torch.cat([w.square().mean(dim=1).sqrt() for w in weights])
    growth = torch.cat([w.norm(dim=1) / w0 for w, w0 in zip(weights, initial)])
    return channel_rms, growth


@pytest.mark.parametrize("letter", "DEFG")
def test_forced_weight_normalisation_keeps_stored_weights_at_unit_rms_while_d_grows(one_thread, letter):
    channel_rms, growth = weight_rms_after_training(letter)
    if letter == "D":  # EDM2 Eqs. 60-65: on-use normalisation only, the stored norms drift upward
        assert growth.mean().item() > 1.02, growth.mean()
        assert (channel_rms - 1).abs().max().item() > 0.2
    else:  # EDM2 Eq. 66: reset to norm sqrt(fan_in) before every training use
        assert (channel_rms - 1).abs().max().item() < 0.02, channel_rms


def test_config_a_has_no_learned_weighting_and_trains_with_the_edm_loss():
    torch.manual_seed(0)
    net = Precond(16, 3, 10, model_channels=16, channel_mult=[1, 2], num_blocks=1, ablation="A")
    assert not net.learned_weighting and Precond(**SMALL, ablation="B").learned_weighting
    x, sigma = torch.randn(4, 3, 16, 16), torch.tensor([0.1, 0.5, 2.0, 10.0])
    D, logvar = net(x, sigma, torch.eye(10)[:4], return_logvar=True)
    c_skip = (0.25 / (sigma**2 + 0.25)).reshape(-1, 1, 1, 1)
    assert torch.allclose(D, c_skip * x, atol=1e-6)  # zero-initialised output conv: F = 0
    assert torch.equal(logvar, torch.zeros(4, 1, 1, 1))
    images, labels = torch.randn(4, 3, 16, 16) * 0.5, torch.eye(10)[:4]
    s = torch.tensor([0.2, 1.0, 3.0, 30.0]).reshape(-1, 1, 1, 1)
    noise = torch.randn_like(images)
    loss = edm2_loss(net, images, labels, sigma=s, noise=noise)
    weight = (s**2 + 0.25) / (s * 0.5) ** 2  # EDM's lambda(sigma)
    assert torch.allclose(loss, weight * (net(images + s * noise, s, labels) - images) ** 2)


@pytest.mark.parametrize("letter", ["A", "C"])
def test_pre_mp_configs_trace_as_one_graph_and_run_in_bfloat16(letter):
    import torch._dynamo

    torch.manual_seed(0)
    net = Precond(16, 3, 10, model_channels=16, channel_mult=[1, 2], num_blocks=1, ablation=letter)
    with torch.no_grad():  # give the zero-initialised layers of A something to compute
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    x, sigma, labels = torch.randn(2, 3, 16, 16), torch.tensor([0.5, 3.0]), torch.eye(10)[:2]
    explanation = torch._dynamo.explain(net.train())(x, sigma, labels, return_logvar=True)
    torch._dynamo.reset()
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons
    net.eval()
    with torch.no_grad():
        D32 = net(x, sigma, labels)
        net.compute_dtype = "bfloat16"
        Dbf = net(x, sigma, labels)
    assert Dbf.dtype == torch.float32 and 0 < (Dbf - D32).abs().max() / D32.abs().max() < 0.05
