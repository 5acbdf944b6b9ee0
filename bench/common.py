"""What every benchmark shares: best-of timing, the machine it ran on, an atomic JSON result in bench/out/."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from edm2lib.files import atomic_write_text

OUT_DIR = Path(__file__).resolve().parent / "out"


def machine() -> dict[str, Any]:
    """Torch version, threads, CPU or GPU name and load: the context every figure needs."""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(),
        "gpu": gpu,
        "load_average": os.getloadavg(),
    }


def best_of(fn, repeats: int) -> float:
    """Fastest of `repeats` timed calls (after one warm-up call): the least disturbed by other load."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def write_result(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write `result` plus `machine()` as JSON (a bare name goes to bench/out/<name>.json); print the path."""
    path = Path(path)
    if path.parent == Path("."):
        path = OUT_DIR / path.with_suffix(".json").name
    atomic_write_text(path, json.dumps({**result, "machine": machine()}, indent=2) + "\n")
    print(f"wrote {path}")
    return path
