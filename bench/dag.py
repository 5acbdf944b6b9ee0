"""DAG-build time of the paper sweep: `snakemake -n` of results/fid_table.csv on config/imagenet512.yaml.

Runs the command as a user would (a fresh process, start-up included, from a repository root), with and
without `--profile slurm`, and prints wall seconds, CPU seconds (user + sys of the process: less disturbed
by other load than wall time) and job counts; best of `--repeats`. `--baseline DIR` times another checkout
(e.g. an older commit from `git archive`) the same way, interleaved run by run, so both see the same load.
    python bench/dag.py [--repeats 3] [--baseline DIR] [--out dag.json]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import write_result

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ("none", "slurm")


def dry_run(root: Path, profile: str) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds and job count of one dry run of the paper sweep from `root`."""
    cmd = [sys.executable, "-m", "snakemake", "-n", "results/fid_table.csv", "--configfile",
           "config/imagenet512.yaml", "--profile", profile]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    jobs = re.search(r"^total\s+(\d+)", proc.stdout, re.MULTILINE)
    return seconds, cpu, int(jobs[1]) if jobs else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another checkout to time the same way")
    parser.add_argument("--out", default="dag.json")
    args = parser.parse_args()
    roots = {"this": ROOT, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    runs: dict[tuple[str, str], list[tuple[float, float, int]]] = {}
    load_before = os.getloadavg()
    for _ in range(args.repeats):
        for profile in PROFILES:
            for name, root in roots.items():
                runs.setdefault((name, profile), []).append(dry_run(root, profile))
    result = {
        "command": "snakemake -n results/fid_table.csv --configfile config/imagenet512.yaml --profile P",
        "load_average_before": load_before,
        "roots": {name: str(root) for name, root in roots.items()},
    }
    print(
        f"{'checkout':10} {'--profile':10} {'jobs':>6} {'wall s':>8} {'cpu s':>8}  (best of {args.repeats})"
    )
    for (name, profile), rs in runs.items():
        wall, cpu = min(r[0] for r in rs), min(r[1] for r in rs)
        result[f"{name}_profile_{profile}"] = {
            "jobs": rs[0][2], "seconds": wall, "cpu_seconds": cpu,
            "all_seconds": [r[0] for r in rs], "all_cpu_seconds": [r[1] for r in rs],
        }  # fmt: skip
        print(f"{name:10} {profile:10} {rs[0][2]:6d} {wall:8.2f} {cpu:8.2f}")
    write_result(result, args.out)


if __name__ == "__main__":
    main()
