"""Training checkpoints: atomic directories of safetensors + JSON + SHA256SUMS, rotation and validated resume.

Layout of `run_dir/checkpoints/ckpt-{nimg:012d}/`:
  net.safetensors        fp32 `Precond.state_dict()` (official key names)
  optimizer.safetensors  Adam state tensors `state.{param index}.{exp_avg|exp_avg_sq|step}`
  ema.safetensors        `PowerFunctionEMA.state_dict()` (every tracked sigma_rel, fp32)
  rng.safetensors        per-rank RNG states `cpu.{rank}` (and `cuda.{rank}`), gathered on rank 0
  state.json             nimg, elapsed time, sampler position, counters, Adam param groups, config
  SHA256SUMS             `sha256  name` for every file above; written last
Nothing is pickled; the directory appears under its final name only once complete
(`edm2lib.files.atomic_dir`).
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from edm2lib import files

FORMAT = "edm2lib.checkpoint/1"
SUMS = "SHA256SUMS"


def checkpoint_dir(run_dir: str | Path, nimg: int) -> Path:
    """`run_dir/checkpoints/ckpt-{nimg:012d}`."""
    return Path(run_dir) / "checkpoints" / files.checkpoint_name(nimg)


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Flatten an optimizer state_dict into (tensors, JSON-able param groups)."""
    sd = optimizer.state_dict()
    tensors = {}
    for index, state in sd["state"].items():
        for key, value in state.items():
            tensors[f"state.{index}.{key}"] = torch.as_tensor(value)
    return tensors, sd["param_groups"]


def load_optimizer(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], groups: list
) -> None:
    """Inverse of `optimizer_tensors`."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save(
    run_dir: str | Path,
    nimg: int,
    net_state: Mapping[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    ema_state: Mapping[str, torch.Tensor],
    rng_states: Mapping[str, torch.Tensor],
    state: Mapping[str, Any],
    keep: int,
) -> Path:
    """Write one checkpoint atomically (rank 0 only), then delete all but the newest `keep`.

    Refuses (ValueError) when any network or EMA tensor is non-finite, so a diverged run never replaces a
    good checkpoint.
    """
    for label, tensors in (("network", net_state), ("EMA", ema_state)):
        for key, t in tensors.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ValueError(f"refusing to checkpoint nimg {nimg}: {label} tensor '{key}' is not finite")
    opt_tensors, groups = optimizer_tensors(optimizer)
    final = checkpoint_dir(run_dir, nimg)
    meta = {"format": FORMAT, "nimg": int(nimg)}
    if final.exists():  # left by an earlier session that died after it (or corrupt): this state replaces it
        shutil.rmtree(final)
    with files.atomic_dir(final) as tmp:
        files.save_tensors(tmp / "net.safetensors", {k: v.float() for k, v in net_state.items()}, meta)
        files.save_tensors(tmp / "optimizer.safetensors", opt_tensors, meta)
        files.save_tensors(tmp / "ema.safetensors", ema_state, meta)
        files.save_tensors(tmp / "rng.safetensors", rng_states, meta)
        body = {"format": FORMAT, **state, "nimg": int(nimg), "param_groups": groups}
        (tmp / files.CHECKPOINT_STATE).write_text(json.dumps(body, indent=1, sort_keys=True))
        names = sorted(p.name for p in tmp.iterdir())
        (tmp / SUMS).write_text("".join(f"{files.sha256_file(tmp / n)}  {n}\n" for n in names))
    prune(run_dir, keep)
    return final


def nimg_of(path: str | Path) -> int:
    """Training time recorded in a checkpoint directory's name."""
    nimg = files.parse_checkpoint_name(Path(path).name)
    if nimg is None:
        raise ValueError(f"{path}: not a checkpoint directory name (ckpt-<12 digits>)")
    return nimg


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(nimg, path) of every complete-looking checkpoint directory, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    named = [(files.parse_checkpoint_name(p.name), p) for p in root.iterdir() if p.is_dir()]
    found = [(nimg, p) for nimg, p in named if nimg is not None]
    return sorted(found)


def prune(run_dir: str | Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints, and temporary directories left by killed writers."""
    for _, path in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
    root = Path(run_dir) / "checkpoints"
    for tmp in root.glob(".ckpt-*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)


def verify(path: str | Path) -> None:
    """Raise ValueError unless SHA256SUMS lists every part and each listed file exists and matches."""
    path = Path(path)
    sums = path / SUMS
    if not sums.is_file():
        raise ValueError(f"{path}: no {SUMS} file (incomplete checkpoint)")
    listed = {}
    for line in sums.read_text().splitlines():
        digest, _, name = line.partition("  ")
        listed[name] = digest
    for required in (
        files.CHECKPOINT_STATE,
        *(f"{p}.safetensors" for p in ("net", "optimizer", "ema", "rng")),
    ):
        if required not in listed:
            raise ValueError(f"{path}: {SUMS} does not list {required}")
    for name, digest in listed.items():
        f = path / name
        if not f.is_file():
            raise ValueError(f"{path}: {name} is missing")
        if files.sha256_file(f) != digest:
            raise ValueError(f"{path}: {name} does not match its checksum (corrupt or truncated)")


def find_latest_valid(run_dir: str | Path) -> Path | None:
    """The newest checkpoint whose checksums verify; corrupt ones are skipped with a warning. None if none."""
    for _, path in reversed(list_checkpoints(run_dir)):
        try:
            verify(path)
        except ValueError as e:
            warnings.warn(f"skipping checkpoint: {e}", stacklevel=2)
            continue
        return path
    return None


def load(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by `save` (verified first): tensors as dicts, plus the state.json body."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: checkpoint directory not found")
    verify(path)
    state = json.loads((path / files.CHECKPOINT_STATE).read_text())
    if state.get("format") != FORMAT:
        raise ValueError(f"{path}: checkpoint format {state.get('format')!r}, expected {FORMAT}")
    out = {"state": state}
    for part in ("net", "optimizer", "ema", "rng"):
        out[part] = load_file(str(path / f"{part}.safetensors"))
    return out
