"""Tiny data sets and configs shared by the training tests (not a test module)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from edm2lib.data.dataset import IMAGES_FORMAT, LATENTS_FORMAT
from edm2lib.data.encoders import sd_vae_description

ROOT = Path(__file__).resolve().parents[1]
TINY_NET = dict(model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])
TINY_NET["channels_per_head"] = 8


def write_images(path: Path, n: int = 24, resolution: int = 8, classes: int = 3, seed: int = 0) -> Path:
    """An images.h5 in the documented layout: uint8 [N,H,W,3] + int64 labels, pixel encoder."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=rng.integers(0, 256, (n, resolution, resolution, 3), dtype=np.uint8))
        f.create_dataset("labels", data=rng.integers(0, classes, n).astype(np.int64))
        f.attrs["format"] = IMAGES_FORMAT
        f.attrs["encoder"] = json.dumps({"kind": "pixels"})
    return path


def tiny_config(tmp: Path, **overrides) -> dict:
    """A training config that takes a fraction of a second per step on one CPU core."""
    data = tmp / "images.h5"
    if not data.exists():
        write_images(data)
    cfg = dict(
        data=str(data),
        run_dir=str(tmp / "run"),
        network=dict(TINY_NET),
        batch=8,
        duration=8 * 20,
        lr_ref=0.01,
        t_ref=64,
        warmup=32,
        snapshot_nimg=0,
        checkpoint_nimg=0,
        checkpoint_minutes=0,
        status_nimg=8,
        device="cpu",
        deterministic=True,
    )
    cfg.update(overrides)
    return cfg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(cfg: dict, tmp: Path, rank: int = 0, world: int = 1, port: int = 0, srun: bool = False, **popen):
    """Start `python -m edm2lib.training` as one rank, with torchrun's or srun's environment if world > 1."""
    config = tmp / f"config-{rank}.json"
    config.write_text(json.dumps(cfg))
    drop = ("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    if world > 1 and srun:  # what slurmstepd gives each task of `srun -n world`
        env.update(SLURM_PROCID=str(rank), SLURM_STEP_NUM_TASKS=str(world), SLURM_LOCALID=str(rank))
        env.update(SLURM_STEP_ID="0", SLURM_STEP_NODELIST="localhost", MASTER_PORT=str(port))
    elif world > 1:
        env.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cmd = [sys.executable, "-m", "edm2lib.training", "--config", str(config)]
    return subprocess.Popen(cmd, env=env, cwd=tmp, **popen)


def write_latents(path: Path, n: int = 16, resolution: int = 8, classes: int = 3, seed: int = 0) -> Path:
    """A latents.h5 in the documented layout: mean/std float32 [N,4,h,w] + labels, SD-VAE encoder."""
    rng = np.random.default_rng(seed)
    shape = (n, 4, resolution, resolution)
    with h5py.File(path, "w") as f:
        f.create_dataset("mean", data=rng.normal(size=shape).astype(np.float32))
        f.create_dataset("std", data=rng.uniform(0.05, 0.2, size=shape).astype(np.float32))
        f.create_dataset("labels", data=rng.integers(0, classes, n).astype(np.int64))
        f.attrs["format"] = LATENTS_FORMAT
        f.attrs["encoder"] = json.dumps(sd_vae_description())
    return path
