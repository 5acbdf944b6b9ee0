"""Atomic file writes, checksums, the safetensors network-file format and every file-name pattern.

File names carry time in training images (nimg) zero-padded to 12 digits and sigma_rel with 3 decimals
(docs/ARCHITECTURE.md, data flow); the only other place that spells them is the Snakemake wildcards.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where tensors are handled: metadata and atomic writes stay torch-free
    import torch

NETWORK_FORMAT = "edm2lib.network/1"  # metadata["edm2lib"]["format"] of every network file
META_KEY = "edm2lib"  # safetensors metadata is str -> str: all our metadata is one JSON string

# what a run directory runs/<run>/ holds (docs/ARCHITECTURE.md, "Data flow")
RUN_LOG = "log.txt"  # the human-readable training log
RUN_STATS = "stats.jsonl"  # one JSON record per status interval (append-only, torn-line tolerant)
RUN_TELEMETRY = "telemetry.jsonl"  # magnitude telemetry records (EDM2 Fig. 15), append-only
RUN_FAILED = "failed.json"  # a deterministic training failure, not to be retried
RUN_FRESH = "fresh.json"  # this invocation forced the train job (it may start afresh)
RUN_STALE = "stale-{identity}"  # a run's state set aside by a forced train job of another identity
RUN_STATE = ("checkpoints", "snapshots", RUN_LOG, RUN_STATS, RUN_TELEMETRY)  # what training writes there
CHECKPOINT_STATE = "state.json"  # inside ckpt-<nimg>/: counters, config and checksums

_POINT = re.compile(r"^(\d{12})-(\d+\.\d{3})-([A-Za-z0-9_]+)$")
_CHECKPOINT = re.compile(r"^ckpt-(\d{12})$")
_OFFICIAL = re.compile(r"-(\d+)-(\d+\.\d+)\.pkl$")  # official `...-{kimg:07d}-{sigma_rel:.3f}.pkl`


def snapshot_name(nimg: int, sigma_rel: float) -> str:
    """`snapshot-{nimg:012d}-{sigma_rel:.3f}.safetensors`: one EMA snapshot written during training."""
    return f"snapshot-{int(nimg):012d}-{sigma_rel:.3f}.safetensors"


def traditional_snapshot_name(nimg: int) -> str:
    """`ema-{nimg:012d}-traditional.safetensors`: a traditional-EMA snapshot (CONFIG A); never a
    reconstruction input (it does not match `is_snapshot_name`)."""
    return f"ema-{int(nimg):012d}-traditional.safetensors"


TRADITIONAL_SNAPSHOT_GLOB = "ema-*-traditional.safetensors"  # every `traditional_snapshot_name`


def phema_name(nimg: int, sigma_rel: float) -> str:
    """`phema-{nimg:012d}-{sigma_rel:.3f}.safetensors`: one post-hoc EMA reconstruction."""
    return f"phema-{int(nimg):012d}-{sigma_rel:.3f}.safetensors"


def is_snapshot_name(name: str) -> bool:
    """True for our snapshots and for converted official ones (`network-snapshot-*.safetensors`)."""
    return name.startswith(("snapshot-", "network-snapshot-")) and name.endswith(".safetensors")


def checkpoint_name(nimg: int) -> str:
    """`ckpt-{nimg:012d}`: one resumable training-state directory."""
    return f"ckpt-{int(nimg):012d}"


def parse_checkpoint_name(name: str) -> int | None:
    """nimg of a `ckpt-{nimg:012d}` name, None for any other name."""
    m = _CHECKPOINT.match(name)
    return int(m.group(1)) if m else None


def point_name(nimg: int, sigma_rel: float, guidance: str) -> str:
    """`{nimg:012d}-{sigma_rel:.3f}-{guidance}`: the directory of one sampled and scored point."""
    return f"{int(nimg):012d}-{sigma_rel:.3f}-{guidance}"


def parse_point_name(name: str) -> tuple[int, float, str] | None:
    """(nimg, sigma_rel, guidance) of a point name, None for any other name."""
    m = _POINT.match(name)
    return (int(m.group(1)), float(m.group(2)), m.group(3)) if m else None


def parse_official_name(name: str) -> tuple[int, float] | None:
    """(kimg, sigma_rel) of an official `...-{kimg:07d}-{sigma_rel:.3f}.pkl` name (docs/official.md)."""
    m = _OFFICIAL.search(name)
    return (int(m.group(1)), float(m.group(2))) if m else None


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside `path` durable (no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _default_mode(directory: bool = False) -> int:
    """The mode a plain open()/mkdir() would give under the current umask (mkstemp/mkdtemp use 0600/0700)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def _fsync_file(path: str | os.PathLike) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it is fsynced and renamed onto `path` only if the block succeeds.

    The temporary name keeps the final suffix (``.x.tmp.h5``) so writers that infer a format from it work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        _fsync_file(tmp)
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_paths(paths: list[str | os.PathLike]) -> Iterator[list[Path]]:
    """`atomic_path` for many files: all are fsynced at once (in parallel), then renamed, then each directory
    is fsynced once; if the block fails, every temporary file is removed and none is renamed."""
    from concurrent.futures import ThreadPoolExecutor

    paths, tmps = [Path(p) for p in paths], []
    try:
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
            os.close(fd)
            tmps.append(Path(tmp))
        yield list(tmps)
        with ThreadPoolExecutor(max_workers=max(1, min(16, len(tmps)))) as pool:
            list(pool.map(_fsync_file, tmps))
        while tmps:
            os.chmod(tmps[0], _default_mode())
            os.replace(tmps[0], paths[len(paths) - len(tmps)])
            tmps.pop(0)
        for parent in {p.parent for p in paths}:
            fsync_dir(parent)
    except BaseException:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside `path`, renamed onto `path` (which must not exist) on success."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; refusing to overwrite a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync_file(f)
        fsync_dir(tmp)
        os.chmod(tmp, _default_mode(directory=True))
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_tensors(
    path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> None:
    """Write tensors + a JSON-serialisable `meta` dict as one safetensors file, atomically."""
    from safetensors.torch import save_file

    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata={META_KEY: json.dumps(dict(meta), sort_keys=True)})


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata dict of a safetensors file written by `save_tensors`, without reading any tensor."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with safe_open(str(path), framework="numpy") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from e
    if raw is None:
        raise ValueError(f"{path}: safetensors file has no '{META_KEY}' metadata; not written by edm2lib")
    return json.loads(raw)


def save_network(
    path: str | os.PathLike,
    state_dict: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
    dtype: torch.dtype | str | None = "float16",
    **meta: Any,
) -> None:
    """Write a network file: `state_dict` (official key names, cast to `dtype` unless None), the
    `Precond` constructor keywords `config`, and extra metadata (nimg, sigma_rel, gamma, ...)."""
    import torch

    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    tensors = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v) for k, v in state_dict.items()
    }
    save_tensors(path, tensors, {"format": NETWORK_FORMAT, "config": dict(config), **meta})


def read_network_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Metadata of a network file, checking that it is one."""
    meta = read_meta(path)
    if meta.get("format") != NETWORK_FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r} is not a network file ({NETWORK_FORMAT})")
    return meta


def load_network(
    path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | str = "float32"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build the `Precond` recorded in a network file and load its weights (strict); eval mode, no grad."""
    import torch
    from safetensors.torch import load_file

    from edm2lib.nn.networks import Precond

    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    meta = read_network_meta(path)
    net = Precond(**meta["config"])
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not match the recorded config: {e}") from e
    return net.to(device).eval().requires_grad_(False), meta


# Append-only JSONL logs (stats.jsonl, telemetry.jsonl), resumed with their run.


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of an append-only JSONL file; a torn last line (a write cut off by a kill) is dropped with
    a warning, a bad line elsewhere is an error naming it."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if i < len(lines) - 1:
                raise ValueError(f"{path}:{i + 1}: not a JSON line (only the last may be torn)") from error
            warnings.warn(f"{path}:{i + 1}: dropping a torn last line {line[:40]!r}", stacklevel=2)
    return records


def append_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> None:
    """Append records, one JSON line each, flushed and fsynced."""
    with open(path, "a") as f:
        for record in records:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def truncate_jsonl(path: str | os.PathLike, nimg: int) -> None:
    """Keep the records at or before `nimg` (a resumed run rewrites what came after its checkpoint)."""
    path = Path(path)
    if path.is_file():
        kept = [r for r in read_jsonl(path) if r["nimg"] <= nimg]
        atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
