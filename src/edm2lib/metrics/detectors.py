"""One interface for the feature detectors: uint8 images in, float32 [N, dim] features out, plus identity."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edm2lib import distributed
from edm2lib.files import sha256_file
from edm2lib.metrics import classifier, dinov2, inception
from edm2lib.metrics.weights import load_weights_file, resolve_weights

RANDOM_INIT = "random-init"
# the result names: EDM2's and the paper's, and the Fréchet distance in a data-specific classifier's features
METRIC = {"inception": "fid", "dinov2": "fd_dinov2", "classifier": "fd_classifier"}
ARCH = {"inception": "inception-v3-tf-2015-12-05", "dinov2": "dinov2-vitl14"}
RESIZE = {
    "inception": "tf1-bilinear-299",  # NVIDIA's / TF1's resize_bilinear, then (x-128)/128
    "dinov2": "torch-bicubic-antialias-224",  # EDM2's resize_mode='torch', then ImageNet mean/std
}
# what must agree between stats to compare them ('dataset': what a data-specific detector was trained on)
IDENTITY_KEYS = ("name", "dataset", "arch", "sha256", "resize")
MAKER = "the pipeline's `detector` rule (snakemake data/<name>/classifier.safetensors)"


def as_nchw_uint8(images: Any) -> torch.Tensor:
    """uint8 [N,H,W,3] or [N,3,H,W] (tensor or numpy) -> uint8 NCHW tensor; anything else is a ValueError."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a uint8 tensor or numpy array, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 RGB in 0..255, got dtype {images.dtype}; convert first")
    if images.ndim != 4:
        raise ValueError(f"images must be 4-D [N,H,W,3] or [N,3,H,W], got shape {tuple(images.shape)}")
    if images.shape[1] == 3:
        return images
    if images.shape[3] == 3:
        return images.permute(0, 3, 1, 2).contiguous()  # same memory layout, same kernels, same numbers
    raise ValueError(
        f"images of shape {tuple(images.shape)} have no 3-channel RGB axis (dim 1 or 3); "
        "expand grayscale to RGB first"
    )


class Detector:
    """A feature network plus its identity; `detector(images)` -> float32 [N, dim] on `device`."""

    def __init__(self, name: str, net: torch.nn.Module, dim: int, identity: dict, device=None):
        self.name = name  # 'inception' | 'dinov2'
        self.metric = METRIC.get(name, name)  # 'fid' | 'fd_dinov2'
        self.dim = dim
        self.identity = dict(identity)
        self.device = distributed.resolve_device(device)
        self.net = net.to(self.device).eval().requires_grad_(False)
        self.classes = hasattr(net, "logits")  # a classifier: `classify` gives its predicted labels

    @torch.no_grad()
    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Predicted class ids [N] from this detector's features (classifiers only)."""
        if not self.classes:
            raise ValueError(f"detector {self.name!r} is not a classifier; it predicts no labels")
        return self.net.logits(features.to(self.device)).argmax(1)

    def __repr__(self) -> str:
        return f"Detector({self.name!r}, dim={self.dim}, weights={self.identity['weights']!r})"

    @torch.no_grad()
    def __call__(self, images: Any) -> torch.Tensor:
        x = as_nchw_uint8(images).to(self.device)
        features = self.net(x.float())
        if features.shape != (len(x), self.dim):
            raise ValueError(
                f"{self.name} produced features {tuple(features.shape)}, expected [N, {self.dim}]"
            )
        return features.float()


def build_net(name: str, **arch: Any) -> tuple[torch.nn.Module, int]:
    """The detector network with uninitialised memory (fill it by loading or `reset_random`) and its dim."""
    if name not in METRIC or name == "classifier":
        raise ValueError(f"unknown detector {name!r}; expected one of {sorted(METRIC)}")
    try:
        with torch.device("meta"):  # skip the default init: weights are loaded or reset right after
            net = inception.InceptionV3(**arch) if name == "inception" else dinov2.DINOv2(**arch)
    except TypeError as e:
        raise ValueError(f"{name}: unknown architecture option ({e})") from None
    net = net.to_empty(device="cpu")
    return net, inception.DIM if name == "inception" else net.norm.normalized_shape[0]


def load_detector(
    name: str,
    weights: str | os.PathLike | None = None,
    allow_random: bool = False,
    device: str | torch.device | None = None,
    download: bool = True,
    verify: bool = True,
    seed: int = 0,
    **arch: Any,
) -> Detector:
    """Detector 'inception' (FID) or 'dinov2' (FD-DINOv2) with its published weights.

    Weights come from `weights`, else the cache, else a verified download (see `weights.resolve_weights`).
    `allow_random=True` uses deterministic random weights (seed `seed`) when no file is found: the identity
    then says 'random-init' and so does every statistic and score computed with it.
    `arch` builds a smaller variant, random-init only: DINOv2 embed_dim, depth, num_heads, ...; Inception
    `resolution` (its input size, 75..299).
    `device` None: this rank's GPU (LOCAL_RANK) when CUDA is available, else the CPU.
    'classifier' is a data-specific detector (`edm2lib.metrics.classifier`): `weights` is its file, required.
    """
    if name == "classifier":
        return load_classifier_detector(weights, device)
    if arch and not allow_random:
        raise ValueError(f"architecture overrides {sorted(arch)} exist for random-init tests only")
    net, dim = build_net(name, **arch)
    path = sha = None
    if not arch:
        try:
            path, sha = resolve_weights(name, weights, download_ok=download, verify=verify)
        except FileNotFoundError:
            if not allow_random or weights is not None:
                raise
    if path is None:
        net.reset_random(seed)
        # the seed and any reduced architecture (keys sorted: the config order must not matter) are part of
        # the identity: stats of different nets never mix
        label = sha = f"{RANDOM_INIT}(seed={seed}{', ' + repr(dict(sorted(arch.items()))) if arch else ''})"
    else:
        load_weights_file(net, path)
        label = path.name
    resize = RESIZE[name].replace("299", str(arch["resolution"])) if "resolution" in arch else RESIZE[name]
    identity = {"name": name, "arch": ARCH[name], "weights": label, "sha256": sha, "resize": resize}
    return Detector(name, net, dim, identity, device)


def load_classifier_detector(path: str | os.PathLike | None, device=None) -> Detector:
    """The data-specific classifier detector of a `save_classifier` file; its identity names the data set
    it was trained on, its seed and test accuracy."""
    if path is None or not Path(path).is_file():
        where = "no file given (metrics.weights.classifier)" if path is None else f"{path}: no such file"
        raise FileNotFoundError(f"classifier detector: {where}; it is made by {MAKER}")
    net, meta = classifier.load_classifier(path)
    identity = {
        "name": "classifier",
        "arch": f"{meta['arch']}-w{net.config['width']}-f{net.config['features']}",
        "weights": Path(path).name,
        "sha256": sha256_file(path),
        "resize": f"bilinear-antialias-{net.resolution}",
        "dataset": meta["dataset"],
        "seed": meta.get("seed"),
        "test_accuracy": meta.get("test_accuracy"),
    }
    return Detector("classifier", net, net.dim, identity, device)


def load_nvidia_inception_pkl(path: str | os.PathLike, trusted: bool = False, device=None) -> Detector:
    """NVIDIA's `inception-2015-12-05.pkl` (the exact detector EDM2 runs), from a local file you trust.

    DANGER: the file is a Python pickle; unpickling runs arbitrary code from it, and it needs NVIDIA's
    `torch_utils`/`dnnlib` importable. Use only a file you downloaded yourself from NVIDIA
    (api.ngc.nvidia.com/.../metrics/inception-2015-12-05.pkl), e.g. once to check the native port.
    """
    import pickle

    path = Path(path)
    if not trusted:
        raise ValueError(
            f"{path}: refusing to unpickle (it would run code from the file); "
            "pass trusted=True only for NVIDIA's file that you fetched yourself"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, "rb") as f:
        model = pickle.load(f)  # explicit opt-in above: the caller vouches for this file

    class _Features(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # NVIDIA's module takes uint8 NCHW and resizes/normalises internally
            return self.model(x.to(torch.uint8), return_features=True)

    identity = {
        "name": "inception",
        "arch": "nvidia-inception-2015-12-05-pkl",
        "weights": path.name,
        "sha256": sha256_file(path),
        "resize": "nvidia-internal",
    }
    return Detector("inception", _Features(), inception.DIM, identity, device)
