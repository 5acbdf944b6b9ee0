"""Training as processes: 2 ranks = 1 rank, exact resume after SIGKILL, preemption by SIGUSR1."""

import json
import random
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from edm2lib.files import read_meta
from edm2lib.nn.networks import Precond
from edm2lib.training import checkpoint
from edm2lib.training.preempt import EXIT_PREEMPTED
from training_fixtures import free_port, launch, tiny_config


def final_state(run_dir) -> dict:
    ckpt = checkpoint.load(checkpoint.find_latest_valid(run_dir))
    return {f"{part}/{k}": v for part in ("net", "optimizer", "ema") for k, v in ckpt[part].items()}


def wait_all(procs, timeout=240) -> list[int]:
    try:
        return [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def stats_nimg(run_dir) -> int:
    path = run_dir / "stats.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return json.loads(lines[-1])["nimg"] if lines else 0


STEPS = 20


def run_config(tmp, name: str) -> dict:
    """20 steps of 8 = 2 rounds of 4 per rank on 1 rank, 1 round on 2; checkpoints every 3 steps."""
    return tiny_config(
        tmp,
        run_dir=str(tmp / name / "run"),
        duration=8 * STEPS,
        batch_gpu=4,
        checkpoint_nimg=24,
        snapshot_nimg=40,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 1-rank run, started in the background; tests wait for it when they need it."""
    tmp = tmp_path_factory.mktemp("reference")
    (tmp / "ref").mkdir()
    proc = launch(run_config(tmp, "ref"), tmp / "ref", stdout=subprocess.DEVNULL)
    yield proc, tmp / "ref" / "run"
    wait_all([proc])


def wait_for_nimg(run_dir, proc, nimg: int, timeout: float = 120) -> int:
    """Poll stats.jsonl until training passed `nimg` (or the process ended); the last nimg seen."""
    deadline = time.monotonic() + timeout
    while stats_nimg(run_dir) < nimg and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    return stats_nimg(run_dir)


def test_two_gloo_ranks_reach_the_weights_of_one_rank_accumulating_two_rounds(tmp_path, reference):
    (tmp_path / "two").mkdir()
    port = free_port()
    procs = [launch(run_config(tmp_path, "two"), tmp_path / "two", r, 2, port, srun=True) for r in range(2)]
    assert wait_all([*procs, reference[0]]) == [0, 0, 0]
    a, b = final_state(reference[1]), final_state(tmp_path / "two" / "run")
    assert a.keys() == b.keys()
    diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    print(f"max abs difference after {STEPS} steps (net, Adam state, EMAs): {diff:.2e}")
    assert diff <= 1e-6, diff
    state = checkpoint.load(checkpoint.find_latest_valid(reference[1]))["state"]
    torch.manual_seed(0)
    init = Precond(**state["network"]).state_dict()
    assert max(float((a[f"net/{k}"] - v).abs().max()) for k, v in init.items()) > 1e-2  # it did train
    assert "2 rank(s) on cpu, batch 8 = 4 x 1 round(s) x 2" in (tmp_path / "two/run/log.txt").read_text()
    assert "1 rank(s) on cpu, batch 8 = 4 x 2 round(s) x 1" in (reference[1] / "log.txt").read_text()


def test_run_killed_at_a_random_step_resumes_bit_identical(tmp_path, reference):
    killed = tmp_path / "killed"
    killed.mkdir()
    cfg = run_config(tmp_path, "killed")
    kill_after = 8 * random.Random(3).randint(4, 12)  # past the first checkpoint, before the end
    proc = launch(cfg, killed, stdout=subprocess.DEVNULL)
    seen = wait_for_nimg(killed / "run", proc, kill_after)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert kill_after <= seen < 8 * STEPS
    resumed = checkpoint.nimg_of(checkpoint.find_latest_valid(killed / "run"))
    assert 0 < resumed <= seen
    assert wait_all([launch(cfg, killed, stdout=subprocess.DEVNULL), reference[0]]) == [0, 0]
    log = (killed / "run" / "log.txt").read_text()
    assert f"resumed from {checkpoint.checkpoint_dir(killed / 'run', resumed)} at nimg {resumed}" in log
    a, b = final_state(reference[1]), final_state(killed / "run")
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []  # bit-identical: net, Adam state, every EMA
    stats = [(p / "stats.jsonl").read_text().splitlines() for p in (reference[1], killed / "run")]
    losses = [{s["nimg"]: s["loss"] for s in map(json.loads, lines)} for lines in stats]
    assert losses[0] == losses[1] and len(stats[1]) == STEPS  # the same stream, no duplicated status lines
    snapshots = sorted(p.name for p in (reference[1] / "snapshots").iterdir())
    assert len(snapshots) == 2 * 4
    for name in snapshots:  # the data path differs between the two runs, so only the identity hash may differ
        ref, got = (d / "snapshots" / name for d in (reference[1], killed / "run"))
        assert {k: v for k, v in read_meta(ref).items() if k != "identity"} == {
            k: v for k, v in read_meta(got).items() if k != "identity"
        }
        x, y = load_file(str(ref)), load_file(str(got))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_sigusr1_on_one_rank_stops_all_ranks_with_a_checkpoint_and_exit_75(tmp_path):
    batch, long = 8, 8 * 10_000
    cfg = tiny_config(tmp_path, duration=long, batch_gpu=4)
    port = free_port()
    procs = [launch(cfg, tmp_path, r, 2, port, stdout=subprocess.DEVNULL) for r in range(2)]
    wait_for_nimg(tmp_path / "run", procs[0], 3 * batch)
    procs[1].send_signal(signal.SIGUSR1)  # SLURM signals every task; one is enough
    assert wait_all(procs, timeout=120) == [EXIT_PREEMPTED, EXIT_PREEMPTED]
    path = checkpoint.find_latest_valid(tmp_path / "run")
    state = checkpoint.load(path)["state"]
    assert state["preempt"]["signal"] == signal.SIGUSR1
    assert 0 <= state["nimg"] - state["preempt"]["signal_nimg"] <= batch  # within one step
    assert 3 * batch <= state["nimg"] < long
    # the preempted run continues on one rank (2 rounds of 4) until SIGTERM preempts it again
    proc = launch(cfg, tmp_path, stdout=subprocess.DEVNULL)
    wait_for_nimg(tmp_path / "run", proc, state["nimg"] + 2 * batch)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == EXIT_PREEMPTED
    again = checkpoint.load(checkpoint.find_latest_valid(tmp_path / "run"))["state"]
    assert again["preempt"]["signal"] == signal.SIGTERM and again["nimg"] > state["nimg"]
    log = (tmp_path / "run" / "log.txt").read_text()
    assert f"resumed from {path} at nimg {state['nimg']}" in log and "preempted by signal 15 at nimg" in log
