"""Helpers for the pipeline tests: run Snakemake as users do (the CLI), a tiny image folder, job counts."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SNAKEFILE = ROOT / "Snakefile"


def snakemake(
    workdir: Path, *args: str, timeout: float = 600, check: bool = True
) -> subprocess.CompletedProcess:
    """`snakemake -s <repo>/Snakefile -d <workdir> ...` run from the repo root (profiles/default applies)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "-d", str(workdir), *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def job_counts(output: str) -> dict[str, int]:
    """The `Job stats` table of a Snakemake run or dry run: {rule: jobs}."""
    counts = {}
    table = output.split("Job stats:", 1)[1] if "Job stats:" in output else ""
    for line in table.splitlines()[3:]:
        m = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if not m:
            break
        counts[m[1]] = int(m[2])
    counts.pop("total", None)
    return counts


def image_folder(root: Path, classes: int = 10, per_class: int = 8, size: int = 20) -> Path:
    """Class sub-folders of procedural PNGs: class c is a bright square at a class-specific place."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 40, (size, size, 3), dtype=np.uint8)
            lo = 1 + c
            img[lo : lo + 8, lo : lo + 8] = 200 + rng.integers(0, 55)
            Image.fromarray(img).save(root / f"class{c}" / f"{i:03d}.png")
    return root


def ci_config(tmp: Path, **changes: dict) -> Path:
    """config/ci.yaml on a generated image folder, with `changes` merged into its sections."""
    config = yaml.safe_load((ROOT / "config" / "ci.yaml").read_text())
    folder = tmp / "raw"
    if not folder.exists():
        image_folder(folder)
    config["data"].update(source="folder", path=str(folder), transform="center-crop", max_images=None)
    config["metrics"].update(detectors=["dinov2"], floor=False)  # a folder has no held-out split
    config["metrics"].pop("classifier", None)
    for section, values in changes.items():
        config[section] = {**config[section], **values}
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
