"""Configs A..G in the pipeline: per-run ladder keys, one-line errors, A's one point, the ablation table."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import yaml

from edm2lib import files
from edm2lib.nn.presets import get_preset
from edm2lib.pipeline import ablation, steps
from edm2lib.pipeline import config as pipeline
from edm2lib.training.config import TrainConfig
from pipeline_helpers import ROOT, job_counts, snakemake

SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
GFLOPS_TABLE1 = {"A": 110.4, "B": 100.4, "C": 100.3, "D": 101.2, "E": 101.2, "F": 102.1, "G": 102.2}


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / name).read_text())


def check(config: dict) -> dict:
    return pipeline.validate_config(config, SCHEMA)


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "config").glob("*.yaml")))
def test_every_shipped_config_passes_the_schema(name):
    assert check(load(name))["runs"]


def test_ladder_keys_reach_the_training_config():
    config = load("ablation.yaml")
    config["runs"]["D"].update(adam_betas=[0.8, 0.95])
    text = yaml.safe_dump(config).replace("warmup: 64", "warmup: 64\n    t_ref: .inf", 1)
    config = check(yaml.safe_load(text))
    assert math.isinf(config["runs"]["A"]["t_ref"])
    cfgs = {r: TrainConfig.from_dict(steps.training_config(config["runs"][r], "d.h5", "x")) for r in "ADG"}
    assert cfgs["D"].adam_betas == (0.8, 0.95) and cfgs["A"].adam_betas == (0.9, 0.999)  # A's recipe
    assert (cfgs["A"].ema, cfgs["A"].ema_halflife_nimg, cfgs["A"].batch) == ("traditional", 12, 16)
    assert cfgs["G"].ema == "power" and cfgs["G"].t_ref == 128 and math.isinf(cfgs["D"].t_ref)
    assert all((c.telemetry_nimg, c.telemetry_probe) == (64, 32) for c in cfgs.values())
    assert [c.network.get("ablation", "G") for c in cfgs.values()] == list("ADG")


def test_a_traditional_ema_run_is_one_point_at_its_profiles_sigma_rel():
    config = check(load("ablation.yaml"))
    a = [p for p in pipeline.points(config) if p.run == "A"]
    assert [(p.nimg, p.sigma_rel) for p in a] == [(512, 0.033)]  # the paper's share; its A: 0.034
    assert pipeline.phema_targets(config, "A") == [(512, 0.033)]
    assert pipeline.phema_targets(config, "B") == [(512, 0.05), (512, 0.1), (512, 0.15)]
    config["runs"]["B"].update(ema="traditional", duration=4096)  # any letter may use it
    config["runs"]["B"]["ema_halflife_nimg"] = 4096 * 0.03 * math.log(2)  # std ~ H / ln 2 when H << t
    ((nimg, sigma_rel),) = pipeline.phema_targets(check(config), "B")
    assert nimg == 4096 and sigma_rel == pytest.approx(0.03, abs=0.002)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda c: c["runs"]["A"].update(ablation="H"),
            "config: runs.A.ablation: 'H' is not one of ['A', 'B', 'C', 'D', 'E', 'F', 'G']",
        ),
        (
            lambda c: c["runs"]["A"].update(network={"weight_norm": "forced"}),
            "config: runs.A.network: Additional properties are not allowed ('weight_norm' was unexpected)",
        ),
        (
            lambda c: c["runs"]["G"].update(ema_halflife_nimg=1000),
            "config: runs.G.ema_halflife_nimg: only a traditional EMA has a half-life, and this run's EMA "
            "is 'power' (ablation G)",
        ),
        (
            lambda c: c["runs"]["A"].update(ema="exponential"),
            "config: runs.A.ema: 'exponential' is not one of ['power', 'traditional']",
        ),
        (
            lambda c: c["runs"]["B"].update(adam_betas=[0.9, 1.0]),
            "config: runs.B.adam_betas.1: 1.0 is greater",
        ),
        (lambda c: c["runs"]["B"].update(adam_betas=[0.9]), "config: runs.B.adam_betas: [0.9] is too short"),
        (lambda c: c["runs"]["E"].update(t_ref=0), "config: runs.E.t_ref: 0 is less than or equal to"),
        (
            lambda c: c["runs"]["E"].update(telemetry_nimg=100),
            "config: runs.E: config key 'telemetry_nimg' = 100 is not a multiple of the batch 8",
        ),
        (
            lambda c: c["guidance"].update(
                ag={"w": 2, "guide": {"run": "A", "nimg": "final", "sigma_rel": 0.1}}
            ),
            "config: guidance.ag.guide.run: run 'A' has a traditional EMA",
        ),
    ],
    ids=[
        "unknown-letter",
        "switch-override",
        "half-life-on-power",
        "ema-kind",
        "beta2-1",
        "one-beta",
        "t-ref-0",
        "telemetry-interval",
        "traditional-guide",
    ],
)
def test_bad_ladder_keys_give_one_line_naming_the_key(edit, message):
    config = load("ablation.yaml")
    edit(config)
    with pytest.raises(ValueError) as info:
        check(config)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("letter", list(GFLOPS_TABLE1))
def test_network_cost_counts_table_1_params_and_twice_its_gflops(letter):
    """FlopCounterMode counts 2 FLOPs per multiply-add and no norms: within 2% of 2x EDM2 Table 1."""
    params, flops = ablation.network_cost(get_preset("edm2-img512-s", config=letter).network)
    table1 = {"A": 295_902_724, "B": 291_757_828, "F": 280_212_672, "G": 280_212_709}
    assert params == table1.get(letter, 277_816_512)
    assert flops / 2e9 == pytest.approx(GFLOPS_TABLE1[letter], rel=0.02)


def _score(run, sigma_rel, fd, nimg=2048, guidance="none"):
    detectors = {"fd_dinov2_detector": "RANDOM-INIT x", "fid_detector": "RANDOM-INIT y"}
    return {"run": run, "nimg": nimg, "sigma_rel": sigma_rel, "guidance": guidance, "fd_dinov2": fd,
            "fid": 10 * fd, **detectors}  # fmt: skip


def test_ablation_rows_pick_the_best_final_point_per_run_by_the_first_metric(tmp_path):
    config = check(load("ablation.yaml"))
    runs = {r: config["runs"][r] for r in ("A", "E")}
    scores = [_score("A", 0.034, 5.0), _score("E", 0.05, 3.0), _score("E", 0.10, 2.0), _score("E", 0.15, 2.5),
              _score("E", 0.10, 1.0, nimg=1024)]  # fmt: skip
    net = get_preset("edm2-tiny").network
    rows = ablation.ablation_rows(runs, scores, {"A": net, "E": net}, ["fd_dinov2", "fid"])
    assert [(r["config"], r["ema"], r["best_sigma_rel"], r["points"]) for r in rows] == [
        ("A", "traditional", "0.034", 1),
        ("E", "power", "0.100", 3),
    ]
    assert rows[1]["fd_dinov2"] == 2.0 and rows[1]["fid"] == 20.0 and rows[1]["nimg"] == 2048
    out = ablation.write_ablation_table(rows, tmp_path / "t.csv")
    header = out.read_text().splitlines()[0].split(",")
    assert header[:8] == ablation.COLUMNS and "fd_dinov2_detector" in header
    with pytest.raises(ValueError, match="run 'E' has no scored point with fd_dinov2"):
        ablation.ablation_rows(runs, scores[:1], {"A": net, "E": net}, ["fd_dinov2"])


def test_traditional_run_phema_step_uses_its_snapshot_itself(tmp_path):
    from edm2lib.nn.networks import Precond
    from edm2lib.phema.ema import TraditionalEMA

    torch.manual_seed(0)
    net = Precond(**get_preset("edm2-tiny", config="A").network)
    ema = TraditionalEMA(net, 48, 0.05)
    for nimg in range(32, 2049, 32):
        ema.update(net, nimg, 32)
    (snap,) = ema.save_snapshots(tmp_path, net, 2048, batch_size=32)
    trained = tmp_path / "trained.json"
    trained.write_text(json.dumps({"ema": "traditional", "snapshots": [str(snap)], "run_dir": str(tmp_path)}))
    (out,) = steps.phema(trained, [(2048, 0.034)], tmp_path / "phema")
    assert out.name == files.phema_name(2048, 0.034) and out.read_bytes() == snap.read_bytes()
    with pytest.raises(ValueError, match="cannot be reconstructed at other lengths"):
        steps.phema(trained, [(2048, 0.1)], tmp_path / "phema")
    steps.phema_plot(trained, [(2048, 0.034)], tmp_path / "profile.png")
    assert (tmp_path / "profile.png").stat().st_size > 1000


def test_dry_run_of_the_paper_ablation_builds_seven_runs(tmp_path):
    config = copy.deepcopy(load("ablation-img512.yaml"))
    assert {r["preset"] for r in config["runs"].values()} == {"edm2-img512-s"}
    assert all(r["telemetry_probe"] == 4096 for r in config["runs"].values())
    proc = snakemake(
        tmp_path,
        "-n",
        "results/ablation_table.csv",
        "--configfile",
        str(ROOT / "config" / "ablation-img512.yaml"),
    )
    counts = job_counts(proc.stdout)
    assert counts["train"] == counts["dynamics"] == counts["phema"] == 7 and counts["ablation_table"] == 1
    assert counts["sample"] == 3 * (6 * len(config["phema"]["sigma_rel"]) + 1)  # A: one point
