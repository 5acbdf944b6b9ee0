"""Parity of our detectors with reference code: torch-fidelity's TF-compatible Inception, the official DINOv2.

    pip download --no-deps -d /tmp/ref torch-fidelity==0.4.0 dinov2==0.0.1.dev2
    (cd /tmp/ref && for w in *.whl; do python -m zipfile -e "$w" src/; done)
    python bench/metrics_parity.py --vendor /tmp/ref/src

Neither package is installed: torch-fidelity's package `__init__` needs torchvision, so its Inception
module is imported without it. Both networks get the same random weights as ours (BatchNorm statistics,
norms and LayerScale perturbed too). The reference sees the preprocessing EDM2 applies: torch-fidelity
resizes like TF1 internally; for DINOv2, EDM2's bicubic antialiased resize to 224 and ImageNet mean/std.
Prints max |diff| per input size and writes bench/out/metrics_parity.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from common import write_result
from edm2lib.metrics import load_detector
from edm2lib.metrics.dinov2 import MEAN, STD
from edm2lib.metrics.weights import load_state_dict_strict


def import_references(vendor: Path):
    sys.path.insert(0, str(vendor))
    package = types.ModuleType("torch_fidelity")  # skip torch_fidelity/__init__ (imports torchvision)
    package.__path__ = [str(vendor / "torch_fidelity")]
    sys.modules["torch_fidelity"] = package
    from dinov2.models.vision_transformer import vit_large
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    return FeatureExtractorInceptionV3, vit_large


def row(name: str, size: int, ours: torch.Tensor, ref: torch.Tensor) -> dict:
    diff = (ours - ref).abs().max().item()
    return {"detector": name, "input": size, "max_abs_diff": diff, "rel": diff / ref.abs().max().item()}


def inception_parity(reference_cls, sizes: list[int], g: torch.Generator) -> list[dict]:
    ours = load_detector("inception", allow_random=True, download=False)
    with torch.no_grad():
        for key, value in ours.net.state_dict().items():
            if key.endswith("running_var"):
                value.copy_(torch.rand(value.shape, generator=g) + 0.5)
            elif key.endswith(("running_mean", "bn.bias")):
                value.copy_(torch.randn(value.shape, generator=g) * 0.1)
            elif key.endswith("bn.weight"):
                value.copy_(1 + 0.1 * torch.randn(value.shape, generator=g))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "inception.pth"
        torch.save(ours.net.state_dict(), path)
        reference = reference_cls("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
    rows = []
    for size in sizes:
        x = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, generator=g)
        (ref,) = reference(x)
        rows.append(row("inception", size, ours(x), ref))
    return rows


def dinov2_parity(vit_large, sizes: list[int], g: torch.Generator) -> list[dict]:
    # torch.hub's dinov2_vitl14 constructor arguments
    hub = vit_large(img_size=518, patch_size=14, init_values=1.0, ffn_layer="mlp", block_chunks=0).eval()
    with torch.no_grad():
        for value in hub.state_dict().values():
            value.add_(torch.randn(value.shape, generator=g) * 0.02)
    ours = load_detector("dinov2", allow_random=True, download=False)
    load_state_dict_strict(ours.net, hub.state_dict(), "dinov2 hub state dict")
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    rows = []
    for size in sizes:
        x = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, generator=g)
        resized = F.interpolate(x.float(), (224, 224), mode="bicubic", antialias=True) / 255
        with torch.no_grad():
            ref = hub((resized - mean) / std)
        rows.append(row("dinov2", size, ours(x), ref))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vendor", type=Path, required=True, help="unzipped torch_fidelity/ and dinov2/")
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 299, 512])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reference_inception, vit_large = import_references(args.vendor)
    g = torch.Generator().manual_seed(0)
    rows = inception_parity(reference_inception, args.sizes, g) + dinov2_parity(vit_large, args.sizes, g)
    print(f"{'detector':<10}{'input':>7}{'max|diff|':>12}{'relative':>12}")
    for r in rows:
        print(f"{r['detector']:<10}{r['input']:>7}{r['max_abs_diff']:>12.2e}{r['rel']:>12.2e}")
    write_result({"rows": rows}, "metrics_parity")


if __name__ == "__main__":
    main()
