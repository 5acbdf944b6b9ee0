"""Convert official EDM2 snapshot pickles into edm2lib network files, without executing anything from them.

    python -m edm2lib.official.convert IN.pkl [IN2.pkl ...] OUT_DIR

Each input becomes OUT_DIR/<input stem>.safetensors (weights as stored, float16) with the `Precond`
config rebuilt from the recorded constructor arguments, nimg/sigma_rel/gamma parsed from the file name
`...-{kimg:07d}-{sigma_rel:.3f}.pkl`, and the encoder description (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edm2lib import files
from edm2lib.nn.networks import Precond, _jsonable
from edm2lib.official.unpickler import PersistentRecord, load_official_pickle, module_tensors

# Positional parameters of the official Precond, to name recorded `_init_args` (docs/official.md).
_PRECOND_POSITIONAL = [
    "img_resolution",
    "img_channels",
    "label_dim",
    "use_fp16",
    "sigma_data",
    "logvar_channels",
]


def nimg_from_kimg(kimg: int) -> int | None:
    """The unique multiple of 1024 images whose kimg (nimg // 1000) is `kimg`, or None (docs/official.md)."""
    nimg = (1000 * kimg + 999) // 1024 * 1024
    return nimg if nimg // 1000 == kimg else None


def parse_name(path: str | Path) -> dict[str, Any]:
    """nimg, sigma_rel and gamma from an official file name; {} for names without them."""
    parsed = files.parse_official_name(Path(path).name)
    if parsed is None:
        return {}
    from edm2lib.phema.profiles import sigma_rel_to_gamma

    kimg, sigma_rel = parsed
    meta: dict[str, Any] = {"sigma_rel": sigma_rel, "gamma": float(sigma_rel_to_gamma(sigma_rel))}
    nimg = nimg_from_kimg(kimg)
    if nimg is not None:
        meta["nimg"] = nimg
    return meta


def precond_config(record: PersistentRecord) -> dict[str, Any]:
    """`Precond` keywords from the constructor arguments recorded in the pickle (docs/official.md)."""
    if record.class_name != "Precond":
        raise ValueError(f"'ema' is a {record.class_name}, expected the official Precond")
    args = record.state.get("_init_args", ())
    kwargs = record.state.get("_init_kwargs", {})
    if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
        raise ValueError("the Precond record has no readable _init_args/_init_kwargs")
    if len(args) > len(_PRECOND_POSITIONAL):
        raise ValueError(f"the Precond record has {len(args)} positional arguments, at most 6 are known")
    config = dict(zip(_PRECOND_POSITIONAL, args))
    for key, value in kwargs.items():
        if key in config:
            raise ValueError(f"Precond argument '{key}' is recorded both positionally and by keyword")
        config[key] = value
    return _jsonable(config)


def encoder_description(record: Any) -> dict[str, Any]:
    """The encoder description of docs/ARCHITECTURE.md for a recorded official encoder."""
    name = getattr(record, "class_name", None)
    if name == "StandardRGBEncoder":
        return {"kind": "pixels"}
    if name == "StabilityVAEEncoder":
        state, kwargs = record.state, record.state.get("_init_kwargs") or {}
        final_mean = float(kwargs.get("final_mean", 0.0))
        final_std = float(kwargs.get("final_std", 0.5))
        scale = np.asarray(state["scale"], dtype=np.float64).reshape(-1)
        bias = np.asarray(state["bias"], dtype=np.float64).reshape(-1)
        # Invert scale = final_std / raw_std, bias = final_mean - raw_mean * scale (docs/ARCHITECTURE.md).
        raw_std = kwargs.get("raw_std", (final_std / scale).round(6).tolist())
        raw_mean = kwargs.get("raw_mean", ((final_mean - bias) / scale).round(6).tolist())
        return {
            "kind": "sd-vae",
            "vae": str(kwargs.get("vae_name", state.get("vae_name", "stabilityai/sd-vae-ft-mse"))),
            "revision": None,
            "raw_mean": [float(v) for v in raw_mean],
            "raw_std": [float(v) for v in raw_std],
            "final_mean": final_mean,
            "final_std": final_std,
        }
    raise ValueError(f"unknown encoder {name!r}; expected StandardRGBEncoder or StabilityVAEEncoder")


def check_tensors(tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> list[str]:
    """Raise ValueError naming every missing, unexpected or misshapen key against `Precond(**config)`;
    return the state-dict keys that are buffers (reconstruction copies them instead of averaging)."""
    try:
        with torch.device("meta"):
            net = Precond(**config)
        expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    except (TypeError, ValueError) as e:
        raise ValueError(f"recorded Precond config {config} is not buildable: {e}") from e
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    misshapen = [
        f"{k}: {tuple(tensors[k].shape)} != {expected[k]}"
        for k in sorted(set(expected) & set(tensors))
        if tuple(tensors[k].shape) != expected[k]
    ]
    if missing or unexpected or misshapen:
        raise ValueError(
            f"weights do not match config: missing {missing}, unexpected {unexpected}, shapes {misshapen}"
        )
    return sorted(name for name, _ in net.named_buffers())


def convert(path: str | Path, out_dir: str | Path, name: str | None = None) -> Path:
    """Convert one official pickle; returns the network file written (atomically) into `out_dir`, named
    `name` (default: the input's stem + .safetensors)."""
    path = Path(path)
    data = load_official_pickle(path)
    try:
        config = precond_config(data["ema"])
        tensors = dict(module_tensors(data["ema"]))
        buffers = check_tensors(tensors, config)
        encoder = encoder_description(data.get("encoder"))
    except (ValueError, KeyError) as e:
        raise ValueError(f"{path}: {e}") from e
    meta: dict[str, Any] = {
        **parse_name(path),
        "encoder": encoder,
        "buffers": buffers,
        "source": f"{path.name} sha256 {files.sha256_file(path)}",
    }
    loss = data.get("loss_fn")
    if isinstance(loss, PersistentRecord):
        meta["loss"] = {k: float(loss.state[k]) for k in ("P_mean", "P_std", "sigma_data") if k in loss.state}
    out = Path(out_dir) / (name or f"{path.stem}.safetensors")
    files.save_network(out, tensors, config, dtype=None, **meta)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edm2lib.official.convert",
        description="Convert official EDM2 snapshot pickles to edm2lib network files (no code is executed).",
    )
    parser.add_argument("inputs", nargs="+", type=Path, help="official .pkl files")
    parser.add_argument("out_dir", type=Path, help="directory for the .safetensors files")
    args = parser.parse_args(argv)
    for path in args.inputs:
        try:
            out = convert(path, args.out_dir)
        except (ValueError, FileNotFoundError) as e:
            print(f"edm2lib.official.convert: error: {e}", file=sys.stderr)
            return 1
        print(f"{path} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
