"""Presets: the paper's parameter counts and hyper-parameters, and usable small CPU presets."""

import dataclasses

import pytest
import torch

from edm2lib.nn.networks import Precond
from edm2lib.nn.presets import PRESETS, get_preset

# EDM2 Table 2 (Mparams), exact counts with the official Precond on the meta device (label_dim 1000, and 0).
PARAMS = {
    "edm2-img512-xxs": (31_309_029, 31_053_029),
    "edm2-img512-xs": (124_713_253, 124_201_253),
    "edm2-img512-s": (280_212_837, 279_444_837),
    "edm2-img512-m": (497_807_781, 496_783_781),
    "edm2-img512-l": (777_498_085, 776_218_085),
    "edm2-img512-xl": (1_119_283_749, 1_117_747_749),
    "edm2-img512-xxl": (1_523_164_773, 1_521_372_773),
    "edm2-img64-xs": (124_710_949, 124_198_949),
    "edm2-img64-s": (280_209_381, 279_441_381),
    "edm2-img64-m": (497_803_173, 496_779_173),
    "edm2-img64-l": (777_492_325, 776_212_325),
    "edm2-img64-xl": (1_119_276_837, 1_117_740_837),
}

PAPER_SIZES = ["xs", "s", "m", "l", "xl", "xxl"]  # the img512 sizes in the paper's tables


def count_params(network: dict) -> tuple[int, int]:
    with torch.device("meta"):
        net = Precond(**network)
    return sum(p.numel() for p in net.parameters()), len(list(net.parameters()))


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_paper_preset_parameter_counts_match_the_official_network(name):
    preset = get_preset(name)
    count, tensors = count_params(preset.network)
    assert count == PARAMS[name][0]
    assert tensors == 199  # measured on the official Precond: every paper preset has 199 parameter tensors
    assert count_params({**preset.network, "label_dim": 0})[0] == PARAMS[name][1]


def test_img512_parameter_counts_round_to_the_paper_table():
    millions = [round(count_params(get_preset(f"edm2-img512-{s}").network)[0] / 1e6, 1) for s in PAPER_SIZES]
    assert millions == [124.7, 280.2, 497.8, 777.5, 1119.3, 1523.2]


def test_paper_presets_carry_the_training_hyperparameters():
    m = get_preset("edm2-img512-m")
    assert (m.lr_ref, m.t_ref, m.P_mean, m.P_std, m.batch) == (0.009, 70000 * 2048, -0.4, 1.0, 2048)
    assert m.network["dropout"] == 0.1 and m.network["img_channels"] == 4 and m.encoder == "sd-vae"
    assert m.duration == 2048 * 2**20 and m.snapshot_nimg == 8 * 2**20 and m.warmup == 10_000_000
    assert m.sigma_rels == (0.05, 0.10)
    xl64 = get_preset("edm2-img64-xl")
    assert (xl64.lr_ref, xl64.t_ref, xl64.P_mean, xl64.P_std) == (0.007, 35000 * 2048, -0.8, 1.6)
    assert xl64.duration // 1000 == 671088 and xl64.network["img_channels"] == 3 and xl64.encoder == "pixels"
    assert get_preset("edm2-img512-xxl").duration // 1000 == 939524  # the kimg in the published file names


def test_every_preset_schedules_whole_batches_and_1024_image_snapshots():
    for preset in PRESETS.values():
        for key in ("duration", "snapshot_nimg", "checkpoint_nimg", "status_nimg"):
            assert getattr(preset, key) % preset.batch == 0, (preset.name, key)
        assert preset.snapshot_nimg % 1024 == 0  # nimg must be recoverable from kimg in file names
        assert set(preset.training) >= {"batch", "duration", "lr_ref", "t_ref", "P_mean", "sigma_rels"}


@pytest.mark.parametrize("name", ["edm2-demo", "edm2-tiny"])
def test_small_presets_build_and_run_a_training_step(name):
    preset = get_preset(name)
    torch.manual_seed(0)
    net = Precond(**preset.network).train()
    res, ch = preset.network["img_resolution"], preset.network["img_channels"]
    x = torch.randn(2, ch, res, res)
    D, logvar = net(x, torch.tensor([0.5, 5.0]), torch.eye(10)[:2], return_logvar=True)
    (D.square().mean() + logvar.mean()).backward()
    assert D.shape == x.shape
    assert all(p.grad is not None for p in net.parameters())
    assert all(b.num_heads > 0 for n, b in net.unet.dec.named_children() if n.endswith("_in0"))


def test_get_preset_returns_a_copy_and_names_valid_presets_on_error():
    a = get_preset("edm2-demo")
    a.network["channel_mult"].append(9)
    assert get_preset("edm2-demo").network["channel_mult"] == [1, 2, 2]
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.batch = 1
    with pytest.raises(ValueError, match=r"unknown preset 'edm2-img512-huge'.*edm2-img512-xs.*edm2-tiny"):
        get_preset("edm2-img512-huge")


def test_ladder_configs_change_only_the_network_of_a_preset():
    g, c = get_preset("edm2-img512-s"), get_preset("edm2-img512-s", config="C")
    assert (g.config, c.config) == ("G", "C")
    assert c.network == {**g.network, "ablation": "C", "dropout": 0.1}
    assert c.training == g.training  # the training recipe per letter is the training config's job
