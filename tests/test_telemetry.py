"""Magnitude telemetry (EDM2 App. A.6, Eq. 3, Fig. 15): buckets, statistic, training hook, plot."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from edm2lib import files
from edm2lib.data.dataset import open_dataset
from edm2lib.nn.networks import Precond
from edm2lib.training import telemetry
from edm2lib.training.loop import train
from training_fixtures import TINY_NET, tiny_config, write_images


def tiny_net(seed: int = 0) -> Precond:
    torch.manual_seed(seed)
    return Precond(img_resolution=8, img_channels=3, label_dim=3, **TINY_NET)


def test_buckets_follow_the_state_dict_names():
    assert telemetry.bucket_of("unet.enc.64x64_conv") == "in"
    assert telemetry.bucket_of("unet.enc.16x16_block0.conv_res0") == "enc-16x16"
    assert telemetry.bucket_of("unet.enc.32x32_down.emb_linear") == "enc-32x32"
    assert telemetry.bucket_of("unet.dec.8x8_in0.attn_qkv") == "dec-8x8"
    assert telemetry.bucket_of("unet.out_conv") == "out"
    assert telemetry.bucket_of("unet.emb_noise") == "emb"
    assert telemetry.bucket_of("logvar_linear") is None
    names = set(telemetry.measured_layers(tiny_net()))
    assert "unet.enc.8x8_block0.conv_res0" in names and "unet.dec.4x4_in0.attn_proj" in names
    assert not any(n.startswith("logvar") for n in names)


def test_weight_magnitude_is_the_per_channel_rms_of_the_stored_weights():
    net = tiny_net()
    before = telemetry.weight_magnitudes(net)
    assert 0.8 < before["enc-8x8"]["mean"] < 1.2  # N(0, 1) init: unit RMS per output channel
    with torch.no_grad():
        w = net.unet.enc["8x8_block0"].conv_res1.weight
        w[0] *= 5  # one output channel grows fivefold
        expected = float(w[0].square().mean().sqrt())
    after = telemetry.weight_magnitudes(net)
    assert after["enc-8x8"]["max"] == pytest.approx(expected, rel=1e-6)
    assert after["dec-8x8"] == before["dec-8x8"]


def test_activation_magnitude_is_the_rms_over_probe_set_and_positions(tmp_path):
    dataset = open_dataset(write_images(tmp_path / "images.h5"))
    probe = telemetry.make_probe(dataset, size=10, seed=3, P_mean=-0.4, P_std=1.0)
    net = tiny_net()
    layers = {n: m for n, m in telemetry.measured_layers(net).items() if telemetry.bucket_of(n) == "enc-8x8"}
    assert len(layers) >= 3  # conv_res0, emb_linear, conv_res1
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    handles = [
        m.register_forward_hook(lambda m, i, o, n=n: seen[n].append(o.detach())) for n, m in layers.items()
    ]
    stats = telemetry.activation_magnitudes(net, probe, batch=4)  # 3 batches: 4 + 4 + 2
    for handle in handles:
        handle.remove()
    per_feature = []
    for outputs in seen.values():
        h = torch.cat(outputs)
        assert h.shape[0] == 10
        h = h.reshape(h.shape[0], h.shape[1], -1)
        per_feature.append(h.square().mean(dim=(0, 2)).sqrt())  # EDM2 Eq. 3 per feature
    per_feature = torch.cat(per_feature)
    assert stats["enc-8x8"]["max"] == pytest.approx(float(per_feature.max()), rel=1e-5)
    assert stats["enc-8x8"]["mean"] == pytest.approx(float(per_feature.mean()), rel=1e-5)
    assert net.training  # restored


def test_probe_is_a_fixed_function_of_its_seed(tmp_path):
    dataset = open_dataset(write_images(tmp_path / "images.h5"))
    a = telemetry.make_probe(dataset, 6, seed=1, P_mean=-0.4, P_std=1.0)
    b = telemetry.make_probe(dataset, 6, seed=1, P_mean=-0.4, P_std=1.0)
    c = telemetry.make_probe(dataset, 6, seed=2, P_mean=-0.4, P_std=1.0)
    assert torch.equal(a.x, b.x) and torch.equal(a.noise, b.noise) and torch.equal(a.sigma, b.sigma)
    assert not torch.equal(a.noise, c.noise)
    with pytest.raises(ValueError, match="probe size"):
        telemetry.make_probe(dataset, 0, seed=1, P_mean=-0.4, P_std=1.0)


def test_training_appends_raw_and_ema_records_and_resumes_them(tmp_path, one_thread):
    cfg = tiny_config(tmp_path, duration=8 * 6, telemetry_nimg=16, telemetry_probe=8, checkpoint_nimg=16)
    train(cfg)
    path = tmp_path / "run" / "telemetry.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["nimg"], r["net"]) for r in records] == [(n, w) for n in (16, 32, 48) for w in ("raw", "ema")]
    assert set(records[0]["weights"]) >= {"in", "out", "emb", "enc-8x8", "enc-4x4", "dec-4x4", "dec-8x8"}
    # a kill after the last checkpoint left a torn line: the resumed run drops it (with a warning) and
    # rewrites what came after its checkpoint, so the file equals an uninterrupted run's
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:4]) + "\n" + lines[4][:30])
    shutil.rmtree(tmp_path / "run" / "checkpoints" / f"ckpt-{48:012d}")  # resume from the one at 32
    with pytest.warns(UserWarning, match="torn last line"):
        train(cfg)
    assert path.read_text().splitlines() == lines


def test_bad_line_before_the_end_is_an_error(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"nimg": 1}\nnot json\n{"nimg": 2}\n')
    with pytest.raises(ValueError, match=r"t.jsonl:2: not a JSON line"):
        files.read_jsonl(path)


def test_dynamics_plot_is_written(tmp_path):
    net = tiny_net()
    record = {"nimg": 8, "net": "ema", "activations": {"enc-8x8": {"max": 1.0, "mean": 0.5}}}
    record["weights"] = telemetry.weight_magnitudes(net)
    telemetry.plot_dynamics([record, {**record, "nimg": 16, "net": "raw"}], tmp_path / "d.png", "tiny")
    assert (tmp_path / "d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no telemetry records"):
        telemetry.plot_dynamics([], tmp_path / "e.png")
