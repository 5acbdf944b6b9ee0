"""Planning the DAG (what the Snakefile and common.smk compute per config, per run and per point) imports
no torch: its import costs seconds of every `snakemake` start, dry runs included (bench/dag.py)."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["imagenet512.yaml", "ablation.yaml", "config.yaml"])
def test_planning_a_config_imports_no_torch(name):
    script = textwrap.dedent(f"""
        import sys, yaml
        from edm2lib.pipeline import config as pipeline
        from edm2lib.pipeline.steps import training_identity
        from edm2lib.pipeline.table import FLOOR_RUN
        config = yaml.safe_load(open({str(ROOT / "config" / name)!r}))
        pipeline.validate_config(config, {str(ROOT / "workflow/schemas/config.schema.yaml")!r})
        points = pipeline.points(config)
        for p in points:
            pipeline.guide_target(config, p)
            pipeline.traditional_sigma_rel(config["runs"][p.run], p.nimg)
        released = pipeline.official_runs(config)
        for run in config["runs"]:
            if run not in released:
                training_identity(config["runs"][run], "data/x/images.h5", f"runs/{{run}}")
        pipeline.detector_settings(config, config["metrics"]["detectors"])
        print(len(points), "torch" in sys.modules)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    n_points, torch_imported = proc.stdout.split()
    assert int(n_points) > 0 and torch_imported == "False"
