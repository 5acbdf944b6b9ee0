"""PowerFunctionEMA: online tracking reproduces the power-function profile; state and snapshot files."""

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from edm2lib import files
from edm2lib.phema.ema import PowerFunctionEMA
from edm2lib.phema.profiles import gamma_to_sigma_rel, sigma_rel_to_gamma


class Toy(torch.nn.Module):
    def __init__(self, n: int = 4):
        super().__init__()
        self.lin = torch.nn.Linear(n, 3)
        self.norm = torch.nn.BatchNorm1d(3)  # has buffers: running_mean/var, num_batches_tracked

    def forward(self, x):
        return self.norm(self.lin(x))


def test_first_update_copies_the_network():
    net = Toy()
    ema = PowerFunctionEMA(net, sigma_rels=(0.05, 0.1))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update(net, cur_nimg=8, batch_size=8)
    for tracked in ema.emas:
        for t, p in zip(tracked, net.parameters()):
            assert torch.equal(t, p)


@pytest.mark.parametrize("sigma_rel", [0.05, 0.1, 0.2])
def test_per_step_updates_integrate_the_power_function_profile(sigma_rel):
    # Parameter vector = one-hot of the step index: the EMA then holds each step's averaging weight.
    steps, batch = 400, 16
    net = torch.nn.Module()
    net.w = torch.nn.Parameter(torch.zeros(steps))
    ema = PowerFunctionEMA(net, sigma_rels=[sigma_rel])
    for j in range(steps):
        with torch.no_grad():
            net.w.zero_()
            net.w[j] = 1.0
        ema.update(net, cur_nimg=(j + 1) * batch, batch_size=batch)
    weights = ema.emas[0][0].double().numpy()
    gamma = sigma_rel_to_gamma(sigma_rel)
    t = np.arange(steps + 1) * batch
    # integral of p(tau) = (gamma+1) tau^gamma / T^(gamma+1) over each step's interval ((j-1)B, jB]
    expected = np.diff((t / t[-1]) ** (gamma + 1))
    np.testing.assert_allclose(weights, expected, rtol=1e-4, atol=1e-7)  # fp32 EMA state
    assert weights.sum() == pytest.approx(1.0, abs=1e-5)
    # std of the averaging weights relative to the training time is sigma_rel (EDM2 eq. 3)
    mid = (t[1:] - batch / 2) / t[-1]
    mean = (weights * mid).sum()
    rel_std = np.sqrt((weights * (mid - mean) ** 2).sum())
    assert rel_std == pytest.approx(sigma_rel, rel=2e-3)
    assert gamma_to_sigma_rel(gamma) == pytest.approx(sigma_rel, abs=1e-12)


def test_low_precision_network_keeps_fp32_ema():
    net = Toy().to(torch.bfloat16)
    ema = PowerFunctionEMA(net)
    ema.update(net, 4, 4)
    ema.update(net, 8, 4)
    assert all(t.dtype == torch.float32 for tracked in ema.emas for t in tracked)


def test_state_dict_round_trips_through_safetensors(tmp_path):
    net = Toy()
    ema = PowerFunctionEMA(net, sigma_rels=(0.05, 0.1))
    for step in range(1, 6):
        with torch.no_grad():
            net.lin.weight.normal_()
        ema.update(net, step * 4, 4)
    save_file(ema.state_dict(), tmp_path / "ema.safetensors")
    other = PowerFunctionEMA(Toy(), sigma_rels=(0.05, 0.1))
    other.load_state_dict(load_file(tmp_path / "ema.safetensors"))
    for a, b in zip(ema.emas, other.emas):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="sigma_rels"):
        PowerFunctionEMA(Toy(), sigma_rels=(0.05,)).load_state_dict(ema.state_dict())
    with pytest.raises(ValueError, match="keys differ"):
        PowerFunctionEMA(torch.nn.Linear(4, 3), sigma_rels=(0.05, 0.1)).load_state_dict(ema.state_dict())


def test_snapshot_has_ema_parameters_and_live_buffers(tmp_path):
    net = Toy()
    ema = PowerFunctionEMA(net, sigma_rels=(0.05, 0.1))
    net(torch.randn(8, 4))  # updates BatchNorm running stats (buffers)
    with torch.no_grad():
        net.lin.bias.fill_(3.0)
    ema.update(net, 100, 50)  # beta > 0: EMA differs from the live net
    sd = ema.snapshot_state_dict(net, 0.1)
    assert list(sd) == list(net.state_dict())
    assert torch.equal(sd["norm.running_mean"], net.norm.running_mean)
    assert torch.equal(sd["lin.bias"], ema.emas[1][1]) and not torch.equal(sd["lin.bias"], net.lin.bias)

    paths = ema.save_snapshots(tmp_path, net, nimg=100, config={"n": 4}, encoder={"kind": "pixels"})
    assert [p.name for p in paths] == [
        "snapshot-000000000100-0.050.safetensors",
        "snapshot-000000000100-0.100.safetensors",
    ]
    meta = files.read_network_meta(paths[1])
    assert meta["nimg"] == 100 and meta["sigma_rel"] == 0.1 and meta["config"] == {"n": 4}
    assert meta["gamma"] == pytest.approx(6.9372, abs=1e-4) and meta["encoder"] == {"kind": "pixels"}
    assert meta["buffers"] == ["norm.running_mean", "norm.running_var", "norm.num_batches_tracked"]
    with safe_open(str(paths[1]), framework="pt") as f:
        assert f.get_tensor("lin.weight").dtype == torch.float16
        assert f.get_tensor("norm.num_batches_tracked").dtype == torch.int64
        torch.testing.assert_close(f.get_tensor("lin.bias").float(), sd["lin.bias"], atol=2e-3, rtol=1e-3)


def test_bad_sigma_rels_are_rejected():
    with pytest.raises(ValueError, match=r"0\.3"):
        PowerFunctionEMA(Toy(), sigma_rels=(0.05, 0.3))
    with pytest.raises(ValueError, match="distinct"):
        PowerFunctionEMA(Toy(), sigma_rels=(0.05, 0.05))
    with pytest.raises(ValueError, match="not tracked"):
        PowerFunctionEMA(Toy()).snapshot_state_dict(Toy(), 0.07)
