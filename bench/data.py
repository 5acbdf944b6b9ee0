"""Data throughput: prepare (images/s) on generated JPEGs, and random-access training-batch reads from HDF5.

    python bench/data.py                   # 500 JPEGs 256x256 -> 64x64, batches of 64
    python bench/data.py --images 100      # quicker

Prints a table and writes bench/out/data.json. Ratios compare methods measured in this one run.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from PIL import Image

from common import write_result
from edm2lib.data import open_dataset, prepare_dataset
from edm2lib.data.dataset import LATENTS_FORMAT
from edm2lib.data.encoders import sd_vae_description


def make_jpegs(root: Path, n: int, size: int, classes: int = 10) -> None:
    """Photo-like JPEGs (smooth colour fields + noise) in class folders, sizes varying around `size`."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        d = root / f"class{i % classes:02d}"
        d.mkdir(parents=True, exist_ok=True)
        a, b, c = rng.uniform(0, 6, 3)
        field = np.stack([np.sin(a * xx + b * yy), np.cos(b * xx - c * yy), np.sin(c * (xx + yy))], axis=2)
        img = (field * 100 + 128 + rng.normal(0, 12, field.shape)).clip(0, 255).astype(np.uint8)
        w = size + int(rng.integers(0, size // 2))  # landscape crops like ImageNet's
        Image.fromarray(img).resize((w, size)).save(d / f"{i:06d}.jpg", quality=90)


def make_latents(path: Path, n: int, res: int) -> None:
    """A latents.h5 with random mean/std [n,4,res,res] float32 (the img512 shape for res 64)."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        for name in ("mean", "std"):
            f.create_dataset(
                name, data=rng.standard_normal((n, 4, res, res), dtype=np.float32), chunks=(1, 4, res, res)
            )
        f.create_dataset("labels", data=rng.integers(0, 1000, n))
        f.create_dataset("class_names", data=np.asarray([str(i) for i in range(1000)], dtype=object),
                         dtype=h5py.string_dtype())  # fmt: skip
        f.attrs["format"] = LATENTS_FORMAT
        f.attrs["encoder"] = json.dumps(sd_vae_description())


def time_reads(fn, n_items: int, batch: int, batches: int, seed: int = 0) -> float:
    """Images per second for `batches` random batches (after one warm-up batch)."""
    rng = np.random.default_rng(seed)
    fn(rng.integers(0, n_items, batch))
    t0 = time.perf_counter()
    for _ in range(batches):
        fn(rng.integers(0, n_items, batch))
    return batches * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--latents", type=int, default=2000, help="rows of the synthetic 4x64x64 latents file")
    ap.add_argument("--out", default="data", help="JSON path, or a name under bench/out/")
    args = ap.parse_args()
    torch.set_num_threads(1)  # as in a DataLoader worker; several threads thrash on a loaded 2-core machine
    rows: list[tuple[str, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_jpegs(tmp / "src", args.images, args.size)
        prep = {}
        for workers in sorted({1, min(2, os.cpu_count() or 1)}):
            s = prepare_dataset(
                tmp / "src", tmp / f"w{workers}.h5", args.resolution, workers=workers, progress=False
            )
            prep[workers] = s["images_per_s"]
            rows.append(
                (
                    f"prepare {args.size}->{args.resolution} dhariwal, {workers} worker(s)",
                    prep[workers],
                    "img/s",
                )
            )
        ds = open_dataset(tmp / "w1.h5")
        with h5py.File(tmp / "w1.h5") as f:
            images = f["images"]
            loop = time_reads(
                lambda idx: np.stack([images[int(i)] for i in idx]), len(ds), args.batch, args.batches
            )
            fancy = time_reads(lambda idx: images[np.unique(idx)], len(ds), args.batch, args.batches)
        reader = time_reads(lambda idx: ds.get_batch(idx), len(ds), args.batch, args.batches)
        rows += [
            (f"images.h5 get_batch({args.batch}) {args.resolution}px (uint8 -> float32)", reader, "img/s"),
            (f"images.h5 raw per-index loop {args.resolution}px", loop, "img/s"),
            (f"images.h5 raw h5py fancy index (sorted list) {args.resolution}px", fancy, "img/s"),
        ]
        make_latents(tmp / "latents.h5", args.latents, 64)
        lat = open_dataset(tmp / "latents.h5")
        gen = torch.Generator().manual_seed(0)
        lat_rate = time_reads(lambda idx: lat.get_batch(idx, gen), len(lat), args.batch, args.batches)
        rows.append((f"latents.h5 get_batch({args.batch}) 8x64x64 + noise", lat_rate, "img/s"))
        jpeg_mb = sum(p.stat().st_size for p in (tmp / "src").rglob("*.jpg")) / 2**20
    ratio = prep.get(2, prep[1]) / prep[1]
    print(f"{'measure':62s} {'value':>10s}")
    for name, value, unit in rows:
        print(f"{name:62s} {value:10.1f} {unit}")
    print(f"prepare 2 workers / 1 worker: {ratio:.2f}x; per-index loop / fancy index: {loop / fancy:.0f}x")
    result = {
        "args": vars(args),
        "jpeg_mib": jpeg_mb,
        "rows": [{"measure": n, "value": v, "unit": u} for n, v, u in rows],
        "prepare_speedup_2_workers": ratio,
        "loop_vs_fancy_index": loop / fancy,
    }
    write_result(result, args.out)


if __name__ == "__main__":
    main()
