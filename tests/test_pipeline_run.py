"""The tiny CI pipeline end to end with the local executor, and what a changed config reruns."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import h5py
import pytest
import yaml

from edm2lib.files import read_network_meta
from pipeline_helpers import ci_config, job_counts, snakemake

pytestmark = pytest.mark.slow
RULES = ["prepare", "train_config", "train", "phema", "phema_plot", "refstats", "sample", "score", "table"]


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> Path:
    """A finished run of config/ci.yaml (on a generated image folder) in a fresh working directory."""
    work = tmp_path_factory.mktemp("ci-run")
    proc = snakemake(work, "--cores", "2", "--configfile", str(ci_config(work)))
    assert job_counts(proc.stdout + proc.stderr).keys() >= set(RULES)
    return work


def rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_ci_pipeline_writes_table_plots_samples_logs_and_benchmarks(ran):
    table = rows(ran / "results" / "fid_table.csv")
    assert [r["sigma_rel"] for r in table] == ["0.0500", "0.1000", "0.1500"]
    for r in table:
        assert (
            r["run"] == "tiny"
            and r["model"] == "edm2-tiny"
            and r["nimg"] == "256"
            and r["guide"] == "tiny@128/0.100"
        )
        assert (
            r["nfe"] == "14" and r["images"] == "16" and r["seeds"] == "0-15" and r["random_init"] == "True"
        )
        assert float(r["fd_dinov2"]) > 0 and r["fd_dinov2_detector"].startswith("RANDOM-INIT")
        assert "fid" not in r  # no Inception in the CI config: no FID column
    with h5py.File(ran / "samples" / "tiny" / "000000000256-0.100-ag" / "block0.h5") as f:
        assert f["images"].shape == (16, 16, 16, 3) and list(f["seeds"][:3]) == [0, 1, 2]
    for png in [
        "results/fid_vs_sigma_rel.png",
        "results/phema-profiles-tiny.png",
        "samples/tiny/000000000256-0.050-ag/block0.png",
    ]:
        assert (ran / png).read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in (ran / "runs" / "tiny" / "phema").glob("phema-*")) == [
        "phema-000000000128-0.100.safetensors",
        "phema-000000000256-0.050.safetensors",
        "phema-000000000256-0.100.safetensors",
        "phema-000000000256-0.150.safetensors",
    ]
    logged = {p.name for p in (ran / "logs").iterdir()}
    assert logged >= set(RULES)
    assert {p.name for p in (ran / "benchmarks").iterdir()} >= {
        "prepare",
        "train",
        "phema",
        "sample",
        "score",
    }


def edited(work: Path, section: str, values: dict) -> Path:
    config = yaml.safe_load((work / "config.yaml").read_text())
    config[section] = {**config[section], **values}
    path = work / f"{section}-edit.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def param_changes(work: Path, config: Path) -> list[str]:
    """`snakemake --list-changes params`: the outputs whose params differ from their recorded ones."""
    proc = snakemake(work, "--list-changes", "params", "--configfile", str(config))
    return sorted(proc.stdout.split())


def test_nothing_to_do_after_a_finished_run(ran):
    proc = snakemake(ran, "-n", "--configfile", str(ran / "config.yaml"))
    assert job_counts(proc.stdout) == {}
    assert param_changes(ran, ran / "config.yaml") == []


def test_forcerun_reruns_the_rule_and_what_depends_on_it_only(ran):
    proc = snakemake(ran, "-n", "--configfile", str(ran / "config.yaml"), "--forcerun", "table")
    assert job_counts(proc.stdout) == {"table": 1, "all": 1}


def test_new_guidance_setting_samples_and_scores_only_the_new_points(ran):
    config = edited(ran, "guidance", {"none": {"w": 1.0}})
    proc = snakemake(ran, "-n", "--configfile", str(config))
    assert job_counts(proc.stdout) == {"sample": 3, "score": 3, "class_grid": 3, "table": 1, "all": 1}


def test_missing_weights_file_fails_the_rule_that_needs_it_naming_the_file(ran, tmp_path):
    (tmp_path / "data" / "ci").mkdir(parents=True)
    shutil.copy(ran / "data" / "ci" / "images.h5", tmp_path / "data" / "ci" / "images.h5")
    config = yaml.safe_load((ran / "config.yaml").read_text())
    config["metrics"].update(
        weights={"dinov2": "/nonexistent/dinov2_vitl14_pretrain.pth"}, random_arch={}, allow_random_init=False
    )
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake(
        tmp_path,
        "data/ci/ref-dinov2.npz",  # targets before --configfile, which takes several values
        "--cores",
        "1",
        "--configfile",
        str(tmp_path / "config.yaml"),
        check=False,
    )
    assert proc.returncode != 0
    assert "error: FileNotFoundError: dinov2 weights /nonexistent/dinov2_vitl14_pretrain.pth not found" in (
        proc.stdout + proc.stderr
    )
    assert not (tmp_path / "data" / "ci" / "ref-dinov2.npz").exists()


def test_missing_data_folder_fails_prepare_naming_the_folder(tmp_path):
    config = yaml.safe_load(ci_config(tmp_path).read_text())
    config["data"]["path"] = str(tmp_path / "no-such-folder")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake(
        tmp_path,
        "data/ci/images.h5",
        "--cores",
        "1",
        "--configfile",
        str(tmp_path / "config.yaml"),
        check=False,
    )
    assert proc.returncode != 0
    assert f"{tmp_path / 'no-such-folder'}" in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "section, values",
    [("sampling", {"batch": 4}), ("metrics", {"batch": 4, "download": True}), ("data", {"encode_batch": 2})],
    ids=["sampling.batch", "metrics.batch", "data.encode_batch"],
)
def test_performance_only_edit_plans_no_job_and_no_param_change(ran, section, values):
    config = edited(ran, section, values)
    proc = snakemake(ran, "-n", "--configfile", str(config))
    assert job_counts(proc.stdout) == {}
    assert param_changes(ran, config) == []


def test_runtime_training_keys_rerun_nothing(ran):
    config = yaml.safe_load((ran / "config.yaml").read_text())
    config["runs"]["tiny"].update(checkpoint_minutes=3, status_nimg=128, batch_gpu=4)
    path = ran / "runtime-edit.yaml"
    path.write_text(yaml.safe_dump(config))  # sorted keys: the params must not depend on the key order
    assert job_counts(snakemake(ran, "-n", "--configfile", str(path)).stdout) == {}
    assert param_changes(ran, path) == []


def test_num_steps_or_guidance_weight_reruns_exactly_the_dependent_samples_and_scores(ran):
    steps = snakemake(ran, "-n", "--configfile", str(edited(ran, "sampling", {"num_steps": 5})))
    assert job_counts(steps.stdout) == {
        "sample": 3,
        "score": 3,
        "class_grid": 3,
        "table": 1,
        "all": 1,
    }  # 3 sigma_rel x ag
    points = [f"tiny/000000000256-{s}-ag/block0" for s in ("0.050", "0.100", "0.150")]
    assert param_changes(ran, ran / "sampling-edit.yaml") == sorted(
        [f"samples/{p}.h5" for p in points] + [f"samples/{p}.png" for p in points]
        + [f"metrics/{p}.json" for p in points]
    )  # fmt: skip
    weight = edited(
        ran, "guidance", {"ag": {"w": 2.0, "guide": {"run": "tiny", "nimg": 128, "sigma_rel": 0.1}}}
    )
    assert job_counts(snakemake(ran, "-n", "--configfile", str(weight)).stdout) == {
        "sample": 3,
        "score": 3,
        "class_grid": 3,
        "table": 1,
        "all": 1,
    }


def state_files(run: Path) -> dict[str, bytes]:
    """Every file under a run's checkpoints/ and snapshots/, by relative path."""
    return {
        str(p.relative_to(run)): p.read_bytes()
        for d in ("checkpoints", "snapshots")
        for p in sorted((run / d).rglob("*"))
        if p.is_file()
    }


def test_stale_training_stops_before_training_naming_the_changed_key_and_forcerun_trains_afresh(
    ran, tmp_path
):
    work = tmp_path / "copy"
    shutil.copytree(ran, work, symlinks=True)
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["runs"]["tiny"]["lr_ref"] = 0.02
    path = work / "lr-edit.yaml"
    path.write_text(yaml.safe_dump(config))
    plan = snakemake(work, "-n", "--configfile", str(path))
    counts = job_counts(plan.stdout)
    assert counts["train_config"] == counts["train"] == counts["phema"] == 1
    print("\ndry run after an lr_ref edit:", counts)
    run = work / "runs" / "tiny"
    before = state_files(run)
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    target = "runs/tiny/trained.json"  # (targets before --configfile, which takes several values)
    proc = snakemake(work, target, "--cores", "1", "--configfile", str(path), check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    line = next(ln for ln in output.splitlines() if "another identity" in ln)
    print("message:", line)
    assert re.search(r"lr_ref: [0-9.]+ -> 0.02", line) and f"--forcerun {target}" in line
    assert "not retried" in output  # the retries repeated the message instead of training again
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == checkpoints
    old = re.search(r"stale-([0-9a-f]{16})/", line)[1]
    snakemake(work, target, "--forcerun", target, "--cores", "1", "--configfile", str(path))
    stale = run / f"stale-{old}"
    assert state_files(stale) == before  # set aside whole: nothing lost
    trained = json.loads((run / "trained.json").read_text())
    assert trained["identity"] != old and trained["snapshots"]
    assert {read_network_meta(work / p)["identity"] for p in trained["snapshots"]} == {trained["identity"]}
    assert not (run / "fresh.json").exists()


def test_effective_config_is_written_and_shown_in_the_report(ran):
    effective = yaml.safe_load((ran / "results" / "config.effective.yaml").read_text())
    assert effective["runs"]["tiny"]["seed"] == 0 and effective["metrics"]["download"] is False  # + defaults
    snakemake(ran, "--report", str(ran / "report.html"), "--configfile", str(ran / "config.yaml"))
    html = (ran / "report.html").read_text()
    assert "effective config" in html and '"tiny"' in html


# Last: this one runs the pipeline with a new grid point, which changes the shared run's state.
def test_new_sigma_rel_reruns_one_reconstruction_pass_and_only_the_new_point(ran):
    config = edited(ran, "phema", {"sigma_rel": [0.05, 0.10, 0.15, 0.20]})
    proc = snakemake(ran, "-n", "--configfile", str(config))
    assert job_counts(proc.stdout) == {
        "phema": 1,
        "phema_plot": 1,
        "sample": 1,
        "score": 1,
        "class_grid": 1,
        "table": 1,
        "all": 1,
    }
    old = ran / "samples" / "tiny" / "000000000256-0.100-ag" / "block0.h5"
    before = old.stat().st_mtime_ns
    snakemake(ran, "--cores", "2", "--configfile", str(config))
    assert old.stat().st_mtime_ns == before  # existing samples were not redone
    assert [r["sigma_rel"] for r in rows(ran / "results" / "fid_table.csv")][-1] == "0.2000"
