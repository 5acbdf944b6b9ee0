"""CI builds `snakemake --report` for config/ci.yaml (Fashion-MNIST) and checks what a person looks at: the
table, the curves with the floor, the class grids, the detector identity, the EMA profiles, runtimes."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from edm2lib.data.fashion_mnist import DEBIAN_DIR, FILES
from pipeline_helpers import ROOT, snakemake

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not all((DEBIAN_DIR / n).is_file() for n in FILES),
        reason="needs Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)",
    ),
]


@pytest.fixture(scope="module")
def ci_run(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("ci-report")
    snakemake(work, "--cores", "2", "--configfile", str(ROOT / "config" / "ci.yaml"), timeout=1200)
    snakemake(work, "--configfile", str(ROOT / "config" / "ci.yaml"), "--report", str(work / "report.html"))
    return work


def test_ci_table_has_classifier_metrics_and_the_floor_row(ci_run):
    with open(ci_run / "results" / "fid_table.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[-1]["run"] == "real-heldout" and rows[-1]["images"] == "16"
    assert "fid" not in rows[0]  # no Inception configured: no FID column
    for r in rows:
        assert float(r["fd_classifier"]) >= 0 and 0 <= float(r["class_acc"]) <= 1
        assert "classifier.safetensors sha256:" in r["fd_classifier_detector"]
        assert "RANDOM-INIT" in r["fd_dinov2_detector"] and r["random_init"] == "True"
    assert all(r["model"] == "edm2-tiny" for r in rows[:-1])


def test_report_contains_the_table_a_class_grid_and_the_runtimes(ci_run):
    html = (ci_run / "report.html").read_text()
    assert "fid_table.csv" in html and "fid_vs_sigma_rel.png" in html
    grids = sorted((ci_run / "results" / "grids" / "tiny").glob("*.png"))
    assert len(grids) == 3 and all(g.read_bytes()[:4] == b"\x89PNG" for g in grids)
    assert re.search(r"results/grids/tiny/\d{12}-0\.\d{3}-ag\.png", html)
    assert "phema-profiles-tiny.png" in html and "classifier.json" in html
    assert "runtime" in html  # Snakemake's per-rule runtime statistics
