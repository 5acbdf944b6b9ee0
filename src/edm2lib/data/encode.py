"""Encode images.h5 into latents.h5 with the SD VAE: resumable, one disjoint part per rank."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from tqdm import tqdm

from edm2lib import distributed
from edm2lib.data.dataset import LATENTS_FORMAT, ImageDataset, open_dataset
from edm2lib.data.encoders import SD_VAE_ID, encode_pixels, load_vae, sd_vae_description, vae_identity
from edm2lib.files import atomic_path, fsync_dir

COPY_ROWS = 1024  # rows per copy when assembling the parts
POLL_S = 2.0  # how often rank 0 looks for the other ranks' finished parts


def part_path(latents_h5: Path, rank: int, world_size: int, finished: bool = False) -> Path:
    """Where rank `rank` of `world_size` keeps its resumable part, or (`finished`) its completed one."""
    state = "done" if finished else "partial"
    return latents_h5.with_name(f"{latents_h5.name}.part-{rank}-of-{world_size}.{state}.h5")


def _rank_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    return n * rank // world_size, n * (rank + 1) // world_size


def _fingerprint(images_h5: Path, identity: dict[str, Any], dtype: str, batch_size: int) -> str:
    """What a part depends on; a part with another fingerprint is stale and started over."""
    st = images_h5.stat()
    return json.dumps([str(images_h5.resolve()), st.st_size, st.st_mtime_ns, identity, dtype, batch_size])


def _open_part(path: Path, fingerprint: str, rows: int, shape: tuple[int, ...], dtype: str) -> h5py.File:
    """The part file, reused if it belongs to this encode, else created empty with attrs done=0."""
    if path.exists():
        try:
            f = h5py.File(path, "r+")
            if f.attrs.get("fingerprint") == fingerprint and f["mean"].shape == (rows, *shape):
                return f
            f.close()
        except (OSError, KeyError):  # a part killed inside an HDF5 write may be unreadable: redo it
            pass
        path.unlink()
    f = h5py.File(path, "w")
    for name in ("mean", "std"):
        chunks = (1, *shape) if rows else None  # a rank may get no rows when N < world size
        f.create_dataset(name, shape=(rows, *shape), dtype=dtype, chunks=chunks, track_times=False)
    f.attrs["fingerprint"] = fingerprint
    f.attrs["done"] = 0
    return f


@dataclasses.dataclass(frozen=True)
class _Part:
    """One rank's share of the output: rows [start, stop), written to `path`, renamed to `finished`."""

    path: Path
    finished: Path
    fingerprint: str
    start: int
    stop: int


def _encode_part(
    images: ImageDataset,
    vae: Any,
    part: _Part,
    *,
    batch_size: int,
    dtype: str,
    shape: tuple[int, ...],
    progress: bool,
) -> None:
    """Encode the part's rows, continuing after the rows its `done` attribute counts, then rename it to
    `part.finished` (a finished part with the same fingerprint is kept as it is)."""
    path, finished, fingerprint, start, stop = dataclasses.astuple(part)
    if finished.is_file():
        with h5py.File(finished, "r") as f:
            if f.attrs.get("fingerprint") == fingerprint:
                return
        finished.unlink()
    with _open_part(path, fingerprint, stop - start, shape, dtype) as f:
        done = int(f.attrs["done"])
        bar = tqdm(
            total=stop - start, initial=done, desc=f"encode {path.name}", unit="img", disable=not progress
        )
        for lo in range(start + done, stop, batch_size):
            hi = min(lo + batch_size, stop)
            raw = encode_pixels(vae, images.raw(np.arange(lo, hi)))
            f["mean"][lo - start : hi - start] = raw[:, : shape[0]].numpy().astype(dtype)
            f["std"][lo - start : hi - start] = raw[:, shape[0] :].numpy().astype(dtype)
            f.attrs["done"] = hi - start  # only after the rows are written: a kill repeats this batch
            f.flush()
            bar.update(hi - lo)
        bar.close()
    os.replace(path, finished)
    fsync_dir(finished.parent)


def _assemble(images: ImageDataset, latents_h5: Path, parts: list[Path], attrs: dict[str, Any]) -> None:
    """Copy the finished parts, in rank order, into latents.h5 (written atomically), then delete all parts."""
    with atomic_path(latents_h5) as tmp, h5py.File(tmp, "w", libver="earliest") as out:
        with h5py.File(parts[0], "r") as p0:
            shape, dtype = p0["mean"].shape[1:], p0["mean"].dtype
        for name in ("mean", "std"):
            out.create_dataset(name, (len(images), *shape), dtype, chunks=(1, *shape), track_times=False)
        row = 0
        for p in parts:
            with h5py.File(p, "r") as f:
                for lo in range(0, len(f["mean"]), COPY_ROWS):
                    for name in ("mean", "std"):
                        block = f[name][lo : lo + COPY_ROWS]
                        out[name][row + lo : row + lo + len(block)] = block
                row += len(f["mean"])
        if images.class_ids is not None:
            out.create_dataset("labels", data=images.class_ids, track_times=False)
        out.create_dataset(
            "class_names",
            data=np.asarray(images.class_names, dtype=object),
            dtype=h5py.string_dtype(),
            track_times=False,
        )
        for k in sorted(attrs):
            out.attrs[k] = attrs[k]
    for p in latents_h5.parent.glob(f"{latents_h5.name}.part-*.h5"):  # also stale ones of other world sizes
        p.unlink()


def encode_dataset(
    images_h5: str | os.PathLike,
    latents_h5: str | os.PathLike,
    vae: Any = SD_VAE_ID,
    revision: str | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    dtype: str = "float32",
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Encode `images_h5` into `latents_h5`: `mean`, `std` [N,4,h,w] + labels + VAE identity attributes.

    `vae` is a local folder, a hub id (loaded at `revision`) or a loaded AutoencoderKL. Resumable: each rank
    writes ``<latents_h5>.part-R-of-W.partial.h5``, flushed per batch and renamed ``.done.h5`` when
    finished; rerunning continues after the last finished batch. Rank/world come from torch.distributed
    when initialised; rank 0 waits for every finished part, then assembles `latents_h5` (without
    torch.distributed, pass `rank`/`world_size` and run rank 0 last). Returns a summary.
    """
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype={dtype!r}; expected 'float32' or 'float16'")
    images_h5, latents_h5 = Path(images_h5), Path(latents_h5)
    images = open_dataset(images_h5)
    if not isinstance(images, ImageDataset):
        raise ValueError(f"{images_h5}: encode needs an images.h5 data set, got {type(images).__name__}")
    if rank is None or world_size is None:
        rank, world_size = distributed.rank_world()
    identity = vae_identity(vae, revision)
    model = load_vae(vae, revision, device) if isinstance(vae, str | os.PathLike) else vae.to(device).eval()
    with torch.no_grad():  # one probe image gives the latent shape
        probe = encode_pixels(model, images.raw([0]))
    shape = (probe.shape[1] // 2, *probe.shape[2:])
    fingerprint = _fingerprint(images_h5, identity, dtype, batch_size)
    parts = [part_path(latents_h5, r, world_size, finished=True) for r in range(world_size)]
    start, stop = _rank_range(len(images), rank, world_size)
    show = progress and rank == 0
    work = part_path(latents_h5, rank, world_size)
    part = _Part(work, parts[rank], fingerprint, start, stop)
    _encode_part(images, model, part, batch_size=batch_size, dtype=dtype, shape=shape, progress=show)
    if rank == 0:
        # wait on files, not on a collective: after a resume ranks may finish hours apart
        while missing := [p for p in parts if not p.is_file()]:
            if not distributed.active():
                raise ValueError(
                    f"{latents_h5}: part is incomplete: {missing[0]} missing; run that rank first"
                )
            time.sleep(POLL_S)
        encoder = {**sd_vae_description(identity["vae"], identity["revision"]), "input_range": [0, 1]}
        encoder["vae_sha256"] = identity["vae_sha256"]
        attrs = {
            "format": LATENTS_FORMAT,
            "encoder": json.dumps(encoder, sort_keys=True),
            "vae": identity["vae"],
            "vae_revision": identity["revision"] or "",
            "vae_sha256": identity["vae_sha256"],
            "input_range": [0.0, 1.0],
            "raw_mean": encoder["raw_mean"],
            "raw_std": encoder["raw_std"],
            "final_mean": encoder["final_mean"],
            "final_std": encoder["final_std"],
            "source": str(images_h5),
            "count": len(images),
            "resolution": shape[-1],
            "image_resolution": images.resolution,
            "label_dim": images.label_dim,
        }
        _assemble(images, latents_h5, parts, attrs)
    images.close()
    return {"path": str(latents_h5), "count": len(images), "shape": list(shape), "rank": rank, **identity}
