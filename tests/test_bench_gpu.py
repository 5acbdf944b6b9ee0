"""bench/gpu.sh --smoke: the GPU check's code paths run on the CPU and write the promised JSON."""

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_writes_every_figure_and_is_deterministic(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu.sh"), "--smoke", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["smoke"] is True
    assert not {"diffusers", "snakemake", "matplotlib"} & set(result["heavy_imports"])
    modes = {(r["preset"], r["batch_gpu"], r["mode"]) for r in result["train"]}
    assert len(modes) == 8  # XS and S x two batches x eager/compiled
    for r in result["train"]:
        assert r["img_per_s"] > 0 and r["flops_per_step"] > 0 and r["compile_fallback"] is None
    assert [r["guide"] for r in result["sampler"]] == [False, True]
    assert all(r["img_per_s"] > 0 for r in result["loader"] + result["sampler"])
    det = result["determinism"]
    assert det["same_seeds_twice_identical"] is True
    assert det["batch16_vs_64_max_abs_diff"] < 1e-3
    assert "determinism" in (tmp_path / "gpu_check.txt").read_text()
    assert not (tmp_path / "latents.h5").exists()
