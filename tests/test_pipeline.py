"""Pipeline config: schema errors are one line, the grid expands as documented, paper DAGs build fast."""

from __future__ import annotations

import copy
import json
import time

import pytest
import yaml

from edm2lib.pipeline import config as pipeline
from edm2lib.pipeline import table as report
from pipeline_helpers import ROOT, job_counts, snakemake

SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / name).read_text())


def check(config: dict) -> dict:
    return pipeline.validate_config(config, SCHEMA)


@pytest.mark.parametrize(
    "name", ["config.yaml", "ci.yaml", "fashion-mnist-long.yaml", "imagenet512.yaml", "imagenet64.yaml"]
)
def test_shipped_configs_pass_the_schema(name):
    config = check(load(name))
    assert config["sampling"]["seed_blocks"] >= 1 and config["metrics"]["batch"] >= 1  # defaults filled in


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda c: c["runs"]["tiny"].update(batchsize=8),
            "config: runs.tiny: Additional properties are not allowed",
        ),
        (
            lambda c: c["sampling"].update(images="many"),
            "config: sampling.images: 'many' is not of type 'integer'",
        ),
        (
            lambda c: c["phema"].update(sigma_rel=[0.05, 0.3]),
            "config: phema.sigma_rel.1: 0.3 is greater than or equal",
        ),
        (
            lambda c: c["phema"].update(sigma_rel=[0.0]),
            "config: phema.sigma_rel.0: 0.0 is less than or equal",
        ),
        (lambda c: c["data"].update(source="folder"), "config: data: 'path' is a required property"),
        (
            lambda c: c["guidance"]["ag"]["guide"].update(run="big"),
            "config: guidance.ag.guide.run: unknown run 'big'",
        ),
        (
            lambda c: c["guidance"]["ag"]["guide"].update(nimg=100),
            "nimg 100 of run 'tiny' must be a multiple of",
        ),
        (lambda c: c["runs"]["tiny"].update(duration=250), "runs.tiny: duration 250 is not a multiple of"),
        (lambda c: c["phema"].update(sigma_rel=[0.1, 0.1001]), "values must differ in the first 3 decimals"),
        (lambda c: c["runs"].update({"..": c["runs"]["tiny"]}), "runs: name '..' must use only A-Z"),
        (lambda c: c["runs"].update({"a..b": c["runs"]["tiny"]}), "contain '..'"),
        (lambda c: c["data"].update(name="../x"), "data.name: name '../x' must use only"),
        (
            lambda c: c["guidance"]["ag"].update(interval=[2.0, 0.5]),
            "guidance.ag.interval: [2.0, 0.5] must be [low, high] with low < high",
        ),
    ],
    ids=[
        "unknown-key",
        "wrong-type",
        "sigma-rel-too-big",
        "sigma-rel-zero",
        "missing-data-path",
        "unknown-guide",
        "guide-time-not-a-snapshot",
        "duration-not-snapshot-multiple",
        "sigma-rel-duplicate",
        "run-name-dotdot",
        "run-name-inner-dotdot",
        "data-name-path",
        "guidance-interval-order",
    ],
)
def test_bad_config_gives_one_line_naming_the_key(edit, message):
    config = load("ci.yaml")
    edit(config)
    with pytest.raises(ValueError) as info:
        check(config)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_config_stops_snakemake_before_any_job(tmp_path):
    config = load("ci.yaml")
    config["runs"]["tiny"]["batchsize"] = 8
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake(tmp_path, "-n", "--configfile", str(tmp_path / "bad.yaml"), check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "config: runs.tiny: Additional properties are not allowed ('batchsize' was unexpected)" in output
    assert "Job stats" not in output


def test_points_are_runs_times_grid_times_guidance_and_guide_runs_are_not_sampled():
    config = check(load("imagenet512.yaml"))
    points = pipeline.points(config)
    assert len(points) == 6 * 32 * 3
    assert {p.run for p in points} == {"xs", "s", "m", "l", "xl", "xxl"}
    assert {p.guidance for p in points if p.run == "m"} == {"none", "cfg12", "cfg20"}
    assert points[0].name == "002147483648-0.010-none"
    # the CFG guide is the unconditional XS at the guided point's sigma_rel (the paper's setting)
    cfg = next(
        p for p in points if p.run == "l" and p.guidance == "cfg12" and abs(p.sigma_rel - 0.085) < 1e-9
    )
    assert pipeline.guide_target(config, cfg) == ("xs_uncond", 2147483648, 0.085)
    assert len(pipeline.phema_targets(config, "xs_uncond")) == 32
    assert pipeline.seed_range(config, 2) == (100000, 150000)


def test_autoguidance_target_joins_the_run_own_reconstructions():
    config = check(load("ci.yaml"))
    assert pipeline.phema_targets(config, "tiny") == [(128, 0.1), (256, 0.05), (256, 0.1), (256, 0.15)]
    record = pipeline.point_record(config, pipeline.points(config)[0], 0)
    assert record["guide"] == "tiny@128/0.100" and record["seeds"] == "0-15" and record["w"] == 1.5


def test_training_config_maps_run_keys_and_unconditional_runs():
    from edm2lib.pipeline.steps import training_config
    from edm2lib.training.config import TrainConfig

    config = check(load("imagenet512.yaml"))
    values = training_config(config["runs"]["xs_uncond"], "data/img512/latents.h5", "runs/xs_uncond")
    assert values["network"]["label_dim"] == 0 and values["sigma_rels"] == [0.05, 0.10]
    assert "guidance" not in values and "conditional" not in values
    cfg = TrainConfig.from_dict(values)
    assert cfg.duration == 2048 * 2**20 and cfg.preset == "edm2-img512-xs"


def _record(block: int, sigma_rel: float, fid: float, fd: float, random_init: bool = False) -> dict:
    return {
        "run": "s",
        "model": "edm2-img512-s",
        "nimg": 2147483648,
        "sigma_rel": sigma_rel,
        "guidance": "none",
        "w": 1.0,
        "guide": "",
        "interval": "",
        "steps": 32,
        "seeds": f"{block * 50000}-{block * 50000 + 49999}",
        "block": block,
        "nfe": 63,
        "images": 50000,
        "random_init": random_init,
        "fid": fid,
        "fd_dinov2": fd,
        "fid_detector": "inception-v3-tf-2015-12-05 pt_inception.pth sha256:6726825d0af5",
        "fd_dinov2_detector": "dinov2-vitl14 dinov2_vitl14_pretrain.pth sha256:0123456789ab",
    }


def test_table_folds_seed_blocks_into_min_and_mean_per_point(tmp_path):
    paths = []
    for i, (block, s, fid, fd) in enumerate(
        [(0, 0.13, 2.60, 70.0), (1, 0.13, 2.56, 69.0), (2, 0.13, 2.62, 68.64), (0, 0.10, 2.70, 72.0)]
    ):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(_record(block, s, fid, fd)))
    rows = report.write_results(paths, tmp_path / "t.csv", tmp_path / "p.png")
    assert [r["sigma_rel"] for r in rows] == [0.10, 0.13]
    best = rows[1]
    assert best["fid"] == 2.56 and abs(best["fid_mean"] - (2.60 + 2.56 + 2.62) / 3) < 1e-12
    assert best["fd_dinov2"] == 68.64 and best["images"] == 150000 and best["seed_blocks"] == 3
    assert best["seeds"] == "0-49999 50000-99999 100000-149999"
    header, *lines = (tmp_path / "t.csv").read_text().splitlines()
    # the metrics computed have columns; the classifier's (not computed here) have none
    assert header.split(",") == report.present_columns(rows) and len(lines) == 2
    assert "fid" in header.split(",") and "fd_classifier" not in header and "class_acc" not in header
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_dry_run_of_the_imagenet512_paper_grid_counts_every_job(tmp_path):
    start = time.perf_counter()
    proc = snakemake(tmp_path, "-n", "--configfile", str(ROOT / "config" / "imagenet512.yaml"))
    seconds = time.perf_counter() - start
    counts = job_counts(proc.stdout)
    print(
        f"\nimagenet512 dry run: {sum(counts.values())} jobs in {seconds:.1f} s (snakemake start-up included)"
    )
    points = 6 * 32 * 3  # six models x 32 sigma_rel x (no guidance, FID-optimal CFG, FD-DINOv2-optimal CFG)
    assert counts["train"] == 7 and counts["phema"] == 7  # + the unconditional XS guide (no demo run)
    assert counts["sample"] == counts["score"] == points * 3  # three seed blocks of 50k
    assert counts["encode"] == counts["prepare"] == counts["table"] == 1 and counts["refstats"] == 2


@pytest.mark.parametrize("name", ["imagenet512.yaml", "imagenet64.yaml", "ci.yaml"])
def test_a_config_file_is_the_whole_config_and_is_written_back(tmp_path, name):
    """From the repository root (where config/config.yaml, the demo, lives): nothing of the demo is merged
    in; results/config.effective.yaml is the file plus the schema's defaults."""
    proc = snakemake(
        tmp_path, "prepare", "--cores", "1", "--touch", "--configfile", str(ROOT / "config" / name)
    )
    assert "prepare" in job_counts(proc.stdout + proc.stderr)
    effective = yaml.safe_load((tmp_path / "results" / "config.effective.yaml").read_text())
    assert effective == check(load(name))
    demo = load("config.yaml")
    assert set(effective["runs"]).isdisjoint(demo["runs"])
    assert effective["data"]["max_images"] == load(name)["data"].get("max_images")
    assert not (tmp_path / "data").exists()  # --touch made no data


def test_without_a_config_file_the_demo_config_applies(tmp_path):
    proc = snakemake(tmp_path, "-n", "prepare")
    assert "data/fashion-mnist/images.h5" in proc.stdout


def test_paper_configs_contain_every_published_optimum_and_fit_80gb_gpus():
    from edm2lib.pipeline import paper

    for name in ("imagenet512.yaml", "imagenet64.yaml"):
        config = check(load(name))
        grid = {round(s, 3) for s in config["phema"]["sigma_rel"]}
        for run_name in pipeline.sampled_runs(config):
            run = config["runs"][run_name]
            published = paper.results_for(run["preset"])
            assert published, run["preset"]
            weights = {config["guidance"][g]["w"] for g in pipeline.run_guidance(config, run_name)}
            for result in published:
                assert result.sigma_rel in grid, (name, result)
                assert result.w in weights, (name, run_name, result)  # 1.0 = the unguided row
        for run in config["runs"].values():
            assert run["batch_gpu"] == 32 and run["batch"] % (8 * run["batch_gpu"]) == 0  # 8 GPUs per node
    assert paper.lookup("edm2-img512-s", paper.FD_DINOV2, True).w == 1.9


def test_changed_grid_or_guidance_changes_only_dependent_targets(tmp_path):
    """Dry runs on a config edited in memory: new points appear, every existing point keeps its file names."""
    base = check(load("ci.yaml"))
    wider = copy.deepcopy(base)
    wider["phema"]["sigma_rel"].append(0.2)
    more = copy.deepcopy(base)
    more["guidance"]["none"] = {"w": 1.0, "guide": None, "interval": None}
    old = {p.name for p in pipeline.points(base)}
    assert old < {p.name for p in pipeline.points(wider)} and old < {p.name for p in pipeline.points(more)}
    assert {p.name for p in pipeline.points(wider)} - old == {"000000000256-0.200-ag"}
    assert pipeline.phema_targets(more, "tiny") == pipeline.phema_targets(
        base, "tiny"
    )  # no new reconstruction
