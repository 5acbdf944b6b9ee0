"""Multi-rank generation: network files -> EDM sampler -> decoded uint8 images (HDF5, PNG grid, stream)."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from edm2lib import distributed
from edm2lib.data.encoders import make_codec
from edm2lib.files import atomic_path, load_network, sha256_file
from edm2lib.sampling.heun import check_sampler_inputs, count_nfe, edm_sampler, seed_noise_and_labels

SAMPLES_FORMAT = "edm2lib.samples/1"  # attrs["format"] of every samples HDF5 file
GRID_MAX = 64  # the PNG grid shows the first (in seed order) 64 images at most

_NFE_KEYS = ("num_steps", "sigma_min", "sigma_max", "rho", "guidance", "guidance_interval")
_NFE_KEYS += ("S_churn", "S_min", "S_max")  # the settings that decide how often each network runs
OnBatch = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]


def rank_batches(num_seeds: int, batch_size: int, rank: int, world: int) -> list[np.ndarray]:
    """Index chunks of this rank: world * ceil(n / (batch * world)) near-equal chunks, rank r takes r::world.

    The official split (docs/sampling.md); results do not depend on it because every image has its own seed.
    """
    num_batches = world * max(math.ceil(num_seeds / (batch_size * world)), 1)
    chunks = np.array_split(np.arange(num_seeds), num_batches)
    return [c for c in chunks[rank::world] if len(c)]


class _Rows:
    """Rows of an HDF5 file written at given indices; datasets are created on the first batch."""

    def __init__(self, path: Path, num_rows: int):
        import h5py

        self.path = path
        self.file = h5py.File(path, "w")
        self.num_rows = num_rows

    def write(self, index: np.ndarray, images: np.ndarray, seeds: np.ndarray, labels: np.ndarray) -> None:
        if "images" not in self.file:
            shape = (self.num_rows, *images.shape[1:])
            self.file.create_dataset("images", shape, np.uint8, chunks=(1, *images.shape[1:]))
            self.file.create_dataset("seeds", (self.num_rows,), np.int64)
            self.file.create_dataset("labels", (self.num_rows,), np.int64)
        sl = slice(int(index[0]), int(index[-1]) + 1)  # chunks are contiguous index ranges
        self.file["images"][sl], self.file["seeds"][sl], self.file["labels"][sl] = images, seeds, labels


def _part_path(out_h5: Path, rank: int, world: int) -> Path:
    """Where `rank` writes its rows before rank 0 merges them (beside `out_h5`: a shared file system)."""
    return out_h5.with_name(f".{out_h5.name}.rank{rank}-of-{world}.part.h5")


def _write_grid(path: str | os.PathLike, images: np.ndarray) -> None:
    """A near-square PNG grid of uint8 [K,H,W,C] images, written atomically."""
    from PIL import Image

    k, h, w, c = images.shape
    cols = math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    grid = np.zeros([rows * h, cols * w, c], np.uint8)
    for i, img in enumerate(images):
        r, q = divmod(i, cols)
        grid[r * h : (r + 1) * h, q * w : (q + 1) * w] = img
    with atomic_path(path) as tmp:
        Image.fromarray(grid.squeeze(-1) if c == 1 else grid).save(tmp, format="PNG")


def _merge_parts(out_h5: Path, parts: list[Path], num_rows: int, attrs: dict[str, Any]) -> None:
    """Rank 0: copy every rank's rows (at their seed-order indices) into `out_h5`, atomically.

    A single part already holds every row: it gets the attrs and is renamed into place without a copy.
    """
    import h5py

    if len(parts) == 1:
        with h5py.File(parts[0], "a") as f:
            del f["ranges"]
            f.attrs.update(attrs)
        with atomic_path(out_h5) as tmp:
            os.replace(parts[0], tmp)
        return
    with atomic_path(out_h5) as tmp:
        rows = _Rows(tmp, num_rows)
        with rows.file:
            for part in parts:
                with h5py.File(part, "r") as f:
                    for lo, hi in f["ranges"][:]:
                        index = np.arange(lo, hi)
                        rows.write(index, f["images"][lo:hi], f["seeds"][lo:hi], f["labels"][lo:hi])
            rows.file.attrs.update(attrs)
    for part in parts:
        part.unlink()


def _load_networks(
    net_path: str | os.PathLike, gnet_path: str | os.PathLike | None, device: torch.device
) -> tuple[torch.nn.Module, torch.nn.Module | None, dict[str, Any]]:
    """(net, guide or None, net metadata); unreadable files and guides in another space raise here."""
    net, meta = load_network(net_path, device)  # FileNotFoundError / ValueError naming the file
    if "encoder" not in meta:
        raise ValueError(f"{net_path}: network metadata has no 'encoder'; cannot decode its samples")
    if gnet_path is None:
        return net, None, meta
    gnet, gmeta = load_network(gnet_path, device)
    kind, gkind = meta["encoder"]["kind"], gmeta.get("encoder", meta["encoder"])["kind"]
    if gkind != kind:
        raise ValueError(f"{gnet_path}: the guide works in {gkind} space but {net_path} in {kind} space")
    return net, gnet, meta


def _sample_attrs(
    net_path: str | os.PathLike,
    gnet_path: str | os.PathLike | None,
    meta: dict[str, Any],
    settings: dict[str, Any],
    nfe: dict[str, int],
    class_idx: int | None,
) -> dict[str, Any]:
    """HDF5 attributes of a samples file: provenance (files + sha256) and the sampler settings."""
    interval = settings["guidance_interval"]
    return {
        "format": SAMPLES_FORMAT,
        "network": str(net_path),
        "network_sha256": sha256_file(net_path),
        "guide": str(gnet_path or ""),
        "guide_sha256": sha256_file(gnet_path) if gnet_path is not None else "",
        "sampler": json.dumps(settings, default=str, sort_keys=True),
        "guidance": float(settings["guidance"]),
        "guidance_interval": np.array(interval if interval is not None else [], np.float64),
        "class_idx": -1 if class_idx is None else int(class_idx),
        "encoder": json.dumps(meta["encoder"], sort_keys=True),
        "nfe": nfe["total"],
        "nfe_main": nfe["main"],
        "nfe_guide": nfe["guide"],
    }


def generate(
    net_path: str | os.PathLike,
    seeds: Sequence[int],
    out_h5: str | os.PathLike | None = None,
    gnet_path: str | os.PathLike | None = None,
    guidance: float = 1.0,
    guidance_interval: Sequence[float] | None = None,
    num_steps: int = 32,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    class_idx: int | None = None,
    grid_png: str | os.PathLike | None = None,
    on_batch: OnBatch | None = None,
    vae: Any = None,
    progress: bool = True,
    **sampler_kwargs: Any,
) -> dict[str, Any]:
    """Sample one image per seed with `edm_sampler`, decode with the network's `encoder`, and hand them out.

    Outputs (any combination): `out_h5` (`images` uint8 [N,H,W,3], `seeds`, `labels` (-1: unconditional)
    in the order of `seeds`, attrs with the network files, their sha256 and the sampler settings), `grid_png`
    (the first 64 images) and `on_batch(images_uint8 [B,H,W,3], seeds [B], labels [B])`, called on every rank
    with that rank's batches. Seeds are split across torch.distributed ranks (if initialised); rank 0 writes
    the files. `sampler_kwargs` (sigma_min, sigma_max, rho, S_churn, ...) go to `edm_sampler`.
    Returns a summary (images, seconds, images/s, NFE, settings).
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("no seeds given; pass e.g. seeds=range(50000)")
    if out_h5 is None and grid_png is None and on_batch is None:
        raise ValueError("nothing to do: pass out_h5, grid_png and/or on_batch")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    rank, world = distributed.rank_world()
    device = distributed.resolve_device(device)

    net, gnet, meta = _load_networks(net_path, gnet_path, device)
    if class_idx is not None and net.label_dim == 0:
        raise ValueError(f"class_idx={class_idx} given but {net_path} is unconditional (label_dim 0)")
    shape = [net.img_channels, net.img_resolution, net.img_resolution]
    check_sampler_inputs(net, torch.zeros([1, *shape]), None, num_steps, guidance, gnet, guidance_interval)
    codec = make_codec(meta["encoder"], device, vae)
    settings = {"num_steps": num_steps, "guidance": guidance, "guidance_interval": guidance_interval}
    settings.update(sampler_kwargs)
    nfe = count_nfe(**{k: v for k, v in settings.items() if k in _NFE_KEYS})

    batches = rank_batches(len(seeds), batch_size, rank, world)
    grid_n = min(len(seeds), GRID_MAX) if grid_png is not None else 0
    grid: dict[int, np.ndarray] = {}
    part = None
    if out_h5 is not None:
        out_h5 = Path(out_h5)
        part = _Rows(_part_path(out_h5, rank, world), len(seeds))
    bar = tqdm(total=sum(len(b) for b in batches), unit="img", disable=rank != 0 or not progress)
    start = time.perf_counter()
    ranges = []
    try:
        for index in batches:
            batch_seeds = [seeds[i] for i in index]
            draw = seed_noise_and_labels(batch_seeds, shape, net.label_dim, device, class_idx)
            x = edm_sampler(
                net, draw.noise, draw.labels, num_steps, guidance=guidance, gnet=gnet,
                guidance_interval=guidance_interval, generators=draw.generators, **sampler_kwargs,
            )  # fmt: skip
            images = codec.decode(x).cpu()
            seeds_t = torch.tensor(batch_seeds, dtype=torch.int64)
            if on_batch is not None:
                on_batch(images, seeds_t, draw.classes)
            if part is not None:
                part.write(index, images.numpy(), seeds_t.numpy(), draw.classes.numpy())
                ranges.append((int(index[0]), int(index[-1]) + 1))
            grid.update({int(i): img for i, img in zip(index, images.numpy()) if i < grid_n})
            bar.update(len(index))
        if part is not None:
            part.file.create_dataset("ranges", data=np.array(ranges, np.int64).reshape(-1, 2))
    except BaseException:
        if part is not None:
            part.file.close()
            part.path.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    if part is not None:
        part.file.close()
    seconds = time.perf_counter() - start

    if world > 1:  # a collective: on return every rank has closed its part file
        gathered: list[Any] = [None] * world
        torch.distributed.all_gather_object(gathered, (grid, seconds))
        grid = {k: v for g, _ in gathered for k, v in g.items()}
        seconds = max(s for _, s in gathered)
    if rank == 0 and out_h5 is not None:
        attrs = _sample_attrs(net_path, gnet_path, meta, settings, nfe, class_idx)
        _merge_parts(out_h5, [_part_path(out_h5, r, world) for r in range(world)], len(seeds), attrs)
    if rank == 0 and grid_png is not None:
        _write_grid(grid_png, np.stack([grid[i] for i in range(grid_n)]))
    if world > 1:
        torch.distributed.barrier()  # the outputs exist when any rank returns
    return {
        "network": str(net_path),
        "guide": None if gnet_path is None else str(gnet_path),
        "images": len(seeds),
        "seconds": seconds,
        "images_per_s": len(seeds) / seconds if seconds > 0 else float("inf"),
        "nfe": nfe,
        "settings": settings,
        "out_h5": None if out_h5 is None else str(out_h5),
        "grid_png": None if grid_png is None else str(grid_png),
        "world_size": world,
    }
