"""Training-dynamics telemetry: activation and weight magnitudes per U-Net bucket (EDM2 App. A.6, Fig. 15).

On a fixed probe set of noisy training examples, the magnitude of every feature (output channel) of every
convolution or linear layer is its RMS over the probe set and the spatial positions, M[h_i] =
sqrt(mean_j h_ij^2) (EDM2 Eq. 3); a weight's magnitude per output channel is the RMS of its raw stored row,
before any on-use normalisation. Layers are grouped into buckets {enc, dec} x resolution by their state-dict
names (`unet.enc.16x16_block0.conv_res0`), and each bucket is reduced to the max and the mean over all its
features (Fig. 3 plots the max, Fig. 15 both). The input conv, the output conv and the embedding layers are
kept as buckets of their own so the paper's choice ("within the encoder/decoder blocks") can be made later.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch

from edm2lib import files
from edm2lib.training.loss import draw_noise
from edm2lib.training.stream import make_generator

_BLOCK = re.compile(r"^unet\.(enc|dec)\.(\d+)x\d+_(\w+?)\.")


def bucket_of(name: str) -> str | None:
    """The bucket of a layer's qualified name: 'enc-16x16', 'dec-8x8', 'in', 'out', 'emb', or None."""
    match = _BLOCK.match(name + ".")
    if match:
        side, res, part = match.groups()
        if side == "enc" and part == "conv":
            return "in"  # the input conv is not inside an encoder block (EDM2 App. A.6)
        return f"{side}-{res}x{res}"
    if name.startswith("unet.out"):
        return "out"
    if name.startswith("unet.emb") or name.startswith("unet.map"):
        return "emb"
    return None  # the learned loss weighting (logvar) is not part of the score network


def measured_layers(net: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """name -> module for every layer with a matrix- or kernel-shaped `weight` inside a bucket."""
    out = {}
    for name, module in net.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.nn.Parameter) and weight.ndim >= 2 and bucket_of(name) is not None:
            out[name] = module
    return out


@dataclass(frozen=True)
class Probe:
    """A fixed set of noisy training examples: clean x, sigma [N,1,1,1], unit noise, one-hot labels."""

    x: torch.Tensor
    sigma: torch.Tensor
    noise: torch.Tensor
    labels: torch.Tensor


def make_probe(dataset: Any, size: int, seed: int, P_mean: float, P_std: float) -> Probe:
    """`size` examples drawn from the training distribution with their own seeds, never the training stream's:
    data indices uniformly, ln(sigma) ~ N(P_mean, P_std^2) (EDM2 Eq. 16), unit Gaussian noise."""
    if size < 1:
        raise ValueError(f"telemetry probe size must be >= 1 (got {size})")
    g = make_generator("cpu", "telemetry-probe", seed)
    indices = torch.randint(len(dataset), (size,), generator=g)
    order = torch.argsort(indices)  # HDF5 reads want increasing indices; undo afterwards
    x, labels = dataset.get_batch(indices[order], make_generator("cpu", "telemetry-latents", seed))
    inverse = torch.argsort(order)
    x, labels = x[inverse], labels[inverse]
    positions = range(-size, 0)  # negative positions: no training example shares these draws
    sigma, noise = draw_noise(positions, tuple(x.shape[1:]), P_mean, P_std, seed)
    return Probe(x, sigma, noise, labels)


def _reduce(per_bucket: dict[str, list[torch.Tensor]]) -> dict[str, dict[str, float]]:
    out = {}
    for bucket, parts in sorted(per_bucket.items()):
        values = torch.cat(parts)
        out[bucket] = {"max": float(values.max()), "mean": float(values.mean())}
    return out


@torch.no_grad()
def weight_magnitudes(net: torch.nn.Module) -> dict[str, dict[str, float]]:
    """Per bucket max/mean of the raw stored weights' per-output-channel RMS (EDM2 Eq. 3, Fig. 15)."""
    per_bucket: dict[str, list[torch.Tensor]] = defaultdict(list)
    for name, module in measured_layers(net).items():
        w = module.weight.detach().float()
        per_bucket[bucket_of(name)].append(w.reshape(w.shape[0], -1).square().mean(dim=1).sqrt().cpu())
    return _reduce(per_bucket)


@torch.no_grad()
def activation_magnitudes(net: torch.nn.Module, probe: Probe, batch: int = 64) -> dict[str, dict[str, float]]:
    """Per bucket max/mean over features of the layer outputs' RMS over the probe set (EDM2 Eq. 3).

    The network runs in eval mode (no dropout, no forced weight normalisation) and is restored afterwards.
    """
    layers = measured_layers(net)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = defaultdict(int)

    def hook(name: str):
        def record(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> None:
            h = output.detach().float()
            h = h.reshape(h.shape[0], h.shape[1], -1)  # [N, features, positions]; linear: one position
            sq = h.square().sum(dim=(0, 2))
            sums[name] = sq if name not in sums else sums[name] + sq
            counts[name] += h.shape[0] * h.shape[2]

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in layers.items()]
    was_training = net.training
    net.eval()
    device = next(net.parameters()).device
    try:
        for i in range(0, len(probe.x), batch):
            sl = slice(i, i + batch)
            x, sigma = probe.x[sl].to(device), probe.sigma[sl].to(device)
            net(x + probe.noise[sl].to(device) * sigma, sigma, probe.labels[sl].to(device))
    finally:
        for handle in handles:
            handle.remove()
        net.train(was_training)
    per_bucket: dict[str, list[torch.Tensor]] = defaultdict(list)
    for name, total in sums.items():
        per_bucket[bucket_of(name)].append((total / counts[name]).sqrt().cpu())
    return _reduce(per_bucket)


def measure(net: torch.nn.Module, probe: Probe, nimg: int, which: str, batch: int = 64) -> dict[str, Any]:
    """One telemetry record of `net` ('raw' or 'ema') at `nimg` training images."""
    return {
        "nimg": int(nimg),
        "net": which,
        "activations": activation_magnitudes(net, probe, batch),
        "weights": weight_magnitudes(net),
    }


def plot_dynamics(records: list[dict[str, Any]], out: str | os.PathLike, title: str = "") -> None:
    """Fig. 15-style plot: activations and weights, max and mean, one line per bucket, x = training images;
    solid lines for the EMA network, dotted for the raw one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not records:
        raise ValueError(f"{out}: no telemetry records to plot")
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    panels = [("activations", "max"), ("weights", "max"), ("activations", "mean"), ("weights", "mean")]
    buckets = sorted({b for r in records for b in r["activations"]}, key=_bucket_order)
    cmap = plt.get_cmap("tab10")
    for ax, (kind, stat) in zip(axes, panels):
        top = 0.0
        for k, bucket in enumerate(buckets):
            for which, style in (("ema", "-"), ("raw", ":")):
                rows = [r for r in records if r["net"] == which and bucket in r[kind]]
                if rows:
                    xs = [r["nimg"] for r in rows]
                    ys = [r[kind][bucket][stat] for r in rows]
                    ax.plot(xs, ys, style, color=cmap(k % 10), label=bucket if which == "ema" else None)
                    top = max(top, *ys)
        ax.set_title(f"{kind} ({stat})")
        ax.set_xlabel("training images")
        ax.set_ylim(0, 1.1 * top if top > 0 else 1.0)  # flat lines (forced weight norm: 1) stay inside
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(title or "magnitudes per bucket (EMA solid, raw dotted; EDM2 Fig. 15)")
    fig.tight_layout()
    with files.atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def _bucket_order(bucket: str) -> tuple[int, int]:
    side = {"in": 0, "emb": 0, "enc": 1, "dec": 2, "out": 3}[bucket.split("-")[0]]
    res = int(bucket.split("-")[1].split("x")[0]) if "-" in bucket else 0
    return side, -res if side == 1 else res
