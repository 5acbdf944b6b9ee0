"""GPU check in one call: training-step img/s, MFU and peak memory; latent loader img/s; sampler; determinism.

Needs only torch, h5py, safetensors and numpy (no download: the data set is a synthetic latents.h5 written
here). `--smoke` runs the same code paths with a tiny network on the CPU in well under a minute.
Run: `python bench/gpu_check.py OUT_DIR [--smoke]` (or `bash bench/gpu.sh OUT_DIR`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from edm2lib.data.dataset import LATENTS_FORMAT, open_dataset
from edm2lib.data.encoders import sd_vae_description
from edm2lib.files import atomic_write_text
from edm2lib.nn.networks import Precond
from edm2lib.nn.presets import get_preset
from edm2lib.sampling.heun import edm_sampler, karras_sigmas, seed_noise_and_labels
from edm2lib.training.loss import edm2_loss

BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12}  # dense bf16 FLOP/s per GPU (vendor sheets)
HEAVY = ("diffusers", "snakemake", "matplotlib", "tqdm")  # must not come in with the engines used here


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in BF16_PEAK.items() if k in name), None)


def _network(preset: str, smoke: bool, device: torch.device) -> Precond:
    kw = get_preset(preset).network
    if smoke:  # same architecture code, tiny: 16x16 latents, 16 channels, two levels, one block each
        kw.update(img_resolution=16, model_channels=16, label_dim=10, channel_mult=(1, 2), num_blocks=1)
        kw.update(attn_resolutions=(8,))
    return Precond(**kw).to(device)


def train_step_bench(preset: str, batch: int, compiled: bool, steps: int, smoke: bool, device) -> dict:
    """img/s of network + loss + backward + Adam in bf16 autocast; FLOPs counted on one step."""
    net = _network(preset, smoke, device).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4, fused=device.type == "cuda")
    x = torch.randn(batch, net.img_channels, net.img_resolution, net.img_resolution, device=device)
    labels = torch.nn.functional.one_hot(torch.arange(batch, device=device) % net.label_dim, net.label_dim)

    def loss_fn(x, labels):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return edm2_loss(net, x, labels.float()).sum() / batch

    fn, fallback = loss_fn, None
    if compiled:
        torch._dynamo.reset()  # each configuration compiles afresh
        fn = torch.compile(loss_fn, backend="eager" if smoke else "inductor")

    def step():
        opt.zero_grad(set_to_none=True)
        fn(x, labels).backward()
        opt.step()

    try:
        step()
    except Exception as e:  # a compile failure falls back to eager with one line, as the engine does
        fallback = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        warnings.warn(f"torch.compile failed ({fallback}); timing eager", stacklevel=1)
        fn = loss_fn
        step()
    with FlopCounterMode(display=False) as counter:
        loss_fn(x, labels).backward()
    flops = counter.get_total_flops()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    seconds = (time.perf_counter() - start) / steps
    peak = _peak_flops(device)
    return {
        "preset": preset,
        "batch_gpu": batch,
        "mode": "compiled" if compiled else "eager",
        "compile_fallback": fallback,
        "img_per_s": batch / seconds,
        "step_s": seconds,
        "flops_per_step": flops,
        "mfu": flops / seconds / peak if peak else None,
        "peak_mem_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None,
    }


def write_latents(path: Path, n: int, resolution: int, label_dim: int) -> None:
    """A synthetic latents.h5 (mean, std, labels) readable by edm2lib.data.dataset."""
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f.attrs["format"] = LATENTS_FORMAT
        f.attrs["encoder"] = json.dumps(sd_vae_description(), sort_keys=True)
        shape = (n, 4, resolution, resolution)
        f.create_dataset("mean", data=rng.standard_normal(shape, dtype=np.float32))
        f.create_dataset("std", data=np.full(shape, 0.1, dtype=np.float32))
        f.create_dataset("labels", data=np.arange(n) % label_dim)


def loader_bench(path: Path, batch: int, batches: int) -> dict:
    """img/s of LatentDataset.get_batch on shuffled indices with one generator per example."""
    ds = open_dataset(path)
    order = np.random.default_rng(1).permutation(len(ds))
    start = time.perf_counter()
    for b in range(batches):
        idx = np.sort(order[(b * batch) % len(ds) :][:batch])
        ds.get_batch(idx, [torch.Generator().manual_seed(int(i)) for i in idx])
    return {"batch": batch, "img_per_s": batch * batches / (time.perf_counter() - start)}


def sample(net, gnet, seeds, steps, device) -> torch.Tensor:
    draw = seed_noise_and_labels(
        seeds, [net.img_channels, net.img_resolution, net.img_resolution], net.label_dim, device=device
    )
    guidance = 1.0 if gnet is None else 2.0
    return edm_sampler(net, draw.noise, draw.labels, karras_sigmas(steps), guidance=guidance, gnet=gnet)


def sampler_bench(smoke: bool, device, batch: int, steps: int) -> tuple[list[dict], dict]:
    """img/s of 32-step Heun sampling with and without a guide, and the determinism checks."""
    net = _network("edm2-img512-xs", smoke, device).eval().requires_grad_(False)
    gnet = _network("edm2-img512-xxs", smoke, device).eval().requires_grad_(False)
    rows = []
    with torch.no_grad():
        for guide in (None, gnet):
            sample(net, guide, range(2), 2, device)  # warm-up
            _sync(device)
            start = time.perf_counter()
            sample(net, guide, range(batch), steps, device)
            _sync(device)
            rows.append(
                {
                    "guide": guide is not None,
                    "batch": batch,
                    "steps": steps,
                    "img_per_s": batch / (time.perf_counter() - start),
                }
            )
        a = sample(net, gnet, range(16), steps, device)
        b = sample(net, gnet, range(16), steps, device)
        big = sample(net, gnet, range(64), steps, device)[:16]
    det = {
        "same_seeds_twice_identical": bool(torch.equal(a, b)),
        "batch16_vs_64_max_abs_diff": float((a - big).abs().max()),
        "batch16_vs_64_identical": bool(torch.equal(a, big)),
    }
    return rows, det


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--smoke", action="store_true", help="tiny, on the CPU, same code paths")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu" if args.smoke or not torch.cuda.is_available() else "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    heavy = sorted(m for m in HEAVY if m in sys.modules)
    steps, batches = (1, (2, 4)) if args.smoke else (20, (32, 64))
    train = [
        train_step_bench(p, b, c, steps, args.smoke, device)
        for p in ("edm2-img512-xs", "edm2-img512-s")
        for b in batches
        for c in (False, True)
    ]
    res = 16 if args.smoke else 64
    write_latents(args.out_dir / "latents.h5", 256 if args.smoke else 4096, res, 1000)
    loader = [loader_bench(args.out_dir / "latents.h5", b, 2 if args.smoke else 20) for b in batches]
    (args.out_dir / "latents.h5").unlink()
    sampler, det = sampler_bench(args.smoke, device, 8 if args.smoke else 64, 2 if args.smoke else 32)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "smoke": args.smoke,
        "torch": torch.__version__,
        "heavy_imports": heavy,
        "train": train,
        "loader": loader,
        "sampler": sampler,
        "determinism": det,
    }
    atomic_write_text(args.out_dir / "gpu_check.json", json.dumps(result, indent=2) + "\n")
    lines = [f"device {result['device']}  torch {torch.__version__}  heavy imports {heavy or 'none'}"]
    lines.append(f"{'preset':<16}{'batch':>6}{'mode':>10}{'img/s':>10}{'MFU':>7}{'peak GB':>9}")
    for r in train:
        mfu = f"{r['mfu']:.2f}" if r["mfu"] is not None else "-"
        mem = f"{r['peak_mem_gb']:.1f}" if r["peak_mem_gb"] is not None else "-"
        mode = r["mode"] + ("*" if r["compile_fallback"] else "")
        lines.append(f"{r['preset']:<16}{r['batch_gpu']:>6}{mode:>10}{r['img_per_s']:>10.1f}{mfu:>7}{mem:>9}")
    lines += [f"loader batch {r['batch']}: {r['img_per_s']:.0f} img/s" for r in loader]
    lines += [
        f"sampler guide={r['guide']} batch {r['batch']} x {r['steps']} steps: {r['img_per_s']:.2f} img/s"
        for r in sampler
    ]
    lines.append(f"determinism: {det}")
    table = "\n".join(lines)
    (args.out_dir / "gpu_check.txt").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
