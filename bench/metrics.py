"""Metric speed on CPU: detector images/s (Inception-v3, DINOv2 ViT-L/14) and one 2048-d Fréchet distance.

    python bench/metrics.py                      # both detectors at 64^2 and 512^2 inputs, batch 4
    python bench/metrics.py --threads 2 --batch 8

Random-init detectors (speed does not depend on the weights). For each detector and input size: the
fastest of a few timed batches (after a warm-up); `h/50k` extrapolates to the paper's 50k images.
Statistics: seconds to accumulate float64 sums for one batch of 2048-d features. Fréchet: one call of
each form on covariances of `--fd-samples` random features in `--fd-dim` dimensions, and their relative
disagreement. Prints a table and writes bench/out/metrics.json.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from common import best_of, write_result
from edm2lib.metrics import FeatureStats, frechet_distance, frechet_distance_sqrtm, load_detector


def timed(fn) -> tuple[float, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def bench_detectors(sizes: list[int], batch: int, repeats: int) -> list[dict]:
    rows = []
    for name in ("inception", "dinov2"):
        det = load_detector(name, allow_random=True, download=False)
        for size in sizes:
            x = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8)
            sec = best_of(lambda det=det, x=x: det(x), repeats)
            rows.append(
                {
                    "detector": name,
                    "dim": det.dim,
                    "input": size,
                    "batch": batch,
                    "sec_per_batch": sec,
                    "img_per_s": batch / sec,
                    "hours_per_50k": 50_000 * sec / batch / 3600,
                }
            )
        del det
    return rows


def bench_frechet(dim: int, samples: int) -> dict:
    rng = np.random.default_rng(0)
    feats = [rng.standard_normal((samples, dim)) * rng.uniform(0.1, 2, dim) for _ in range(2)]
    stats = []
    for f in feats:
        s = FeatureStats(dim)
        sec_update = best_of(lambda s=s, f=f: s.update(torch.from_numpy(f[:64])), 2)
        s = FeatureStats(dim)
        s.update(torch.from_numpy(f))
        stats.append((s.mu, s.sigma))
    (mu1, s1), (mu2, s2) = stats
    fd_eigh, sec_eigh = timed(lambda: frechet_distance(mu1, s1, mu2, s2))
    fd_sqrtm, sec_sqrtm = timed(lambda: frechet_distance_sqrtm(mu1, s1, mu2, s2))
    return {
        "dim": dim,
        "samples": samples,
        "sec_stats_update_batch64": sec_update,
        "sec_eigh": sec_eigh,
        "sec_sqrtm": sec_sqrtm,
        "sqrtm_over_eigh": sec_sqrtm / sec_eigh,
        "fd_eigh": fd_eigh,
        "fd_sqrtm": fd_sqrtm,
        "rel_diff": abs(fd_eigh - fd_sqrtm) / abs(fd_sqrtm),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fd-dim", type=int, default=2048)
    parser.add_argument("--fd-samples", type=int, default=4096)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = bench_detectors(args.sizes, args.batch, args.repeats)
    print(f"{'detector':<10}{'dim':>6}{'input':>7}{'batch':>7}{'s/batch':>10}{'img/s':>9}{'h/50k':>9}")
    for r in rows:
        print(
            f"{r['detector']:<10}{r['dim']:>6}{r['input']:>7}{r['batch']:>7}{r['sec_per_batch']:>10.3f}"
            f"{r['img_per_s']:>9.2f}{r['hours_per_50k']:>9.2f}"
        )
    fd = bench_frechet(args.fd_dim, args.fd_samples)
    print(
        f"\nFréchet d={fd['dim']} (covariances of {fd['samples']} features): eigh {fd['sec_eigh']:.2f} s, "
        f"sqrtm {fd['sec_sqrtm']:.2f} s (x{fd['sqrtm_over_eigh']:.1f}); FD {fd['fd_eigh']:.6f} vs "
        f"{fd['fd_sqrtm']:.6f}, rel diff {fd['rel_diff']:.1e}; stats update (batch 64): "
        f"{fd['sec_stats_update_batch64'] * 1e3:.1f} ms"
    )
    result = {
        "detectors": rows,
        "frechet": fd,
    }
    write_result(result, "metrics")


if __name__ == "__main__":
    main()
