"""Sampling speed on CPU: seconds per network evaluation and images/s for the demo and img512-xs networks.

    python bench/sample.py                         # edm2-demo and edm2-img512-xs, batch 1, 3 steps
    python bench/sample.py --steps 2 --threads 2   # quicker / more threads

Random-init networks (speed does not depend on the weights). For each preset: one network evaluation at
batch 1, a short Heun run through `edm_sampler` (NFE 2N - 1) and, for pixel-space presets, the full
`generate()` path (file load, per-seed noise, decode, HDF5). `overhead` = median sampler seconds /
median seconds of the same NFE bare network evaluations at the sampler's noise levels, the two timed
alternately `--repeats` times (so both see the same machine load); target < 1.05, i.e. the sampler
adds < 5% to its network evaluations. `fwd img/s` is the eager forward's images/s at the batch,
`img/s x NFE` the sampler's images/s times its NFE (equal when the sampler adds nothing); `img/s @32`
extrapolates to the paper's 63 NFE. Prints a table and writes bench/out/sample.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from common import write_result
from edm2lib.files import save_network
from edm2lib.nn.networks import Precond
from edm2lib.nn.presets import get_preset
from edm2lib.sampling.generate import generate
from edm2lib.sampling.heun import (
    count_nfe,
    edm_sampler,
    evaluation_sigmas,
    karras_sigmas,
    seed_noise_and_labels,
)


def alternate(fns, repeats: int) -> list[float]:
    """Median seconds of each function, called in turn `repeats` times after one warm-up round."""
    times = [[] for _ in fns]
    for round_ in range(repeats + 1):
        for fn, seen in zip(fns, times):
            start = time.perf_counter()
            fn()
            if round_:
                seen.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def bench_preset(name: str, steps: int, batch: int, repeats: int) -> dict:
    preset = get_preset(name)
    torch.manual_seed(0)
    net = Precond(**preset.network).eval().requires_grad_(False)
    shape = [net.img_channels, net.img_resolution, net.img_resolution]
    draw = seed_noise_and_labels(range(batch), shape, net.label_dim)
    schedule = karras_sigmas(steps)
    sigmas = [torch.full([batch], s) for s in evaluation_sigmas(schedule)]

    @torch.no_grad()
    def evaluations() -> None:  # the sampler's network calls alone
        for sigma in sigmas:
            net(draw.noise, sigma, draw.labels)

    nfe = count_nfe(schedule)["total"]
    sec_evals, sec_sample = alternate(
        [evaluations, lambda: edm_sampler(net, draw.noise, draw.labels, schedule)], repeats
    )
    sec_eval = sec_evals / nfe
    row = {
        "preset": name,
        "params_M": sum(p.numel() for p in net.parameters()) / 1e6,
        "resolution": net.img_resolution,
        "channels": net.img_channels,
        "batch": batch,
        "steps": steps,
        "nfe": nfe,
        "sec_per_eval": sec_eval,
        "sampler_img_per_s": batch / sec_sample,
        "forward_img_per_s": batch / sec_eval,
        "sampler_img_per_s_times_nfe": batch * nfe / sec_sample,
        "overhead": sec_sample / sec_evals,
        "img_per_s_at_32_steps": batch / (count_nfe(karras_sigmas(32))["total"] * sec_eval),
        "generate_img_per_s": None,
    }
    if preset.encoder == "pixels":  # the SD VAE decoder needs the hub weights: network space only for img512
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "net.safetensors"
            save_network(path, net.state_dict(), net.config, dtype=None, encoder={"kind": "pixels"}, nimg=0)
            n = 4 * batch
            summary = generate(
                path,
                range(n),
                Path(tmp) / "s.h5",
                num_steps=steps,
                batch_size=batch,
                device="cpu",
                progress=False,
            )
        row["generate_img_per_s"] = summary["images_per_s"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["edm2-demo", "edm2-img512-xs"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = [bench_preset(name, args.steps, args.batch, args.repeats) for name in args.presets]
    head = f"{'preset':<16}{'params':>8}{'shape':>10}{'batch':>6}{'NFE':>5}{'s/eval':>9}{'fwd img/s':>10}"
    head += f"{'img/s x NFE':>12}{'img/s':>9}{'overhead':>10}"
    head += f"{'img/s@32':>10}{'gen img/s':>11}"
    print(head)
    for r in rows:
        gen = "-" if r["generate_img_per_s"] is None else f"{r['generate_img_per_s']:.3f}"
        shape = f"{r['channels']}x{r['resolution']}^2"
        print(
            f"{r['preset']:<16}{r['params_M']:>7.1f}M{shape:>10}{r['batch']:>6}{r['nfe']:>5}"
            f"{r['sec_per_eval']:>9.4f}{r['forward_img_per_s']:>10.2f}{r['sampler_img_per_s_times_nfe']:>12.2f}"
            f"{r['sampler_img_per_s']:>9.3f}{r['overhead']:>10.2f}{r['img_per_s_at_32_steps']:>10.4f}{gen:>11}"
        )
    result = {
        "rows": rows,
    }
    write_result(result, "sample")


if __name__ == "__main__":
    main()
