"""Inception and DINOv2 detectors at random init: published key names, loaders, resize formulas, shapes."""

import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from edm2lib.files import sha256_file
from edm2lib.metrics import WEIGHTS, load_detector, load_nvidia_inception_pkl
from edm2lib.metrics.dinov2 import DINOv2
from edm2lib.metrics.inception import InceptionV3, resize_tf1_bilinear
from edm2lib.metrics.weights import WeightsSpec, load_state_dict_strict, load_weights_file

# --- the published state-dict layouts -------------------------------------------------------------------
# pt_inception-2015-12-05-6726825d.pth (pytorch-fid / torch-fidelity): torchvision Inception3 names, no aux.
INCEPTION_STEM = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"]
A = [
    "branch1x1",
    "branch5x5_1",
    "branch5x5_2",
    "branch3x3dbl_1",
    "branch3x3dbl_2",
    "branch3x3dbl_3",
    "branch_pool",
]
B = ["branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"]
C = [
    "branch1x1",
    *[f"branch7x7_{i}" for i in (1, 2, 3)],
    *[f"branch7x7dbl_{i}" for i in range(1, 6)],
    "branch_pool",
]
D = ["branch3x3_1", "branch3x3_2", *[f"branch7x7x3_{i}" for i in range(1, 5)]]
E = ["branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1", "branch3x3dbl_2"]
E += ["branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"]
INCEPTION_MIXED = {
    "5b": A,
    "5c": A,
    "5d": A,
    "6a": B,
    "6b": C,
    "6c": C,
    "6d": C,
    "6e": C,
    "7a": D,
    "7b": E,
    "7c": E,
}
BASIC_CONV = ["conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"]
INCEPTION_KEYS = (
    [f"{m}.{k}" for m in INCEPTION_STEM for k in BASIC_CONV]
    + [f"Mixed_{b}.{br}.{k}" for b, brs in INCEPTION_MIXED.items() for br in brs for k in BASIC_CONV]
    + ["fc.weight", "fc.bias"]
)
# dinov2_vitl14_pretrain.pth (torch.hub dinov2_vitl14): 343 tensors
DINO_TOP = ["cls_token", "pos_embed", "mask_token", "patch_embed.proj.weight", "patch_embed.proj.bias"]
DINO_BLOCK = ["norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"]
DINO_KEYS = (
    DINO_TOP
    + [f"blocks.{n}.{m}.{p}" for n in range(24) for m in DINO_BLOCK for p in ("weight", "bias")]
    + [f"blocks.{n}.{ls}.gamma" for n in range(24) for ls in ("ls1", "ls2")]
    + ["norm.weight", "norm.bias"]
)
TINY_DINO = {"embed_dim": 32, "depth": 2, "num_heads": 2}


def images(n, h, w, seed=0):
    return torch.randint(
        0, 256, (n, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


@pytest.fixture(scope="module")
def inception():
    return load_detector("inception", allow_random=True, download=False)


@pytest.fixture(scope="module")
def tiny_dino():
    return load_detector("dinov2", allow_random=True, download=False, **TINY_DINO)


def test_inception_has_exactly_the_published_keys_and_parameter_count():
    with torch.device("meta"):
        net = InceptionV3()
    keys = [k for k in net.state_dict() if not k.endswith("num_batches_tracked")]
    assert len(INCEPTION_KEYS) == 94 * 5 + 2
    assert sorted(keys) == sorted(INCEPTION_KEYS)
    assert (
        sum(p.numel() for p in net.parameters()) == 23_850_960
    )  # torchvision Inception3 - aux, 1008 classes
    state = net.state_dict()
    assert state["Conv2d_1a_3x3.conv.weight"].shape == (32, 3, 3, 3)
    assert state["Mixed_7c.branch_pool.conv.weight"].shape == (192, 2048, 1, 1)
    assert state["fc.weight"].shape == (1008, 2048)


def test_dinov2_vitl14_has_exactly_the_published_keys_and_parameter_count():
    with torch.device("meta"):
        net = DINOv2()
    state = net.state_dict()
    assert len(DINO_KEYS) == 343 and sorted(state) == sorted(DINO_KEYS)
    assert sum(p.numel() for p in net.parameters()) == 304_368_640
    assert state["pos_embed"].shape == (1, 1370, 1024)
    assert state["patch_embed.proj.weight"].shape == (1024, 3, 14, 14)
    assert state["blocks.23.attn.qkv.weight"].shape == (3072, 1024)
    assert state["blocks.0.mlp.fc1.weight"].shape == (4096, 1024)


@pytest.mark.parametrize("size", [32, 64, 299, 512])
def test_inception_gives_2048_finite_features_for_any_input_size(inception, size):
    n = 2 if size == 64 else 1
    f = inception(images(n, size, size, seed=size))
    assert f.shape == (n, 2048) and f.dtype == torch.float32 and torch.isfinite(f).all()
    assert (f >= 0).all() and f.std() > 0  # average of ReLU outputs, not constant


@pytest.mark.parametrize("size", [32, 224, 512])
def test_tiny_dinov2_gives_class_token_features_for_any_input_size(tiny_dino, size):
    f = tiny_dino(images(2, size, size + 8, seed=size))
    assert f.shape == (2, 32) and torch.isfinite(f).all()
    assert f.std() > 0


def test_full_vitl14_random_init_gives_1024_features():
    det = load_detector("dinov2", allow_random=True, download=False)
    f = det(images(1, 64, 64))
    assert det.dim == 1024 and f.shape == (1, 1024) and torch.isfinite(f).all()
    # CLS token after the final LayerNorm (weight 1, bias 0 at init): zero mean, unit variance per image
    assert abs(f.mean().item()) < 1e-4 and abs(f.var(unbiased=False).item() - 1) < 1e-3


@pytest.mark.parametrize("which", ["inception", "tiny_dino"])
def test_nhwc_numpy_and_nchw_tensor_inputs_give_identical_features(which, request):
    det = request.getfixturevalue(which)
    x = images(1, 40, 40)
    assert torch.equal(det(x.numpy()), det(x.permute(0, 3, 1, 2).contiguous()))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (torch.zeros(2, 32, 32, 3), "uint8"),
        (torch.zeros(2, 32, 32, 1, dtype=torch.uint8), "3-channel"),
        (torch.zeros(2, 4, 32, 32, dtype=torch.uint8), "3-channel"),
        (torch.zeros(32, 32, 3, dtype=torch.uint8), "4-D"),
        ([[1, 2, 3]], "uint8 tensor or numpy"),
    ],
)
def test_wrong_dtype_or_channels_raise_clear_errors(tiny_dino, bad, message):
    with pytest.raises(ValueError, match=message):
        tiny_dino(bad)


def test_random_init_identity_names_seed_and_is_deterministic(tiny_dino):
    other = load_detector("dinov2", allow_random=True, download=False, **TINY_DINO)
    x = images(1, 32, 32)
    assert torch.equal(tiny_dino(x), other(x))
    assert tiny_dino.identity["sha256"].startswith("random-init(seed=0")
    assert tiny_dino.identity["weights"] == tiny_dino.identity["sha256"]
    assert tiny_dino.identity["resize"] == "torch-bicubic-antialias-224"
    reseeded = load_detector("dinov2", allow_random=True, download=False, seed=1, **TINY_DINO)
    assert reseeded.identity["sha256"] != tiny_dino.identity["sha256"]


# --- resize formulas --------------------------------------------------------------------------------------
def tf1_resize_loop(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """TF1 resize_bilinear, align_corners=False, written out pixel by pixel: src = dst * in / out, with the
    scale and source coordinate in float32 as TF computes them, the interpolation in float64."""
    h, w = img.shape
    out = np.zeros((out_h, out_w))
    for i in range(out_h):
        y = float(np.float32(i) * (np.float32(h) / np.float32(out_h)))
        y0, y1 = int(np.floor(y)), min(int(np.ceil(y)), h - 1)
        for j in range(out_w):
            x = float(np.float32(j) * (np.float32(w) / np.float32(out_w)))
            x0, x1 = int(np.floor(x)), min(int(np.ceil(x)), w - 1)
            top = img[y0, x0] + (img[y0, x1] - img[y0, x0]) * (x - x0)
            bottom = img[y1, x0] + (img[y1, x1] - img[y1, x0]) * (x - x0)
            out[i, j] = top + (bottom - top) * (y - y0)
    return out


@pytest.mark.parametrize(("src", "dst"), [((5, 7), (11, 4)), ((13, 9), (4, 6)), ((32, 32), (61, 61))])
def test_tf1_resize_matches_the_formula_written_pixel_by_pixel(src, dst):
    img = np.random.default_rng(0).integers(0, 256, src).astype(np.float64)
    ours = resize_tf1_bilinear(torch.tensor(img, dtype=torch.float32)[None, None], dst)[0, 0].double().numpy()
    assert np.abs(ours - tf1_resize_loop(img, *dst)).max() < 1e-4  # float32 vs float64 on a 0..255 scale


def test_tf1_resize_equals_nvidia_shifted_grid_sample_form():
    # NVIDIA's detector: identity affine grid translated by 1/in - 1/out, bilinear, border padding
    x = torch.randint(0, 256, (1, 3, 64, 48), generator=torch.Generator().manual_seed(1)).float()
    theta = torch.tensor([[[1.0, 0.0, 1 / 48 - 1 / 299], [0.0, 1.0, 1 / 64 - 1 / 299]]])
    grid = F.affine_grid(theta, [1, 3, 299, 299], align_corners=False)
    nvidia = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    assert (resize_tf1_bilinear(x, (299, 299)) - nvidia).abs().max() < 5e-3
    # ...and differs a lot from the half-pixel convention of F.interpolate (pytorch-fid)
    assert (F.interpolate(x, (299, 299), mode="bilinear") - nvidia).abs().mean() > 10


def test_tf1_resize_to_the_same_size_is_the_identity():
    x = torch.rand(1, 3, 17, 23) * 255
    assert torch.equal(resize_tf1_bilinear(x, (17, 23)), x)


def test_dinov2_pos_embed_uses_the_plus_0_1_scale_factor_at_224():
    torch.manual_seed(0)
    net = DINOv2(embed_dim=8, depth=1, num_heads=2).reset_random(3)
    grid = net.pos_embed[:, 1:].reshape(1, 37, 37, 8).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, scale_factor=(16.1 / 37, 16.1 / 37), mode="bicubic")
    ours = net.interpolate_pos_embed(16, 16)
    assert ours.shape == (1, 257, 8)
    assert torch.equal(ours[:, 0], net.pos_embed[:, 0])
    assert torch.allclose(ours[0, 1:].T.reshape(1, 8, 16, 16), expected, atol=0, rtol=0)
    by_size = F.interpolate(grid, size=(16, 16), mode="bicubic")  # what HF transformers does now
    assert (by_size - expected).abs().max() > 1e-3
    assert torch.equal(net.interpolate_pos_embed(37, 37), net.pos_embed)  # native 518 input: unchanged


# --- loaders ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inception_file(tmp_path_factory, inception):
    path = tmp_path_factory.mktemp("w") / "pt_inception-2015-12-05-6726825d.pth"
    state = {k: v for k, v in inception.net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, path)  # like the published file: plain dict, BatchNorm counters need not be there
    return path


def test_inception_loader_accepts_published_keys_and_reproduces_features(
    inception, inception_file, monkeypatch
):
    spec = WEIGHTS["inception"]
    monkeypatch.setitem(
        WEIGHTS, "inception", WeightsSpec(spec.filename, spec.url, sha256_file(inception_file))
    )
    det = load_detector("inception", weights=inception_file)
    x = images(1, 48, 48)
    assert torch.equal(det(x), inception(x))
    assert det.identity == {
        "name": "inception",
        "arch": "inception-v3-tf-2015-12-05",
        "weights": "pt_inception-2015-12-05-6726825d.pth",
        "sha256": sha256_file(inception_file),
        "resize": "tf1-bilinear-299",
    }


def test_inception_file_with_unpublished_checksum_is_refused_unless_verify_false(inception_file):
    with pytest.raises(ValueError, match="does not match the published 6726825d0af5"):
        load_detector("inception", weights=inception_file)
    det = load_detector("inception", weights=inception_file, verify=False)
    assert det.identity["sha256"] == sha256_file(inception_file)


def test_loader_rejects_renamed_missing_or_extra_keys_naming_them(inception):
    state = dict(inception.net.state_dict())
    state["Mixed_5b.branch1x1.conv.kernel"] = state.pop("Mixed_5b.branch1x1.conv.weight")
    state["AuxLogits.fc.weight"] = torch.zeros(1000, 768)
    net = InceptionV3().reset_random()
    with pytest.raises(ValueError) as err:
        load_state_dict_strict(net, state, "bad.pth")
    text = str(err.value)
    assert "missing (1): Mixed_5b.branch1x1.conv.weight" in text
    assert "unexpected (2): AuxLogits.fc.weight, Mixed_5b.branch1x1.conv.kernel" in text


def test_dinov2_loader_accepts_published_keys_and_rejects_hf_names_and_shapes(tmp_path, tiny_dino):
    path = tmp_path / "dino.pth"
    torch.save(tiny_dino.net.state_dict(), path)
    fresh = DINOv2(**TINY_DINO).reset_random(5)
    load_weights_file(fresh, path)
    x = images(1, 32, 32).permute(0, 3, 1, 2).float()
    assert torch.equal(fresh(x), tiny_dino.net(x))
    hf = {k.replace("blocks.", "encoder.layer."): v for k, v in tiny_dino.net.state_dict().items()}
    with pytest.raises(ValueError, match=r"missing \(28\): blocks\.0\.attn\.proj\.bias"):
        load_state_dict_strict(fresh, hf, "hf.pth")
    wrong = dict(tiny_dino.net.state_dict(), pos_embed=torch.zeros(1, 257, 32))
    with pytest.raises(ValueError, match="wrong shape \\(1\\): pos_embed"):
        load_state_dict_strict(fresh, wrong, "wrong.pth")


class Exploit:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_weights_loader_never_unpickles_code(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"fc.weight": Exploit()}, path)
    with pytest.raises(ValueError, match="not a weights-only torch state dict"):
        load_weights_file(InceptionV3(), path)
    assert "must never run" not in capsys.readouterr().out


class FakeNvidiaInception(torch.nn.Module):
    """Stands in for NVIDIA's pickled detector: uint8 NCHW in, features out with return_features=True."""

    def forward(self, x, return_features=False):
        assert x.dtype == torch.uint8 and return_features
        return x.float().mean(dim=(2, 3)).repeat(1, 2048 // 3 + 1)[:, :2048]


def test_nvidia_pickle_is_refused_unless_trusted_and_then_wrapped(tmp_path):
    path = tmp_path / "inception-2015-12-05.pkl"
    path.write_bytes(pickle.dumps(FakeNvidiaInception()))
    with pytest.raises(ValueError, match="refusing to unpickle"):
        load_nvidia_inception_pkl(path)
    det = load_nvidia_inception_pkl(path, trusted=True)
    x = images(2, 16, 16)
    assert det(x).shape == (2, 2048)
    assert det.identity["sha256"] == sha256_file(path) and det.identity["resize"] == "nvidia-internal"


def test_device_defaults_to_cpu_without_cuda_and_cuda_request_fails_clearly(tiny_dino):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the fallback path is not reachable")
    assert tiny_dino.device == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        load_detector("dinov2", allow_random=True, download=False, device="cuda", **TINY_DINO)


def test_small_input_inception_is_random_init_only_and_says_so():
    small = load_detector("inception", allow_random=True, download=False, resolution=75)
    assert small.identity["resize"] == "tf1-bilinear-75" and small.identity["weights"].startswith(
        "random-init"
    )
    features = small(torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8))
    assert features.shape == (2, 2048) and torch.isfinite(features).all()
    with pytest.raises(ValueError, match="exist for random-init tests only"):
        load_detector("inception", resolution=75)
    with pytest.raises(ValueError, match=r"resolution 74 outside \[75, 299\]"):
        load_detector("inception", allow_random=True, download=False, resolution=74)
    with pytest.raises(ValueError, match="inception: unknown architecture option"):
        load_detector("inception", allow_random=True, download=False, depth=2)
