"""Detector weight files: explicit path -> cache directory -> verified download; safe state-dict loading."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from edm2lib.files import atomic_path, sha256_file


@dataclass(frozen=True)
class WeightsSpec:
    """Where a detector's published weights live and how to recognise them."""

    filename: str
    url: str
    sha256: str | None  # None: no published hash; the identity then records the file's own sha256


WEIGHTS = {
    # pytorch-fid's conversion of the TF 2015-12-05 graph; the name carries its sha256 prefix (torch.hub)
    "inception": WeightsSpec(
        filename="pt_inception-2015-12-05-6726825d.pth",
        url="https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
        "pt_inception-2015-12-05-6726825d.pth",
        sha256="6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2",
    ),
    # the file torch.hub's `dinov2_vitl14` loads; Meta publishes no checksum for it
    "dinov2": WeightsSpec(
        filename="dinov2_vitl14_pretrain.pth",
        url="https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth",
        sha256=None,
    ),
}


def cache_dir() -> Path:
    """`$EDM2LIB_CACHE`, else `$XDG_CACHE_HOME/edm2lib`, else `~/.cache/edm2lib`."""
    if os.environ.get("EDM2LIB_CACHE"):
        return Path(os.environ["EDM2LIB_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "edm2lib"


def download(url: str, dest: str | os.PathLike, sha256: str | None, progress: bool = True) -> Path:
    """Stream `url` to `dest` atomically with a progress bar; a checksum mismatch deletes it and raises."""
    from tqdm import tqdm

    dest = Path(dest)
    h = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=60) as response, atomic_path(dest) as tmp:
        total = int(response.headers.get("Content-Length") or 0) or None
        with (
            open(tmp, "wb") as f,
            tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar,
        ):
            while block := response.read(1 << 20):
                f.write(block)
                h.update(block)
                bar.update(len(block))
        if sha256 is not None and h.hexdigest() != sha256:
            raise ValueError(
                f"download of {url} has sha256 {h.hexdigest()}, expected {sha256}; the file was deleted. "
                "Retry, or fetch it by hand and check it"
            )
    return dest


def _check_sha256(path: Path, expected: str | None) -> str:
    actual = sha256_file(path)
    if expected is not None and actual != expected:
        raise ValueError(
            f"{path}: sha256 {actual} does not match the published {expected}; "
            "delete it and fetch it again (or pass verify=False for a deliberately different file)"
        )
    return actual


def resolve_weights(
    name: str, path: str | os.PathLike | None = None, download_ok: bool = True, verify: bool = True
) -> tuple[Path, str]:
    """(file, sha256) of detector `name`'s weights: explicit `path`, else the cache, else a download.

    Downloads are skipped when `download_ok` is False or `EDM2LIB_OFFLINE=1`. `verify=False` accepts a file
    whose sha256 differs from the published one (its own hash is still returned and recorded).
    """
    if name not in WEIGHTS:
        raise ValueError(f"unknown detector {name!r}; known: {sorted(WEIGHTS)}")
    spec = WEIGHTS[name]
    expected = spec.sha256 if verify else None
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{name} weights {path} not found (the published file is {spec.url})")
        return path, _check_sha256(path, expected)
    cached = cache_dir() / spec.filename
    if cached.is_file():
        return cached, _check_sha256(cached, expected)
    hint = (
        f"{name} weights {spec.filename} are not in {cached.parent}; download {spec.url} to {cached} "
        "(or set EDM2LIB_CACHE, or pass the file's path explicitly)"
    )
    if not download_ok or os.environ.get("EDM2LIB_OFFLINE") == "1":
        raise FileNotFoundError(f"{hint}; downloads are disabled")
    try:
        download(spec.url, cached, spec.sha256)
    except (urllib.error.URLError, OSError) as e:
        raise FileNotFoundError(f"{hint}; download failed: {e}") from e
    return cached, sha256_file(cached)


def load_state_dict_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load `state` requiring exactly `module`'s key names and shapes (BatchNorm's `num_batches_tracked`
    counters, meaningless in eval mode, may be absent); the error lists the offending keys."""
    own = module.state_dict()
    state = dict(state)
    for key, value in own.items():
        if key.endswith("num_batches_tracked"):
            state.setdefault(key, value)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = [
            f"{label} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
            for label, keys in [("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)]
            if keys
        ]
        raise ValueError(
            f"{source}: not the published {type(module).__name__} state dict; " + "; ".join(parts)
        )
    module.load_state_dict(state, strict=True)


def load_weights_file(module: torch.nn.Module, path: str | os.PathLike) -> None:
    """`torch.load(weights_only=True)` of a plain state dict into `module`, strictly."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError/RuntimeError for unsafe or corrupt files
        raise ValueError(f"{path}: not a weights-only torch state dict ({e})") from e
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: holds a {type(state).__name__}, expected a state dict (name -> tensor)")
    load_state_dict_strict(module, state, str(path))
