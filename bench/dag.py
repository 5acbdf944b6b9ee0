"""DAG-build time of the paper sweep: `snakemake -n` of results/fid_table.csv on config/imagenet512.yaml.

Runs the command as a user would (a fresh process, start-up included, from a repository root), with and
without `--profile slurm`, and prints seconds and job counts; best of `--repeats` (the least disturbed by
other load). `--root DIR` times another checkout (e.g. an older commit from `git archive`) the same way.
    python bench/dag.py [--repeats 3] [--root DIR] [--out dag.json]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from common import write_result

ROOT = Path(__file__).resolve().parents[1]


def dry_run(root: Path, profile: str) -> tuple[float, int]:
    """Seconds and job count of one dry run of the paper sweep from `root`."""
    cmd = [sys.executable, "-m", "snakemake", "-n", "results/fid_table.csv", "--configfile",
           "config/imagenet512.yaml", "--profile", profile]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    jobs = re.search(r"^total\s+(\d+)", proc.stdout, re.MULTILINE)
    return seconds, int(jobs[1]) if jobs else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--out", default="dag.json")
    args = parser.parse_args()
    result = {
        "root": str(args.root),
        "command": "snakemake -n results/fid_table.csv --configfile config/imagenet512.yaml",
    }
    for profile in ("none", "slurm"):
        runs = [dry_run(args.root, profile) for _ in range(args.repeats)]
        seconds = min(s for s, _ in runs)
        result[f"profile_{profile}"] = {
            "seconds": seconds,
            "jobs": runs[0][1],
            "all_seconds": [s for s, _ in runs],
        }
        print(f"--profile {profile}: {runs[0][1]} jobs in {seconds:.2f} s (best of {args.repeats})")
    write_result(result, args.out)


if __name__ == "__main__":
    main()
