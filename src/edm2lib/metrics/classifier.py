"""A data-specific detector: a small CNN classifier trained on a labelled data set, saved with its identity.

Its penultimate features give a Fréchet distance (the same `frechet_distance` as FID) and its predictions
give the class accuracy of class-conditional samples (docs/metrics.md, "Data-specific detector").
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edm2lib.files import read_meta, save_tensors

FORMAT = "edm2lib.classifier/1"
ARCH = "edm2lib-cnn2"  # two conv + BN + ReLU + 2x2 max-pool stages, a hidden FC layer (the features), a head


class Classifier(nn.Module):
    """uint8-valued float images [N,C,H,W] (0..255) -> penultimate features [N, features]; `head` -> logits.

    Inputs of another size are resized (bilinear, antialiased) to `resolution` first.
    """

    def __init__(
        self,
        resolution: int = 32,
        channels: int = 3,
        num_classes: int = 10,
        width: int = 16,
        features: int = 128,
    ):
        super().__init__()
        if resolution % 4 or resolution < 8:
            raise ValueError(f"classifier resolution must be a multiple of 4 and >= 8, got {resolution}")
        self.config = dict(
            resolution=resolution, channels=channels, num_classes=num_classes, width=width, features=features
        )
        self.resolution, self.dim = resolution, features

        def stage(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.MaxPool2d(2),
            )

        self.body = nn.Sequential(stage(channels, width), stage(width, 2 * width), nn.Flatten())
        self.fc = nn.Linear(2 * width * (resolution // 4) ** 2, features)
        self.head = nn.Linear(features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.resolution, self.resolution):
            x = nn.functional.interpolate(x, (self.resolution,) * 2, mode="bilinear", antialias=True)
        return torch.relu(self.fc(self.body(x / 127.5 - 1)))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)


def _as_float(images: np.ndarray) -> torch.Tensor:
    """uint8 [N,H,W,C] -> float32 [N,C,H,W] in 0..255."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()


@torch.no_grad()
def accuracy(net: Classifier, images: np.ndarray, labels: np.ndarray, batch: int = 512) -> float:
    """Fraction of `images` (uint8 [N,H,W,C]) that `net` labels as `labels`."""
    net.eval()
    correct = 0
    for i in range(0, len(images), batch):
        predicted = net.logits(net(_as_float(images[i : i + batch]))).argmax(1)
        correct += int((predicted == torch.from_numpy(labels[i : i + batch])).sum())
    return correct / len(images)


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    seed: int = 0,
    epochs: int = 2,
    batch: int = 128,
    lr: float = 2e-3,
    width: int = 16,
    features: int = 128,
    log=print,
) -> Classifier:
    """Train a `Classifier` on uint8 [N,H,W,C] images and int labels with Adam and cross-entropy, seeded:
    the same inputs and seed give the same weights on the same machine and thread count."""
    if images.ndim != 4 or images.dtype != np.uint8 or len(images) != len(labels):
        raise ValueError(
            f"images must be uint8 [N,H,W,C] with one label each, got {images.shape} / {labels.shape}"
        )
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    torch.manual_seed(seed)
    net = Classifier(images.shape[1], images.shape[3], num_classes, width, features)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    steps = epochs * ((len(images) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    y_all = torch.from_numpy(labels.astype(np.int64))
    start = time.perf_counter()
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(images), generator=order).numpy()
        total = 0.0
        for i in range(0, len(images), batch):
            idx = np.sort(perm[i : i + batch])
            loss = nn.functional.cross_entropy(net.logits(net(_as_float(images[idx]))), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        seconds = time.perf_counter() - start
        log(f"epoch {epoch + 1}/{epochs}: loss {total / len(images):.4f} ({seconds:.1f} s)")
    return net.eval()


def tensors_sha256(net: nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes, bytes) in name order: the weights' own identity."""
    h = hashlib.sha256()
    for name, t in sorted(net.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def save_classifier(path: str | os.PathLike, net: Classifier, identity: dict[str, Any]) -> dict[str, Any]:
    """Write the classifier as safetensors; metadata: format, arch, config, `identity` (data set, seed, test
    accuracy, ...) and the tensors' sha256. Returns the metadata."""
    meta = {
        "format": FORMAT,
        "arch": ARCH,
        "config": net.config,
        **identity,
        "tensors_sha256": tensors_sha256(net),
    }
    json.dumps(meta)  # fail here, not inside safetensors, on a value JSON cannot hold
    save_tensors(path, net.state_dict(), meta)
    return meta


def load_classifier(path: str | os.PathLike) -> tuple[Classifier, dict[str, Any]]:
    """(Classifier in eval mode, metadata) of a file written by `save_classifier`."""
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_meta(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT} (a save_classifier file)")
    net = Classifier(**meta["config"])
    net.load_state_dict(load_file(str(path)), strict=True)
    if tensors_sha256(net) != meta["tensors_sha256"]:
        raise ValueError(f"{path}: tensors do not match their recorded sha256; the file is damaged")
    return net.eval().requires_grad_(False), meta


def dataset_identity(images_h5: str | os.PathLike) -> str:
    """What a data-specific detector is tied to: source, transform and resolution of an images.h5 (a split
    of the same data set has the same identity; Fashion-MNIST's folder is left out)."""
    import h5py

    with h5py.File(images_h5, "r") as f:
        attrs = dict(f.attrs)
    source = str(attrs.get("source", "?"))
    if source.startswith("fashion-mnist"):
        source = "fashion-mnist"
    return f"{source} {attrs.get('transform', '?')} {attrs.get('resolution', '?')}px"
