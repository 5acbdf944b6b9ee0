"""Reruns that can be trusted: training identity, resume checks, retries only for preemption, small traps."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from edm2lib import distributed, files
from edm2lib.pipeline import steps
from edm2lib.training import checkpoint
from edm2lib.training.config import RUNTIME_KEYS, TrainConfig
from edm2lib.training.loop import train
from edm2lib.training.status import RunLog
from pipeline_helpers import ROOT
from training_fixtures import tiny_config


def test_identity_covers_what_training_computes_and_not_the_runtime_keys(tmp_path):
    base = TrainConfig.from_dict(tiny_config(tmp_path))
    for key, value in [("lr_ref", 0.02), ("t_ref", 128), ("warmup", 16), ("P_mean", -0.8), ("P_std", 1.6),
                       ("seed", 1), ("snapshot_nimg", 80), ("data", str(tmp_path / "other.h5"))]:  # fmt: skip
        other = TrainConfig.from_dict(tiny_config(tmp_path, **{key: value}))
        assert other.identity_hash() != base.identity_hash(), key
    for key, value in [("duration", 320), ("batch_gpu", 4), ("checkpoint_minutes", 5.0), ("status_nimg", 16),
                       ("keep_checkpoints", 1), ("checkpoint_nimg", 40), ("device", "auto")]:  # fmt: skip
        other = TrainConfig.from_dict(tiny_config(tmp_path, **{key: value}))
        assert other.identity_hash() == base.identity_hash(), key
    assert {"device", "batch_gpu", "checkpoint_minutes", "keep_checkpoints", "duration"} <= RUNTIME_KEYS


def _run_files(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_resume_with_another_identity_stops_before_training_naming_the_keys(tmp_path, one_thread):
    cfg = tiny_config(tmp_path, duration=16, snapshot_nimg=8)
    train(cfg)
    run = Path(cfg["run_dir"])
    before = _run_files(run)
    with pytest.raises(ValueError) as err:
        train({**cfg, "lr_ref": 0.02, "P_mean": -0.8})
    message = str(err.value)
    assert "\n" not in message and "another identity" in message
    assert "lr_ref: 0.01 -> 0.02" in message and "P_mean: -0.4 -> -0.8" in message
    assert "delete" in message and "new name" in message
    assert _run_files(run) == before  # nothing written, nothing lost
    train({**cfg, "checkpoint_minutes": 3.0, "keep_checkpoints": 2})  # runtime keys: resumes fine


def test_raising_duration_continues_bit_for_bit_like_training_longer_at_once(tmp_path, one_thread):
    a = tiny_config(tmp_path, run_dir=str(tmp_path / "a"), duration=32, snapshot_nimg=16, checkpoint_nimg=16)
    b = tiny_config(tmp_path, run_dir=str(tmp_path / "b"), duration=64, snapshot_nimg=16, checkpoint_nimg=16)
    train(a)
    train({**a, "duration": 64})  # same identity: continues from the checkpoint at 32
    train(b)
    for name in ("snapshot-000000000064-0.050.safetensors", "snapshot-000000000064-0.100.safetensors"):
        from safetensors.torch import load_file

        sa = load_file(str(Path(a["run_dir"]) / "snapshots" / name))
        sb = load_file(str(Path(b["run_dir"]) / "snapshots" / name))
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    ca = checkpoint.load(checkpoint.checkpoint_dir(a["run_dir"], 64))
    cb = checkpoint.load(checkpoint.checkpoint_dir(b["run_dir"], 64))
    assert all(torch.equal(ca["net"][k], cb["net"][k]) for k in ca["net"])
    assert ca["state"]["identity"] == cb["state"]["identity"]


def test_trained_json_lists_only_snapshots_of_the_run_identity(tmp_path, one_thread):
    cfg = tiny_config(tmp_path, duration=16, snapshot_nimg=8)
    train(cfg)
    stale = Path(cfg["run_dir"]) / "snapshots" / "snapshot-000000000008-0.050.safetensors"
    from edm2lib.files import read_network_meta, save_network

    meta = read_network_meta(stale)
    from safetensors.torch import load_file

    extra = {k: v for k, v in meta.items() if k not in ("config", "format")}
    save_network(stale, load_file(str(stale)), meta["config"], **{**extra, "identity": "0" * 16})  # foreign
    yaml_path = tmp_path / "training.yaml"
    yaml_path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "trained.json"
    ident = TrainConfig.from_dict(cfg).identity_hash()
    record = steps.write_trained(yaml_path, out, ident)
    assert record["identity"] == ident and str(stale) not in record["snapshots"]
    assert len(record["snapshots"]) == 3
    with pytest.raises(ValueError, match="is not the workflow's"):
        steps.write_trained(yaml_path, out, "f" * 16)


def test_torn_last_stats_line_is_dropped_with_a_warning_and_others_kept(tmp_path):
    log = RunLog(tmp_path, True)
    log.record({"nimg": 8, "loss": 1.0})
    log.record({"nimg": 16, "loss": 0.5})
    log.record({"nimg": 24, "loss": 0.4})
    with open(log.stats, "a") as f:
        f.write('{"loss": 0.3, "ni')  # a kill in the middle of a write
    with pytest.warns(UserWarning, match=r"stats.jsonl:4: dropping a torn last line"):
        log.truncate_stats(16)
    assert [json.loads(ln)["nimg"] for ln in log.stats.read_text().splitlines()] == [8, 16]
    log.stats.write_text('{"nimg": 8}\nnot json\n{"nimg": 16}\n')
    with pytest.raises(ValueError, match=r"stats.jsonl:2: not a JSON line"):
        log.truncate_stats(16)
    assert log.stats.read_text() == '{"nimg": 8}\nnot json\n{"nimg": 16}\n'  # left as it was


def test_deterministic_training_failure_is_not_trained_again_by_a_retry(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, data=str(tmp_path / "missing.h5"))
    config_yaml = tmp_path / "run" / "training.yaml"
    config_yaml.parent.mkdir()
    config_yaml.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run" / "trained.json"
    with pytest.raises(ValueError, match=r"missing\.h5") as first:
        steps.train(str(config_yaml), str(out), "x", attempt=1)
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    with pytest.raises(ValueError, match="not retried") as again:
        steps.train(str(config_yaml), str(out), "x", attempt=2)
    assert calls == [] and str(first.value) in str(again.value) and not out.exists()


@pytest.mark.parametrize("code", [75, -9, 137])
def test_preemption_or_signal_exits_75_for_the_retry_to_resume(tmp_path, monkeypatch, code):
    config_yaml = tmp_path / "training.yaml"
    config_yaml.write_text(yaml.safe_dump(tiny_config(tmp_path)))
    done = subprocess.CompletedProcess([], code, stdout="", stderr="")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: done)
    with pytest.raises(SystemExit) as exit_:
        steps.train(str(config_yaml), str(tmp_path / "trained.json"), "x", attempt=1)
    assert exit_.value.code == 75 and not (tmp_path / files.RUN_FAILED).exists()


def test_device_auto_is_cpu_without_cuda_devices_and_an_error_when_cuda_fails(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(distributed, "cuda_device_nodes", lambda: [])
    assert distributed.resolve_device("auto", 0) == torch.device("cpu")
    monkeypatch.setattr(distributed, "cuda_device_nodes", lambda: ["/dev/nvidia0"])

    def broken():
        raise RuntimeError("CUDA driver initialization failed")

    monkeypatch.setattr(torch.cuda, "init", broken)
    with pytest.raises(ValueError) as err:
        distributed.resolve_device("auto", 0)
    assert "/dev/nvidia0" in str(err.value) and "driver initialization failed" in str(err.value)
    assert "device: cpu" in str(err.value) and "\n" not in str(err.value)


def test_conda_env_pins_the_packages_of_pyproject():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["pipeline"])
    env = yaml.safe_load((ROOT / "workflow" / "envs" / "edm2lib.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert {p for p in pip if not p.startswith("-e")} == wanted
    assert f"python{project['requires-python']}" in env["dependencies"]


def test_snakemake_lint_is_clean():
    proc = subprocess.run(
        ["python", "-m", "snakemake", "--lint", "--configfile", "config/ci.yaml"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _stale_run(tmp_path: Path) -> tuple[dict, Path, Path]:
    """A trained tiny run and its training.yaml edited to another identity (lr_ref)."""
    cfg = tiny_config(tmp_path, duration=16, snapshot_nimg=8)
    train(cfg)
    run = Path(cfg["run_dir"])
    config_yaml = run / "training.yaml"
    config_yaml.write_text(yaml.safe_dump({**cfg, "lr_ref": 0.02}))
    return cfg, run, config_yaml


def test_stale_run_stops_before_the_ranks_start_naming_the_keys_and_the_forcerun_way_out(
    tmp_path, monkeypatch, one_thread
):
    cfg, run, config_yaml = _stale_run(tmp_path)
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a))
    new = TrainConfig.load(config_yaml).identity_hash()
    old = TrainConfig.from_dict(cfg).identity_hash()
    with pytest.raises(ValueError) as err:
        steps.train(str(config_yaml), "runs/tiny/trained.json", new, attempt=1)
    message = str(err.value)
    assert calls == [] and "\n" not in message and "lr_ref: 0.01 -> 0.02" in message
    assert "--forcerun runs/tiny/trained.json" in message and f"stale-{old}" in message
    assert json.loads((run / files.RUN_FAILED).read_text())["error"] == message
    steps.request_fresh(run, "another-config")  # a request for another config is no consent
    with pytest.raises(ValueError, match="another identity"):
        steps.train(str(config_yaml), "runs/tiny/trained.json", new, attempt=1)
    assert calls == []


def test_forced_stale_run_sets_its_state_aside_whole_and_trains_afresh(tmp_path, monkeypatch, one_thread):
    cfg, run, config_yaml = _stale_run(tmp_path)
    before = _run_files(run)
    new = TrainConfig.load(config_yaml).identity_hash()
    old = TrainConfig.from_dict(cfg).identity_hash()
    done = subprocess.CompletedProcess([], 0, stdout="", stderr="")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: done)
    monkeypatch.setattr(steps, "write_trained", lambda *a: {})
    steps.request_fresh(run, new)
    steps.train(str(config_yaml), str(run / "trained.json"), new, attempt=1)
    stale = run / f"stale-{old}"
    assert {k: v for k, v in before.items() if k != "training.yaml"} == {
        str(Path(k).relative_to(stale.name)): v
        for k, v in _run_files(run).items()
        if k.startswith(stale.name)
    }  # every file of the old identity, moved unchanged
    assert not (run / "checkpoints").exists() and not (run / files.RUN_FRESH).exists()
    (run / "checkpoints").mkdir()  # the same identity set aside again goes next to it
    assert steps.set_aside(run, old) == run / f"stale-{old}-2"


def test_forced_run_of_the_same_identity_resumes(tmp_path, monkeypatch, one_thread):
    cfg = tiny_config(tmp_path, duration=16, snapshot_nimg=8)
    train(cfg)
    run = Path(cfg["run_dir"])
    config_yaml = run / "training.yaml"
    config_yaml.write_text(yaml.safe_dump({**cfg, "duration": 24}))  # raised duration: same identity
    identity = TrainConfig.load(config_yaml).identity_hash()
    before = _run_files(run)
    launched = []
    done = subprocess.CompletedProcess([], 0, stdout="", stderr="")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: launched.append(a) or done)
    monkeypatch.setattr(steps, "write_trained", lambda *a: {})
    steps.request_fresh(run, identity)
    steps.train(str(config_yaml), str(run / "trained.json"), identity, attempt=1)
    assert len(launched) == 1 and not list(run.glob("stale-*"))
    assert {k: v for k, v in _run_files(run).items() if k != "training.yaml"} == {
        k: v for k, v in before.items() if k != "training.yaml"
    }
