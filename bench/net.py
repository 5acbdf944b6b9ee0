"""Training-step throughput of the EDM2 network: forward+backward images/s and peak memory, eager vs compiled.

    PYTHONPATH=src python bench/net.py --preset edm2-tiny --batch 8 --iters 5
    PYTHONPATH=src python bench/net.py --preset edm2-img512-xs --device cuda --batch 64 --dtypes bf16,fp16

One step = `edm2_loss(...).sum() / batch` then backward, in train mode (forced weight normalisation
included); images/s and ms/step come from the median timed step. Prints a table and writes JSON to
bench/out/net-<preset>-<device>.json. On CUDA it also reports model FLOP utilisation (--peak-tflops).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time

import torch

from common import write_result
from edm2lib.nn.networks import Precond
from edm2lib.nn.presets import get_preset
from edm2lib.training.loss import edm2_loss

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def make_batch(network: dict, batch: int, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    res, ch, label_dim = network["img_resolution"], network["img_channels"], network["label_dim"]
    x = (torch.randn(batch, ch, res, res, generator=g) * 0.5).to(device)
    labels = None
    if label_dim:
        labels = torch.eye(label_dim)[torch.randint(label_dim, (batch,), generator=g)].to(device)
    return x, labels


def train_flops_per_image(network: dict, device: torch.device) -> float:
    """Matmul/conv FLOPs (2 per multiply-add) of one forward+backward, per image, counted at batch 2."""
    from torch.utils.flop_counter import FlopCounterMode

    net = Precond(**network).to(device).train()
    x, labels = make_batch(network, 2, device)
    with FlopCounterMode(display=False) as counter:
        edm2_loss(net, x, labels).sum().backward()
    return counter.get_total_flops() / 2


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(network: dict, mode: str, dtype: str, device: torch.device, batch: int, iters: int, warmup: int):
    torch.manual_seed(0)
    net = Precond(**network, compute_dtype=DTYPES[dtype]).to(device).train()
    step_net = torch.compile(net) if mode == "compile" else net
    x, labels = make_batch(network, batch, device)

    def step(seed: int) -> float:
        net.zero_grad(set_to_none=True)
        loss = edm2_loss(step_net, x, labels, generator=torch.Generator(device).manual_seed(seed))
        (loss.sum() / batch).backward()
        return loss.detach().mean().item()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    first_loss = step(0)  # includes compilation when compiled
    for i in range(1, warmup):
        step(i)
    sync(device)
    t_warm = time.perf_counter() - t0
    times = []  # per step: the median resists other jobs on a shared machine
    for i in range(iters):
        t0 = time.perf_counter()
        step(warmup + i)
        sync(device)
        times.append(time.perf_counter() - t0)
    median, best = statistics.median(times), min(times)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:  # process-wide high-water mark (cumulative over the run's configurations)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "mode": mode,
        "dtype": dtype,
        "images_per_s": batch / median,
        "step_ms": 1000 * median,
        "best_step_ms": 1000 * best,
        "warmup_s": t_warm,
        "peak_mib": peak,
        "first_loss": first_loss,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="edm2-tiny", help="edm2lib.nn.presets name")
    parser.add_argument("--config", default=None, help="JSON Precond keywords instead of a preset")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps (the first one compiles)")
    parser.add_argument("--modes", default="eager,compile")
    parser.add_argument(
        "--dtypes", default=None, help="comma list of fp32,bf16,fp16 (default: fp32 on CPU, bf16 on CUDA)"
    )
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument(
        "--peak-tflops", type=float, default=989.0, help="dense bf16/fp16 peak for MFU (H100/H200)"
    )
    parser.add_argument("--out", default=None, help="JSON path (default bench/out/net-<name>-<device>.json)")
    args = parser.parse_args(argv)

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    network = json.loads(args.config) if args.config else get_preset(args.preset).network
    name = "config" if args.config else args.preset
    dtypes = (args.dtypes or ("bf16" if device.type == "cuda" else "fp32")).split(",")
    flops = train_flops_per_image(network, device)

    rows = []
    for dtype in dtypes:
        for mode in args.modes.split(","):
            row = run(network, mode, dtype, device, args.batch, args.iters, args.warmup)
            row["train_gflop_per_image"] = flops / 1e9
            if device.type == "cuda":
                row["mfu"] = row["images_per_s"] * flops / (args.peak_tflops * 1e12)
            rows.append(row)
            print(f"done: {mode} {dtype} {row['images_per_s']:.2f} img/s", file=sys.stderr, flush=True)
    for dtype in dtypes:  # speed-up of compiled over eager, measured in this run
        eager = next((r for r in rows if r["dtype"] == dtype and r["mode"] == "eager"), None)
        for r in rows:
            if eager and r["dtype"] == dtype:
                r["speedup_vs_eager"] = r["images_per_s"] / eager["images_per_s"]

    print(f"{name} on {device} ({torch.get_num_threads()} thr), batch {args.batch}, {args.iters} steps timed")
    print(f"train GFLOP/image {flops / 1e9:.3f}")
    header = (
        f"{'mode':8} {'dtype':5} {'img/s':>9} {'ms/step':>9} {'best ms':>9} {'x eager':>8} {'peak MiB':>9}"
        f" {'warm s':>7}"
    )
    print(header + ("  MFU" if device.type == "cuda" else ""))
    for r in rows:
        line = (
            f"{r['mode']:8} {r['dtype']:5} {r['images_per_s']:9.1f} {r['step_ms']:9.1f} "
            f"{r['best_step_ms']:9.1f} {r.get('speedup_vs_eager', float('nan')):8.2f} "
            f"{r['peak_mib']:9.0f} {r['warmup_s']:7.1f}"
        )
        print(line + (f"  {r['mfu']:.1%}" if "mfu" in r else ""))

    result = {
        "name": name,
        "network": network,
        "device": str(device),
        "batch": args.batch,
        "iters": args.iters,
        "rows": rows,
    }
    write_result(result, args.out or f"net-{name}-{device.type}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
