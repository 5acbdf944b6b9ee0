"""Training speed on the CPU: images/s, s/step and peak memory per preset, and data-loader headroom.

    python bench/train.py                                   # edm2-demo at batch 32, edm2-img512-xs at batch 1
    python bench/train.py --presets edm2-demo --steps 5

Each preset trains on a generated data set of its shape (pixels: images.h5, latents: latents.h5) through
the real `Trainer` (data, per-example noise, forward, backward, Adam, both EMAs), one warm-up step, then
`--steps` timed steps. The loader column times the host-side work alone (sampler, HDF5 reads, latent
sampling, noise draws) on micro-batches of `--loader-batch` (a realistic per-rank size even when the timed
training batch is 1): its images/s divided by the training images/s is the headroom, which must stay
>= 10. Peak memory is the process's peak RSS after the preset ran (presets run smallest first). Prints
a table and writes bench/out/train.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from common import write_result
from edm2lib.data.dataset import IMAGES_FORMAT, LATENTS_FORMAT
from edm2lib.data.encoders import sd_vae_description
from edm2lib.nn.presets import get_preset
from edm2lib.training.config import TrainConfig
from edm2lib.training.loop import Trainer
from edm2lib.training.loss import draw_noise


def make_dataset(path: Path, network: dict, n: int = 256) -> Path:
    """A random data set with the preset's resolution, channels and label_dim (latents for 4 channels)."""
    rng = np.random.default_rng(0)
    res, classes = network["img_resolution"], network["label_dim"]
    with h5py.File(path, "w") as f:
        if network["img_channels"] == 3:
            f.create_dataset("images", data=rng.integers(0, 256, (n, res, res, 3), dtype=np.uint8))
            f.attrs["format"] = IMAGES_FORMAT
            f.attrs["encoder"] = json.dumps({"kind": "pixels"})
        else:
            shape = (n, 4, res, res)
            f.create_dataset("mean", data=rng.normal(size=shape).astype(np.float32), chunks=(1, 4, res, res))
            f.create_dataset("std", data=np.full(shape, 0.1, np.float32), chunks=(1, 4, res, res))
            f.attrs["format"] = LATENTS_FORMAT
            f.attrs["encoder"] = json.dumps(sd_vae_description())
        if classes:
            f.create_dataset("labels", data=(np.arange(n) * 7 + classes - 1) % classes)
    return path


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def bench(name: str, batch: int, steps: int, loader_steps: int, loader_batch: int, tmp: Path) -> dict:
    preset = get_preset(name)
    data = make_dataset(tmp / f"{name}.h5", preset.network)
    cfg = TrainConfig.from_dict(
        dict(
            data=str(data),
            run_dir=str(tmp / name),
            preset=name,
            batch=batch,
            duration=batch * 10_000,
            snapshot_nimg=0,
            checkpoint_nimg=0,
            checkpoint_minutes=0,
            status_nimg=batch,
            device="cpu",
            dtype="fp32",
        )
    )
    trainer = Trainer(cfg)
    trainer.step()  # warm-up (allocations, first weight normalisation)
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.step()
    sec_step = (time.perf_counter() - t0) / steps
    shape = (trainer.dataset.channels, trainer.dataset.resolution, trainer.dataset.resolution)
    t0 = time.perf_counter()
    for i in range(loader_steps):
        positions = range(i * loader_batch, (i + 1) * loader_batch)
        trainer._examples(positions)
        draw_noise(positions, shape, cfg.P_mean, cfg.P_std, cfg.seed)
    loader_ips = loader_steps * loader_batch / (time.perf_counter() - t0)
    train_ips = batch / sec_step
    return {
        "preset": name,
        "params": sum(p.numel() for p in trainer.params),
        "batch": batch,
        "sec_per_step": sec_step,
        "train_images_per_s": train_ips,
        "loader_batch": loader_batch,
        "loader_images_per_s": loader_ips,
        "loader_headroom": loader_ips / train_ips,
        "peak_rss_gib": peak_rss_gib(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["edm2-demo", "edm2-img512-xs"])
    parser.add_argument("--batches", nargs="+", type=int, default=[32, 1], help="one per preset")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--loader-steps", type=int, default=50)
    parser.add_argument("--loader-batch", type=int, default=32, help="micro-batch of the loader timing")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, batch in zip(args.presets, args.batches):
            rows.append(bench(name, batch, args.steps, args.loader_steps, args.loader_batch, Path(tmp)))
    print(f"{'preset':<16} {'params':>12} {'batch':>5} {'s/step':>8} {'img/s':>9} {'loader img/s':>13} "
          f"{'headroom':>9} {'peak RSS GiB':>13}")  # fmt: skip
    for r in rows:
        print(
            f"{r['preset']:<16} {r['params']:>12,d} {r['batch']:>5d} {r['sec_per_step']:>8.3f} "
            f"{r['train_images_per_s']:>9.2f} {r['loader_images_per_s']:>13.0f} "
            f"{r['loader_headroom']:>8.0f}x "
            f"{r['peak_rss_gib']:>13.2f}"
        )
    write_result({"steps": args.steps, "results": rows}, "train")


if __name__ == "__main__":
    main()
