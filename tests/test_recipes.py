"""Training recipes per ladder config: the values of EDM2 Figs. 16-22, overridable, bad letters refused."""

import json
import math

import pytest

from edm2lib.nn.layers import MPConv
from edm2lib.nn.networks import Precond
from edm2lib.nn.presets import get_preset
from edm2lib.training import checkpoint, loop
from edm2lib.training.config import TrainConfig
from edm2lib.training.loss import learning_rate
from training_fixtures import tiny_config

BASE = {"data": "latents.h5", "run_dir": "runs/x", "preset": "edm2-img512-s"}
T_REF_S = 70000 * 2048

# (batch, lr_ref, t_ref, beta2, P_mean, P_std, loss_scaling, dropout) at img512-S, EDM2 Figs. 16-22.
PAPER = {
    "A": (4096, 1e-4, math.inf, 0.999, -1.2, 1.2, 100, 0.1),
    "B": (2048, 2e-4, math.inf, 0.99, -0.4, 1.0, 100, 0.1),
    "C": (2048, 2e-4, math.inf, 0.99, -0.4, 1.0, 100, 0.1),
    "D": (2048, 0.01, math.inf, 0.99, -0.4, 1.0, 1, 0.1),
    "E": (2048, 0.01, T_REF_S, 0.99, -0.4, 1.0, 1, 0.1),
    "F": (2048, 0.01, T_REF_S, 0.99, -0.4, 1.0, 1, 0.1),
    "G": (2048, 0.01, T_REF_S, 0.99, -0.4, 1.0, 1, 0.0),
}


@pytest.mark.parametrize("letter", sorted(PAPER))
def test_each_letter_selects_the_papers_recipe_and_network(letter):
    cfg = TrainConfig.from_dict({**BASE, "ablation": letter})
    got = (cfg.batch, cfg.lr_ref, cfg.t_ref, cfg.adam_betas[1], cfg.P_mean, cfg.P_std, cfg.loss_scaling)
    assert got == PAPER[letter][:7]
    assert cfg.network["dropout"] == PAPER[letter][7] and cfg.adam_betas[0] == 0.9
    assert cfg.network.get("ablation", "G") == letter
    assert cfg.network == get_preset("edm2-img512-s", config=letter).network
    assert cfg.duration == 2048 * 2**20  # 2^31 images for every config (EDM2 Sec. 2)


def test_g_is_the_preset_unchanged_and_every_value_can_be_overridden():
    assert TrainConfig.from_dict(BASE).to_dict() == TrainConfig.from_dict({**BASE, "ablation": "G"}).to_dict()
    cfg = TrainConfig.from_dict(
        {**BASE, "ablation": "A", "lr_ref": 3e-4, "adam_betas": [0.8, 0.95], "t_ref": 1024, "batch": 1024}
    )
    assert (cfg.lr_ref, cfg.adam_betas, cfg.t_ref, cfg.batch) == (3e-4, (0.8, 0.95), 1024, 1024)
    assert cfg.loss_scaling == 100 and cfg.P_mean == -1.2  # the rest of A's recipe stays


def test_small_presets_scale_a_relative_to_the_preset():
    demo = get_preset("edm2-demo")
    cfg = TrainConfig.from_dict({"data": "x.h5", "run_dir": "r", "preset": "edm2-demo", "ablation": "A"})
    assert cfg.batch == 2 * demo.batch and cfg.duration % cfg.batch == 0
    assert cfg.network["attn_resolutions"] == [16, 8]


def test_infinite_t_ref_round_trips_and_means_a_constant_rate_after_the_warm_up():
    cfg = TrainConfig.from_dict({**BASE, "ablation": "C"})
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again.to_dict() == cfg.to_dict() and again.t_ref == math.inf
    assert learning_rate(10**10, 2e-4, math.inf, 10_000_000) == 2e-4
    assert learning_rate(5_000_000, 2e-4, math.inf, 10_000_000) == pytest.approx(1e-4)


def test_bad_letters_and_contradicting_keys_fail_validation_by_name():
    with pytest.raises(
        ValueError, match=r"config key 'ablation' must be one of A, B, C, D, E, F, G, got 'H'"
    ):
        TrainConfig.from_dict({**BASE, "ablation": "H"})
    with pytest.raises(ValueError, match=r"'network.ablation' = 'C' contradicts 'ablation' = 'E'"):
        TrainConfig.from_dict({**BASE, "ablation": "E", "network": {"ablation": "C"}})
    with pytest.raises(ValueError, match=r"config key 'adam_betas' must be two values in \[0, 1\)"):
        TrainConfig.from_dict({**BASE, "adam_betas": [0.9, 1.0]})
    with pytest.raises(ValueError, match=r"config key 't_ref' must be positive"):
        TrainConfig.from_dict({**BASE, "t_ref": 0})


@pytest.mark.parametrize("letter", ["A", "D", "E"])
def test_the_training_loop_trains_each_kind_of_config(tmp_path, one_thread, letter):
    overrides = dict(ablation=letter, adam_betas=[0.9, 0.999], duration=8 * 6, t_ref=math.inf)
    summary = loop.train(tiny_config(tmp_path, **overrides))
    assert math.isfinite(summary["last_status"]["loss"]) and summary["nonfinite_grads"] == 0
    saved = checkpoint.load(checkpoint.find_latest_valid(tmp_path / "run"))
    assert saved["state"]["network"]["ablation"] == letter
    net = Precond(**saved["state"]["network"])
    net.load_state_dict(saved["net"])
    rms = [
        m.weight.detach().flatten(1).square().mean(1).sqrt() for m in net.modules() if isinstance(m, MPConv)
    ]
    worst = max((r - 1).abs().max().item() for r in rms)
    assert (worst < 0.05) == (letter == "E")  # forced weight normalisation through the real loop
