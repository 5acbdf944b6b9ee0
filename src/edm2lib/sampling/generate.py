"""Multi-rank generation: network files -> EDM sampler -> decoded uint8 images (HDF5, PNG grid, stream)."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from edm2lib import distributed
from edm2lib.data.encoders import make_codec
from edm2lib.files import atomic_path, load_network, sha256_file
from edm2lib.sampling.heun import (
    check_sampler_inputs,
    count_nfe,
    edm_sampler,
    karras_sigmas,
    seed_noise_and_labels,
)

SAMPLES_FORMAT = "edm2lib.samples/1"  # attrs["format"] of every samples HDF5 file
GRID_MAX = 64  # the PNG grid shows the first (in seed order) 64 images at most

SCHEDULE_KEYS = ("sigma_min", "sigma_max", "rho")  # generate()'s keywords for karras_sigmas
_CHURN_KEYS = ("S_churn", "S_min", "S_max")  # with the schedule and guidance: how often each network runs
OnBatch = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]


class SampleBatch(NamedTuple):
    """One decoded batch: rows `index` of the seed list, their seeds, uint8 images and class labels."""

    index: np.ndarray  # int64 [B]: positions in `seeds` (a contiguous range)
    seeds: torch.Tensor  # int64 [B]
    images: torch.Tensor  # uint8 [B,H,W,C] on the CPU
    labels: torch.Tensor  # int64 [B]: class index, -1 when unconditional


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


class _PartWriter:
    """This rank's rows of the samples file, in `_part_path`; `ranges` records which rows it holds."""

    def __init__(self, path: Path, num_rows: int):
        self.rows = _Rows(path, num_rows)
        self.ranges: list[tuple[int, int]] = []

    def __call__(self, batch: SampleBatch) -> None:
        self.rows.write(batch.index, batch.images.numpy(), batch.seeds.numpy(), batch.labels.numpy())
        self.ranges.append((int(batch.index[0]), int(batch.index[-1]) + 1))

    def finish(self) -> None:
        ranges = np.array(self.ranges, np.int64).reshape(-1, 2)
        self.rows.file.create_dataset("ranges", data=ranges)
        self.rows.file.close()

    def abort(self) -> None:
        self.rows.file.close()
        self.rows.path.unlink(missing_ok=True)


class _GridCollector:
    """Keeps the images of the first `size` seeds (by seed-list position) that pass through it."""

    def __init__(self, size: int):
        self.size = size
        self.images: dict[int, np.ndarray] = {}

    def __call__(self, batch: SampleBatch) -> None:
        images = batch.images.numpy()
        self.images.update({int(i): img for i, img in zip(batch.index, images) if i < self.size})


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


def sample_batches(
    net: torch.nn.Module,
    codec: Any,
    seeds: Sequence[int],
    batches: Sequence[np.ndarray],
    sigmas: torch.Tensor | Sequence[float],
    *,
    gnet: torch.nn.Module | None = None,
    guidance: float = 1.0,
    guidance_interval: Sequence[float] | None = None,
    class_idx: int | None = None,
    device: str | torch.device = "cpu",
    **sampler_kwargs: Any,
) -> Iterator[SampleBatch]:
    """Sample and decode (with `codec`) the seeds at each chunk of positions in `batches`, one batch a chunk.

    Each image's noise, class and churn noise come from its own seed (`seed_noise_and_labels`), so an image
    does not depend on the chunking. `sampler_kwargs` (S_churn, S_min, S_max, S_noise, ...) go to
    `edm_sampler`.
    """
    shape = [net.img_channels, net.img_resolution, net.img_resolution]
    for index in batches:
        batch_seeds = [seeds[i] for i in index]
        draw = seed_noise_and_labels(batch_seeds, shape, net.label_dim, device, class_idx)
        x = edm_sampler(
            net, draw.noise, draw.labels, sigmas, guidance=guidance, gnet=gnet,
            guidance_interval=guidance_interval, generators=draw.generators, **sampler_kwargs,
        )  # fmt: skip
        seeds_t = torch.tensor(batch_seeds, dtype=torch.int64)
        yield SampleBatch(index, seeds_t, codec.decode(x).cpu(), draw.classes)


def _check_request(seeds: list[int], out_h5: Any, grid_png: Any, on_batch: Any, batch_size: int) -> None:
    if not seeds:
        raise ValueError("no seeds given; pass e.g. seeds=range(50000)")
    if out_h5 is None and grid_png is None and on_batch is None:
        raise ValueError("nothing to do: pass out_h5, grid_png and/or on_batch")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")


def _sampler_settings(
    num_steps: int, guidance: float, guidance_interval: Sequence[float] | None, sampler_kwargs: dict[str, Any]
) -> tuple[torch.Tensor, dict[str, Any], dict[str, int], dict[str, Any]]:
    """(sigmas, the settings a samples file records, NFE per image, the keywords left for `edm_sampler`)."""
    rest = dict(sampler_kwargs)
    schedule = {k: rest.pop(k) for k in SCHEDULE_KEYS if k in rest}
    sigmas = karras_sigmas(num_steps, **schedule)
    settings = {"num_steps": num_steps, "guidance": guidance, "guidance_interval": guidance_interval}
    settings.update(schedule, **rest)
    churn = {k: v for k, v in rest.items() if k in _CHURN_KEYS}
    return sigmas, settings, count_nfe(sigmas, guidance, guidance_interval, **churn), rest


def _consume(stream: Iterator[SampleBatch], writers: list[Callable], total: int, show: bool) -> float:
    """Hand every batch to each writer in turn; returns the seconds it took (sampling included)."""
    bar = tqdm(total=total, unit="img", disable=not show)
    start = time.perf_counter()
    try:
        for batch in stream:
            for write in writers:
                write(batch)
            bar.update(len(batch.index))
    finally:
        bar.close()
    return time.perf_counter() - start


def _gather(grid: dict[int, np.ndarray], seconds: float, world: int) -> tuple[dict[int, np.ndarray], float]:
    """All ranks' grid images and the slowest rank's seconds (a collective: every part is closed after)."""
    if world == 1:
        return grid, seconds
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, (grid, seconds))
    return {k: v for g, _ in gathered for k, v in g.items()}, max(s for _, s in gathered)


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
    the files. The schedule is `karras_sigmas(num_steps, sigma_min, sigma_max, rho)` (those three may be
    given in `sampler_kwargs`); the other `sampler_kwargs` (S_churn, ...) go to `edm_sampler`.
    Returns a summary (images, seconds, images/s, NFE, settings).
    """
    seeds = [int(s) for s in seeds]
    _check_request(seeds, out_h5, grid_png, on_batch, batch_size)
    rank, world = distributed.rank_world()
    device = distributed.resolve_device(device)
    net, gnet, meta = _load_networks(net_path, gnet_path, device)
    if class_idx is not None and net.label_dim == 0:
        raise ValueError(f"class_idx={class_idx} given but {net_path} is unconditional (label_dim 0)")
    sigmas, settings, nfe, sampler_kwargs = _sampler_settings(
        num_steps, guidance, guidance_interval, sampler_kwargs
    )
    shape = [net.img_channels, net.img_resolution, net.img_resolution]
    check_sampler_inputs(net, torch.zeros([1, *shape]), None, sigmas, guidance, gnet, guidance_interval)
    codec = make_codec(meta["encoder"], device, vae)

    batches = rank_batches(len(seeds), batch_size, rank, world)
    stream = sample_batches(
        net, codec, seeds, batches, sigmas, gnet=gnet, guidance=guidance,
        guidance_interval=guidance_interval, class_idx=class_idx, device=device, **sampler_kwargs,
    )  # fmt: skip
    grid = _GridCollector(min(len(seeds), GRID_MAX) if grid_png is not None else 0)
    part = None if out_h5 is None else _PartWriter(_part_path(Path(out_h5), rank, world), len(seeds))
    streamed = None if on_batch is None else lambda b: on_batch(b.images, b.seeds, b.labels)
    writers = [w for w in (streamed, part, grid) if w is not None]
    try:
        seconds = _consume(stream, writers, sum(len(b) for b in batches), progress and rank == 0)
        if part is not None:
            part.finish()
    except BaseException:
        if part is not None:
            part.abort()
        raise

    grid_images, seconds = _gather(grid.images, seconds, world)
    if rank == 0 and out_h5 is not None:
        attrs = _sample_attrs(net_path, gnet_path, meta, settings, nfe, class_idx)
        parts = [_part_path(Path(out_h5), r, world) for r in range(world)]
        _merge_parts(Path(out_h5), parts, len(seeds), attrs)
    if rank == 0 and grid_png is not None:
        _write_grid(grid_png, np.stack([grid_images[i] for i in range(grid.size)]))
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
