"""CONFIG A's traditional EMA: EDM's half-life and ramp-up, its profile, checkpoints, snapshots, training."""

import math
import shutil

import numpy as np
import pytest
import torch

from edm2lib import files
from edm2lib.phema.ema import PowerFunctionEMA, TraditionalEMA
from edm2lib.phema.profiles import traditional_sigma_rel, traditional_weights
from edm2lib.phema.reconstruct import find_snapshots
from edm2lib.training import checkpoint, loop
from edm2lib.training.config import TrainConfig
from training_fixtures import tiny_config


class Scalar(torch.nn.Module):
    def __init__(self, value: float = 0.0):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([value], dtype=torch.float64))
        self.register_buffer("count", torch.tensor(0))


def feed(ema, net, values, batch):
    """Set the parameter to each value in turn and update after each 'step'; the EMA after every step."""
    out, nimg = [], 0
    for v in values:
        net.w.data.fill_(v)
        nimg += batch
        ema.update(net, nimg, batch)
        out.append(ema.ema[0].item())
    return np.array(out)


def test_ramp_up_beta_follows_the_edm_formula():
    """beta_k = 0.5 ** (batch / max(min(H, 0.05 t_k), 1e-8)), t_k = images before step k (EDM)."""
    batch, halflife, values = 16, 400.0, np.random.default_rng(0).normal(size=200)
    net = Scalar()
    got = feed(TraditionalEMA(net, halflife, 0.05), net, values, batch)
    expected, ema = [], 0.0
    for k, v in enumerate(values):
        h = min(halflife, 0.05 * k * batch)
        beta = 0.5 ** (batch / max(h, 1e-8))
        ema = beta * ema + (1 - beta) * v
        expected.append(ema)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)  # the EMA itself is fp32
    assert got[0] == pytest.approx(values[0])  # the first step copies the network (half-life 0)


def test_a_constant_stream_gives_the_constant():
    net = Scalar(3.25)
    ema = TraditionalEMA(net, 1000.0, 0.05)
    got = feed(ema, net, [3.25] * 100, 32)
    np.testing.assert_allclose(got, 3.25, rtol=1e-6)


@pytest.mark.parametrize("batch", [8, 64])
def test_after_one_half_life_of_a_step_change_the_average_moved_halfway(batch):
    halflife = 4096.0
    net = Scalar()
    ema = TraditionalEMA(net, halflife, rampup_ratio=None)
    feed(ema, net, [0.0] * 50, batch)
    after = feed(ema, net, [1.0] * int(halflife // batch), batch)
    assert after[-1] == pytest.approx(0.5, abs=1e-5)
    after = feed(ema, net, [1.0] * int(halflife // batch), batch)  # two half-lives: 3/4
    assert after[-1] == pytest.approx(0.75, abs=1e-5)


def test_profile_weights_are_what_the_updates_compute_and_give_the_papers_sigma_rel():
    batch, halflife, values = 32, 2000.0, np.random.default_rng(1).normal(size=300)
    net = Scalar()
    got = feed(TraditionalEMA(net, halflife, 0.05), net, values, batch)[-1]
    w = traditional_weights(len(values) * batch, batch, halflife, 0.05)
    assert w.sum() == pytest.approx(1.0) and got == pytest.approx(np.dot(w, values), abs=1e-5)
    # EDM2 Fig. 16: half-life 50 Mimg over 2^31 images is sigma_rel ~ 0.034 (about H / ln 2 / t)
    a = traditional_sigma_rel(2**31, 2**16, 50e6, 0.05)  # a coarser batch than 4096: same profile
    assert a == pytest.approx(50e6 / math.log(2) / 2**31, rel=0.02) and round(a, 3) == 0.034


def test_checkpoint_state_round_trips_and_refuses_another_kind():
    net = Scalar(1.0)
    ema = TraditionalEMA(net, 500.0, 0.05)
    feed(ema, net, [1.0, 2.0, 3.0], 8)
    other = TraditionalEMA(Scalar(), 500.0, 0.05)
    other.load_state_dict(ema.state_dict())
    assert torch.equal(other.ema[0], ema.ema[0])
    with pytest.raises(ValueError, match=r"halflife_nimg 500\.0, this tracker 600\.0"):
        TraditionalEMA(Scalar(), 600.0, 0.05).load_state_dict(ema.state_dict())
    with pytest.raises(ValueError, match="EMA state keys differ"):
        other.load_state_dict(PowerFunctionEMA(Scalar()).state_dict())


def test_snapshot_records_kind_and_half_life_and_is_no_reconstruction_input(tmp_path):
    net = Scalar(2.0)
    net.count.fill_(7)
    ema = TraditionalEMA(net, 500.0, 0.05)
    feed(ema, net, [2.0] * 4, 8)
    (path,) = ema.save_snapshots(tmp_path, net, 32, config={}, batch_size=8, encoder="pixels")
    assert path.name == files.traditional_snapshot_name(32) and not files.is_snapshot_name(path.name)
    meta = files.read_network_meta(path)
    assert (meta["ema"], meta["halflife_nimg"], meta["rampup_ratio"], meta["nimg"]) == (
        "traditional",
        500.0,
        0.05,
        32,
    )
    assert "sigma_rel" not in meta and meta["sigma_rel_equivalent"] == pytest.approx(ema.sigma_rel(32, 8))
    with pytest.raises(FileNotFoundError):
        find_snapshots(tmp_path)  # post-hoc reconstruction never sees it


def test_training_config_a_recipe_picks_the_traditional_ema_and_power_identities_are_unchanged():
    base = {"data": "latents.h5", "run_dir": "r", "preset": "edm2-img512-s"}
    a = TrainConfig.from_dict({**base, "ablation": "A"})
    assert (a.ema, a.ema_halflife_nimg, a.ema_rampup_ratio) == ("traditional", 50_000_000, 0.05)
    g = TrainConfig.from_dict(base)
    assert g.ema == "power" and not {"ema", "ema_halflife_nimg"} & set(g.identity())
    assert a.identity()["ema_halflife_nimg"] == 50_000_000
    changed = TrainConfig.from_dict({**base, "ablation": "A", "ema_halflife_nimg": 10**7})
    assert changed.identity_hash() != a.identity_hash()
    with pytest.raises(ValueError, match=r"config key 'ema' must be one of \('power', 'traditional'\)"):
        TrainConfig.from_dict({**base, "ema": "karras"})


def test_training_loop_writes_traditional_snapshots_and_resumes_them(tmp_path, one_thread):
    cfg = tiny_config(
        tmp_path, duration=8 * 6, snapshot_nimg=16, checkpoint_nimg=16, ema="traditional",
        ema_halflife_nimg=40, telemetry_nimg=24, telemetry_probe=4,
    )  # fmt: skip
    loop.train(cfg)
    snaps = tmp_path / "run" / "snapshots"
    names = sorted(p.name for p in snaps.iterdir())
    assert names == [files.traditional_snapshot_name(n) for n in (16, 32, 48)]
    final = snaps / names[-1]
    first = final.read_bytes()
    shutil.rmtree(tmp_path / "run" / "checkpoints" / f"ckpt-{48:012d}")
    final.unlink()
    loop.train(cfg)  # resumes at 32 with the checkpointed EMA: the same final average
    assert final.read_bytes() == first
    saved = checkpoint.load(checkpoint.find_latest_valid(tmp_path / "run"))
    assert "halflife_nimg" in saved["ema"]
