"""Status output of a training run: log.txt, stats.jsonl, the progress bar and peak memory (rank 0 writes)."""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch

from edm2lib import files


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated GPU memory, or the process's peak resident set size on the CPU, in GiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


class RunLog:
    """Rank 0 appends readable lines to log.txt (and stdout) and status records to stats.jsonl."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        self.text = run_dir / files.RUN_LOG
        self.stats = run_dir / files.RUN_STATS

    def __call__(self, message: str) -> None:
        if self.enabled:
            line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
            print(line, flush=True)
            with open(self.text, "a") as f:
                f.write(line + "\n")

    def record(self, stats: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.stats, "a") as f:
                f.write(json.dumps(stats, sort_keys=True) + "\n")

    def truncate_stats(self, nimg: int) -> None:
        """Drop status records beyond `nimg` (written by a run that died after its last checkpoint), and a
        torn last line (a write cut off by a kill) with a warning."""
        if self.enabled:
            files.truncate_jsonl(self.stats, nimg)


def progress_bar(enabled: bool, total: int, initial: int) -> Any:
    """A tqdm bar in images on rank 0 when stderr is a terminal, else None."""
    if not (enabled and sys.stderr.isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="img", unit_scale=True, dynamic_ncols=True)
