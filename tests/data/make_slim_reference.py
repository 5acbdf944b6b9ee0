"""Slim the official tiny-network reference (edm2-net-tiny.pt) into the vendored test files.

    python tests/data/make_slim_reference.py PATH/TO/edm2-net-tiny.pt [--out tests/data]

Writes `edm2-net-tiny.json` (config, seeds, names, SHA-256 of every official weight tensor) and
`edm2-net-tiny.safetensors` (inputs, outputs, the perturbed scalar gains, the per-channel factors of the
forced weight normalisation, a strided sample of every gradient). The weights themselves are not stored:
tests/conftest.py rebuilds them with edm2lib under `torch.manual_seed(seed)` and checks the hashes, so this
script refuses to write anything unless that rebuild reproduces the official tensors bit for bit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

GRAD_SAMPLE = 512  # gradient entries kept per parameter (all of them for smaller parameters)
COPIED = ("config", "seed", "data_seed", "torch_version", "param_names", "buffer_names", "loss_seed")
COPIED += ("P_mean", "P_std", "sample_seeds", "sample_steps")
TENSORS = ("x", "sigma", "labels", "D", "logvar", "train_loss", "sample_noise", "sample_labels", "samples")


def sha256(t: torch.Tensor) -> str:
    """Hash of a tensor's dtype, shape and raw bytes."""
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def sample_index(numel: int, count: int = GRAD_SAMPLE) -> torch.Tensor:
    """Evenly strided flat indices (first and last included), or all of them for small tensors."""
    if numel <= count:
        return torch.arange(numel)
    return torch.arange(count) * (numel - 1) // (count - 1)


def channel_factors(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Per-output-channel ratio after/before (forced weight normalisation rescales each output channel)."""
    ratio = after.double().flatten(1) / before.double().flatten(1)
    return ratio.mean(1)


def rebuild_check(ref: dict) -> None:
    """edm2lib's init under the reference seed must give the official tensors (gains aside)."""
    from edm2lib.nn.networks import Precond

    with torch.random.fork_rng():
        torch.manual_seed(ref["seed"])
        state = Precond(**ref["config"]).state_dict()
    for key, value in ref["state_dict"].items():
        if not key.endswith("gain") and not torch.equal(state[key], value):
            raise SystemExit(f"edm2lib init under seed {ref['seed']} differs from the reference at '{key}'")


def slim(ref: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """The JSON metadata and the tensors of the slim reference."""
    meta = {k: ref[k] for k in COPIED}
    meta["format"] = "edm2lib.slim-net-reference/1"
    meta["state_dict_sha256"] = {k: sha256(v) for k, v in ref["state_dict"].items()}
    meta["grad_sample"] = {"count": GRAD_SAMPLE, "index": "arange(count) * (numel - 1) // (count - 1)"}
    tensors = {k: ref[k].contiguous() for k in TENSORS}
    before, after = ref["state_dict"], ref["train_state_dict_after_forward"]
    for key, value in before.items():
        if key.endswith("gain"):
            tensors[f"gain/{key}"] = value.reshape(1).clone()
        if not torch.equal(after[key], value):
            factors = channel_factors(value, after[key])
            rebuilt = (value.double() * factors.reshape(-1, *[1] * (value.ndim - 1))).float()
            err = ((rebuilt - after[key]).abs().max() / after[key].abs().max()).item()
            if err > 1e-6:
                raise SystemExit(f"'{key}' after forward is not a per-channel rescale (error {err:.1e})")
            tensors[f"normalize_factor/{key}"] = factors
    for name, grad in ref["grads"].items():
        flat = grad.flatten()
        tensors[f"grad_sample/{name}"] = flat[sample_index(flat.numel())].clone()
        tensors[f"grad_absmax/{name}"] = flat.abs().max().reshape(1).double()
        tensors[f"grad_norm/{name}"] = flat.double().norm().reshape(1)
    return meta, tensors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path, help="the full edm2-net-tiny.pt")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    ref = torch.load(args.reference, weights_only=True)
    rebuild_check(ref)
    meta, tensors = slim(ref)
    args.out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, args.out / "edm2-net-tiny.safetensors")
    (args.out / "edm2-net-tiny.json").write_text(json.dumps(meta, indent=1) + "\n")
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    print(f"wrote {len(tensors)} tensors ({size / 1e3:.0f} kB) and the metadata to {args.out}")


if __name__ == "__main__":
    main()
