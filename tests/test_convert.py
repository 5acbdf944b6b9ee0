"""Official-pickle import: stub pickles in the official layout convert exactly; hostile files are refused.

The pickles here are built by our own stub classes reproducing the structure in docs/official.md (never an
official file). The stub modules `torch_utils.persistence` and `dnnlib.util` exist only while a pickle is
written (monkeypatched into sys.modules) and are gone when the converter reads it.
"""

import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch

from edm2lib import files
from edm2lib.nn.networks import Precond
from edm2lib.official.convert import main, nimg_from_kimg, parse_name
from edm2lib.official.unpickler import ALLOWED_GLOBALS, UnsafePickleError, load_official_pickle


def _stub_reconstruct(meta):
    raise AssertionError("the stub reconstructor is only a pickling reference; it is never called")


class _Persistent:
    """Pickles like an official @persistent_class object: a call to _reconstruct_persistent_obj(meta)."""

    def __init__(self, class_name, state, module_src):
        self.class_name, self.state, self.module_src = class_name, state, module_src

    def __reduce__(self):
        meta = dict(type="class", version=6, module_src=self.module_src, class_name=self.class_name)
        return (_stub_reconstruct, ({**meta, "state": self.state},))


def _record(module, module_src, init_args=(), init_kwargs=None):
    state = dict(module.__dict__)
    children = {}
    for name, child in module._modules.items():
        if isinstance(child, torch.nn.ModuleDict):  # plain torch container, pickled by class reference
            container = torch.nn.ModuleDict()
            container.__dict__["_modules"] = {n: _record(c, module_src) for n, c in child._modules.items()}
            children[name] = container
        else:
            children[name] = None if child is None else _record(child, module_src)
    state.update(_modules=children, _init_args=tuple(init_args), _init_kwargs=dict(init_kwargs or {}))
    return _Persistent(type(module).__name__, state, module_src)


@pytest.fixture()
def write_official(monkeypatch, tmp_path):
    """write(path, net, encoder='pixels'|'sd-vae'): an official-layout snapshot pickle of `net` (fp16)."""
    persistence = types.ModuleType("torch_utils.persistence")
    util = types.ModuleType("dnnlib.util")
    _stub_reconstruct.__module__, _stub_reconstruct.__qualname__ = (
        persistence.__name__,
        "_reconstruct_persistent_obj",
    )
    persistence._reconstruct_persistent_obj = _stub_reconstruct
    util.EasyDict = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})
    for module in (types.ModuleType("torch_utils"), persistence, types.ModuleType("dnnlib"), util):
        monkeypatch.setitem(sys.modules, module.__name__, module)
    marker = tmp_path / "module_src_was_executed"
    module_src = f"open({str(marker)!r}, 'w').write('executed')\n"  # what exec(module_src) would do

    def write(path, net, encoder="pixels", drop_key=None):
        config = dict(net.config)
        args = [config.pop(k) for k in ("img_resolution", "img_channels", "label_dim")]
        ema = _record(net.half(), module_src, args, config)
        if drop_key is not None:
            del ema.state["_modules"]["unet"].state["_parameters"][drop_key]
        if encoder == "pixels":
            enc = _Persistent("StandardRGBEncoder", {"_init_args": (), "_init_kwargs": {}}, module_src)
        else:
            scale = np.float32(0.5) / np.array([4.17, 4.62, 3.71, 3.28], np.float32)
            bias = np.float32(0) - np.array([5.81, 3.25, 0.12, -2.15], np.float32) * scale
            state = dict(
                vae_name="stabilityai/sd-vae-ft-mse", scale=scale, bias=bias, batch_size=8, _vae=None
            )
            enc = _Persistent(
                "StabilityVAEEncoder", {**state, "_init_args": (), "_init_kwargs": {}}, module_src
            )
        loss = _Persistent("EDM2Loss", {"P_mean": -0.4, "P_std": 1.0, "sigma_data": 0.5}, module_src)
        dataset = util.EasyDict(
            class_name="training.dataset.ImageFolderDataset", path="x.zip", use_labels=True
        )
        data = util.EasyDict(encoder=enc, dataset_kwargs=dataset, loss_fn=loss, ema=ema)
        with open(path, "wb") as f:
            pickle.dump(data, f)
        return path

    write.marker = marker
    return write


@pytest.fixture()
def ref_net(tiny_reference):
    net = Precond(**tiny_reference["config"])
    net.load_state_dict(tiny_reference["state_dict"], strict=True)
    return net.eval()


def test_official_layout_pickle_converts_to_an_equivalent_network_file(
    write_official, ref_net, tiny_reference, tmp_path, monkeypatch
):
    src = write_official(tmp_path / "network-snapshot-2147483-0.135.pkl", ref_net)
    for name in ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util"):
        monkeypatch.delitem(sys.modules, name)  # the reader must not need (or import) them
    assert main([str(src), str(tmp_path / "out")]) == 0
    out = tmp_path / "out" / "network-snapshot-2147483-0.135.safetensors"
    net, meta = files.load_network(out)
    assert not write_official.marker.exists()  # module_src was never executed
    assert "torch_utils.persistence" not in sys.modules and "dnnlib.util" not in sys.modules
    assert meta["config"] == Precond(**tiny_reference["config"]).config
    assert meta["nimg"] == 2048 * 2**20 and meta["sigma_rel"] == 0.135
    g = meta["gamma"]
    assert abs(((g + 1) / ((g + 2) ** 2 * (g + 3))) ** 0.5 - 0.135) < 1e-9  # sigma_rel(gamma), EDM2 Sec. 3.1
    assert meta["encoder"] == {"kind": "pixels"}
    assert meta["buffers"] == [
        "logvar_fourier.freqs",
        "logvar_fourier.phases",
        "unet.emb_fourier.freqs",
        "unet.emb_fourier.phases",
    ]
    assert meta["loss"] == {"P_mean": -0.4, "P_std": 1.0, "sigma_data": 0.5}
    assert meta["source"].startswith("network-snapshot-2147483-0.135.pkl sha256 ")
    fp16 = ref_net.half().float().state_dict()
    for key, value in net.state_dict().items():
        assert torch.equal(value, fp16[key]), key
    x, sigma, labels = tiny_reference["x"], tiny_reference["sigma"], tiny_reference["labels"]
    with torch.no_grad():
        assert torch.equal(net(x, sigma, labels), ref_net.float()(x, sigma, labels))


def test_the_stub_layout_references_exactly_the_documented_globals(write_official, ref_net, tmp_path):
    src = write_official(tmp_path / "a.pkl", ref_net, encoder="sd-vae")
    seen = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            seen.add((module, name))
            return ALLOWED_GLOBALS[(module, name)]

    with open(src, "rb") as f:
        Recorder(f).load()
    assert seen == set(ALLOWED_GLOBALS) - {("numpy.core.multiarray", "_reconstruct")}


def test_vae_encoder_constants_are_recovered(write_official, ref_net, tmp_path):
    src = write_official(tmp_path / "phema-0134217-0.050.pkl", ref_net, encoder="sd-vae")
    assert main([str(src), str(tmp_path / "out")]) == 0
    meta = files.read_network_meta(tmp_path / "out" / "phema-0134217-0.050.safetensors")
    enc = meta["encoder"]
    assert enc["kind"] == "sd-vae" and enc["vae"] == "stabilityai/sd-vae-ft-mse"
    assert np.allclose(enc["raw_mean"], [5.81, 3.25, 0.12, -2.15], atol=1e-5)
    assert np.allclose(enc["raw_std"], [4.17, 4.62, 3.71, 3.28], atol=1e-5)
    assert (enc["final_mean"], enc["final_std"]) == (0.0, 0.5)
    assert meta["nimg"] == 128 * 2**20 and abs(meta["gamma"] - 16.9722) < 1e-3


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_global_is_refused_by_name_without_side_effects(tmp_path, capsys):
    marker = tmp_path / "pwned"
    src = tmp_path / "evil.pkl"
    src.write_bytes(pickle.dumps({"ema": _Evil(marker)}))
    with pytest.raises(UnsafePickleError, match=rf"refusing global '{os.system.__module__}\.system'"):
        load_official_pickle(src)
    assert main([str(src), str(tmp_path / "out")]) == 1
    assert "refusing global" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_builtins_eval_and_near_miss_globals_are_refused(tmp_path):
    for module, name in [
        ("builtins", "eval"),
        ("torch_utils.persistence", "persistent_class"),
        ("torch", "load"),
    ]:
        src = tmp_path / f"{name}.pkl"
        src.write_bytes(
            b"\x80\x04\x8c"
            + bytes([len(module)])
            + module.encode()
            + b"\x8c"
            + bytes([len(name)])
            + name.encode()
            + b"\x93."
        )
        with pytest.raises(UnsafePickleError, match=rf"'{module}\.{name}'"):
            load_official_pickle(src)


def test_truncated_and_non_pickle_files_are_clear_errors(write_official, ref_net, tmp_path):
    good = write_official(tmp_path / "good.pkl", ref_net).read_bytes()
    (tmp_path / "truncated.pkl").write_bytes(good[: len(good) // 2])
    (tmp_path / "text.pkl").write_text("this is not a pickle\n")
    for name in ("truncated.pkl", "text.pkl"):
        with pytest.raises(ValueError, match=rf"{name}: not a readable EDM2 snapshot pickle"):
            load_official_pickle(tmp_path / name)
        assert main([str(tmp_path / name), str(tmp_path / "out")]) == 1
    assert main([str(tmp_path / "missing.pkl"), str(tmp_path / "out")]) == 1
    assert not (tmp_path / "out").exists()


def test_weights_not_matching_the_recorded_config_name_the_keys(write_official, ref_net, tmp_path, capsys):
    src = write_official(tmp_path / "broken.pkl", ref_net, drop_key="out_gain")
    assert main([str(src), str(tmp_path / "out")]) == 1
    assert "missing ['unet.out_gain']" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_nimg_is_recovered_from_kimg_only_when_unique():
    assert nimg_from_kimg(2147483) == 2048 * 2**20
    assert nimg_from_kimg(134217) == 128 * 2**20
    assert nimg_from_kimg(0) == 0
    assert nimg_from_kimg(1023) is None  # no multiple of 1024 in [1023000, 1023999]
    assert parse_name("edm2-img512-xs-2147483-0.135.pkl")["nimg"] == 2147483648
    assert parse_name("model.pkl") == {}


def test_converted_official_raw_snapshots_feed_the_posthoc_reconstruction(
    write_official, tiny_reference, tmp_path
):
    """Issue 4: official raw snapshot pickles enter post-hoc EMA through the code-free converter."""
    from safetensors.torch import load_file

    from edm2lib.phema.profiles import posthoc_coefficients
    from edm2lib.phema.reconstruct import reconstruct

    (tmp_path / "raw").mkdir()
    layout = [(8388, 0.05), (8388, 0.10), (16777, 0.05), (16777, 0.10)]  # kimg of 8 Mi and 16 Mi images
    for i, (kimg, std) in enumerate(layout):
        net = Precond(**tiny_reference["config"])
        net.load_state_dict(tiny_reference["state_dict"])
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(1 + 0.25 * i)  # four distinguishable snapshots
        write_official(tmp_path / "raw" / f"network-snapshot-{kimg:07d}-{std:.3f}.pkl", net)
    assert main([*map(str, sorted((tmp_path / "raw").iterdir())), str(tmp_path / "snapshots")]) == 0

    [out] = reconstruct(tmp_path / "snapshots", [0.07], out_dir=tmp_path / "phema", dtype=torch.float32)
    meta = files.read_network_meta(out)
    assert (meta["nimg"], meta["sigma_rel"]) == (16 * 2**20, 0.07)
    coeffs = posthoc_coefficients([8 * 2**20] * 2 + [16 * 2**20] * 2, [0.05, 0.10] * 2, 16 * 2**20, [0.07])
    inputs = [
        load_file(str(tmp_path / "snapshots" / f"network-snapshot-{k:07d}-{s:.3f}.safetensors"))
        for k, s in layout
    ]
    result = load_file(str(out))
    expected = sum(c * x["unet.out_conv.weight"].float() for c, x in zip(coeffs[:, 0], inputs))
    torch.testing.assert_close(result["unet.out_conv.weight"], expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(result["unet.emb_fourier.freqs"], inputs[-1]["unet.emb_fourier.freqs"].float())
