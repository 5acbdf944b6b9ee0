"""Training as processes: 2 ranks = 1 rank, exact resume after SIGKILL, preemption by SIGUSR1."""

import json

import torch

from edm2lib.networks import Precond
from edm2lib.training import checkpoint
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


def test_two_gloo_ranks_reach_the_weights_of_one_rank_accumulating_two_rounds(tmp_path):
    runs = {name: tmp_path / name for name in ("two", "accum")}
    steps = 20
    cfg = {}
    for name, path in runs.items():
        path.mkdir()
        cfg[name] = tiny_config(tmp_path, run_dir=str(path / "run"), duration=8 * steps, batch_gpu=4)
    port = free_port()
    procs = [launch(cfg["two"], runs["two"], r, 2, port, srun=True) for r in range(2)]  # 2 ranks (srun env)
    procs += [launch(cfg["accum"], runs["accum"])]  # 1 rank x 2 rounds of 4
    assert wait_all(procs) == [0, 0, 0]
    a, b = (final_state(path / "run") for path in runs.values())
    assert a.keys() == b.keys()
    diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    print(f"max abs difference after {steps} steps (net, Adam state, EMAs): {diff:.2e}")
    assert diff <= 1e-6, diff
    state = json.loads((checkpoint.checkpoint_dir(runs["two"] / "run", 8 * steps) / "state.json").read_text())
    torch.manual_seed(0)
    init = Precond(**state["network"]).state_dict()
    assert max(float((a[f"net/{k}"] - v).abs().max()) for k, v in init.items()) > 1e-2  # it did train
    assert "2 rank(s) on cpu, batch 8 = 4 x 1 round(s) x 2" in (runs["two"] / "run" / "log.txt").read_text()
    assert "1 rank(s) on cpu, batch 8 = 4 x 2 round(s) x 1" in (runs["accum"] / "run" / "log.txt").read_text()
