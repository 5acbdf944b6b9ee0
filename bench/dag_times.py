"""Per-rule wall and CPU seconds of a finished pipeline run, from Snakemake's benchmark files.

python bench/dag_times.py WORKDIR [--wall SECONDS]: prints one line per rule (jobs, wall s, CPU s) and the
totals, and writes bench/out/dag_times.json. On a shared (loaded) machine the wall times are inflated by the
other processes; the CPU seconds are not, so sum(CPU) / cores and sum(CPU) bracket the idle-machine time of
the rules themselves (Snakemake start-up and per-job Python start-up come on top).
"""

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("workdir", type=Path)
    p.add_argument("--wall", type=float, default=None, help="measured wall time of the whole DAG")
    p.add_argument("--cores", type=int, default=2)
    a = p.parse_args()
    rules: dict[str, dict[str, float]] = defaultdict(lambda: {"jobs": 0, "wall_s": 0.0, "cpu_s": 0.0})
    for tsv in sorted((a.workdir / "benchmarks").rglob("*.tsv")):
        rule = tsv.relative_to(a.workdir / "benchmarks").parts[0]
        with open(tsv) as f:
            row = next(csv.DictReader(f, delimiter="\t"))
        rules[rule]["jobs"] += 1
        rules[rule]["wall_s"] += float(row["s"])
        rules[rule]["cpu_s"] += float(row["cpu_time"])
    print(f"{'rule':<12} {'jobs':>4} {'wall s':>8} {'CPU s':>8}")
    for rule, r in sorted(rules.items(), key=lambda kv: -kv[1]["wall_s"]):
        print(f"{rule:<12} {r['jobs']:>4} {r['wall_s']:>8.1f} {r['cpu_s']:>8.1f}")
    wall = sum(r["wall_s"] for r in rules.values())
    cpu = sum(r["cpu_s"] for r in rules.values())
    print(f"{'total':<12} {sum(r['jobs'] for r in rules.values()):>4} {wall:>8.1f} {cpu:>8.1f}")
    print(
        f"idle estimate of the benchmarked rules: {cpu / a.cores:.0f}..{cpu:.0f} s "
        f"(sum CPU / {a.cores} .. sum CPU)"
    )
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    result = {
        "workdir": str(a.workdir),
        "dag_wall_s": a.wall,
        "rules": rules,
        "sum_wall_s": wall,
        "sum_cpu_s": cpu,
    }
    (out / "dag_times.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
