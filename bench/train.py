"""Training speed on the CPU: images/s, s/step and peak memory per preset, and data-loader headroom.

    python bench/train.py                                   # edm2-demo at batch 32, edm2-img512-xs at batch 1
    python bench/train.py --presets edm2-demo --steps 5

Each preset trains on a generated data set of its shape (pixels: images.h5, latents: latents.h5) through
the real `Trainer` (data, per-example noise, forward, backward, Adam, both EMAs), one warm-up step, then
`--steps` timed steps. The loader column times the host-side work alone (sampler, HDF5 reads, latent
sampling, noise draws) on micro-batches of `--loader-batch` (a realistic per-rank size even when the timed
training batch is 1): its images/s divided by the training images/s is the headroom, which must stay
>= 10. Peak memory is the process's peak RSS after the preset ran (presets run smallest first).

The engine table (`--engine-presets`, default edm2-tiny and edm2-demo at their preset batches) runs two
`Trainer`s of the same seed side by side: `compile: false` (eager) and `compile: true` (torch.compile of
network + loss + backward). It reports the compile time (first step minus a steady step), each one's
median s/step over `--engine-steps` steps taken alternately (so both see the same machine load), the
speed-up, the steps after which compiling has paid for itself, and how far the compiled step's loss and
gradients are from eager's on the first step. Each preset compiles into a fresh inductor cache, so the
compile time is a new machine's, not a cache hit. `compile: auto` picks eager on the CPU. Prints tables and
writes bench/out/train.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
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


def bench_config(name: str, batch: int, tmp: Path, run: str, **overrides) -> TrainConfig:
    """A CPU fp32 config of preset `name` on a generated data set, without snapshots or checkpoints."""
    preset = get_preset(name)
    data = tmp / f"{name}.h5"
    if not data.exists():
        make_dataset(data, preset.network)
    values = dict(
        data=str(data),
        run_dir=str(tmp / run),
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
    return TrainConfig.from_dict({**values, **overrides})


def timed_step(trainer: Trainer) -> tuple[float, float]:
    """(seconds, loss sum) of one training step."""
    start = time.perf_counter()
    loss = float(trainer.step())
    return time.perf_counter() - start, loss


def engine_vs_eager(name: str, batch: int | None, steps: int, tmp: Path) -> dict:
    """Compiled against eager `Trainer` steps of preset `name`, taken alternately (same load)."""
    from torch._inductor.utils import fresh_cache

    with fresh_cache(dir=str(tmp)):  # a cold compile in an empty cache, as on a new machine
        return _engine_vs_eager(name, batch or get_preset(name).batch, steps, tmp)


def _engine_vs_eager(name: str, batch: int, steps: int, tmp: Path) -> dict:
    torch._dynamo.reset()  # each preset compiles afresh, as in its own training process
    eager = Trainer(bench_config(name, batch, tmp, f"{name}-eager", compile=False))
    engine = Trainer(bench_config(name, batch, tmp, f"{name}-compiled", compile=True))
    (first_eager, loss_eager), (first_engine, loss_engine) = timed_step(eager), timed_step(engine)  # compiles
    grads = [(p.grad, q.grad) for p, q in zip(eager.params, engine.params) if p.grad is not None]
    grad_diff = max(float((a - b).abs().max() / a.abs().max().clamp_min(1e-30)) for a, b in grads)
    t_eager, t_engine = [], []
    for _ in range(steps):
        t_eager.append(timed_step(eager)[0])
        t_engine.append(timed_step(engine)[0])
    s_eager, s_engine = statistics.median(t_eager), statistics.median(t_engine)
    compile_s = first_engine - s_engine
    gain = s_eager - s_engine
    return {
        "preset": name,
        "batch": batch,
        "compiled": engine.loss_step.is_compiled,
        "compile_failure": engine.loss_step.failure,
        "first_step_eager_s": first_eager,
        "compile_s": compile_s,
        "eager_sec_per_step": s_eager,
        "compiled_sec_per_step": s_engine,
        "speedup": s_eager / s_engine,
        "break_even_steps": compile_s / gain if gain > 0 else None,
        "first_loss_rel_diff": abs(loss_engine - loss_eager) / abs(loss_eager),
        "first_grad_max_rel_diff": grad_diff,
    }


def bench(name: str, batch: int, steps: int, loader_steps: int, loader_batch: int, tmp: Path) -> dict:
    cfg = bench_config(name, batch, tmp, name)
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
    parser.add_argument("--presets", nargs="*", default=["edm2-demo", "edm2-img512-xs"])
    parser.add_argument("--batches", nargs="+", type=int, default=[32, 1], help="one per preset")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--loader-steps", type=int, default=50)
    parser.add_argument("--loader-batch", type=int, default=32, help="micro-batch of the loader timing")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--engine-presets", nargs="*", default=["edm2-tiny", "edm2-demo"])
    parser.add_argument("--engine-batches", nargs="*", type=int, default=[], help="default: preset batch")
    parser.add_argument("--engine-steps", type=int, default=10, help="timed steps of each trainer")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows, engine_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, batch in zip(args.presets, args.batches):
            rows.append(bench(name, batch, args.steps, args.loader_steps, args.loader_batch, Path(tmp)))
        for i, name in enumerate(args.engine_presets):
            batch = args.engine_batches[i] if i < len(args.engine_batches) else None
            engine_rows.append(engine_vs_eager(name, batch, args.engine_steps, Path(tmp)))
    if rows:
        print(f"{'preset':<16} {'params':>12} {'batch':>5} {'s/step':>8} {'img/s':>9} {'loader img/s':>13} "
              f"{'headroom':>9} {'peak RSS GiB':>13}")  # fmt: skip
    for r in rows:
        print(
            f"{r['preset']:<16} {r['params']:>12,d} {r['batch']:>5d} {r['sec_per_step']:>8.3f} "
            f"{r['train_images_per_s']:>9.2f} {r['loader_images_per_s']:>13.0f} "
            f"{r['loader_headroom']:>8.0f}x "
            f"{r['peak_rss_gib']:>13.2f}"
        )
    if engine_rows:
        print(f"\n{'engine (CPU)':<16} {'batch':>5} {'compile s':>10} {'eager s/step':>13} "
              f"{'compiled s/step':>16} {'speed-up':>9} {'break-even steps':>17} "
              f"{'grad rel diff':>14}")  # fmt: skip
    for r in engine_rows:
        even = f"{r['break_even_steps']:.0f}" if r["break_even_steps"] is not None else "never"
        print(
            f"{r['preset']:<16} {r['batch']:>5d} {r['compile_s']:>10.1f} {r['eager_sec_per_step']:>13.4f} "
            f"{r['compiled_sec_per_step']:>16.4f} {r['speedup']:>8.2f}x {even:>17} "
            f"{r['first_grad_max_rel_diff']:>14.1e}"
            + ("" if r["compiled"] else f"  (compile failed: {r['compile_failure']})")
        )
    result = {"steps": args.steps, "results": rows, "engine_steps": args.engine_steps, "engine": engine_rows}
    write_result(result, "train")


if __name__ == "__main__":
    main()
