"""The tiny pipeline through a real SLURM (the loopback cluster of .ci/slurm-up): sbatch jobs, a 2-rank DDP
training job launched by srun inside the job, and a USR1 preemption that the run survives by resuming."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipeline_helpers import ROOT, SNAKEFILE, ci_config

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
PROFILE = Path(os.environ.get("EDM2LIB_SLURM_PROFILE", "/tmp/edm2lib-ci-slurm-profile"))


def cluster_up() -> bool:
    if not (PROFILE / "config.yaml").is_file() or not shutil.which("sinfo"):
        return False
    return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=30).returncode == 0


def workflow_profile(tmp: Path, **train) -> Path:
    """profiles/default scaled to the test node: the same DDP shape (mpi srun, one rank per fake GPU);
    `train` overrides the training rule's resources (None drops one)."""
    profile = yaml.safe_load((ROOT / "profiles" / "default" / "config.yaml").read_text())
    small = {"cpus_per_task": 1, "mem_mb": 600, "runtime": 10}
    resources = {
        rule: {**{k: v for k, v in r.items() if k not in ("gpu",)}, **small}
        for rule, r in profile["set-resources"].items()
    }
    resources["train"].update(
        gpu=2, tasks=2, tasks_per_gpu=1, mem_mb=1500, runtime=20, slurm_extra="--signal=USR1@60 --requeue"
    )
    resources["train"].update(train)
    resources["train"] = {k: v for k, v in resources["train"].items() if v is not None}
    out = tmp / "wfprofile"
    out.mkdir()
    (out / "config.yaml").write_text(yaml.safe_dump({**profile, "set-resources": resources}))
    return out


def squeue(rule: str, workdir: Path) -> list[tuple[str, str, str]]:
    """(job id, state, reason) of a rule's jobs run in `workdir` (the comment names the rule)."""
    out = subprocess.run(["squeue", "-h", "-o", "%i|%k|%T|%r|%Z"], capture_output=True, text=True).stdout
    return [
        (i, s, r)
        for i, k, s, r, d in (line.split("|") for line in out.splitlines())
        if k.startswith(f"rule_{rule}") and Path(d) == workdir
    ]


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen, log: Path):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(
                f"snakemake exited ({proc.returncode}) while waiting for {what}:\n{log.read_text()[-4000:]}"
            )
        time.sleep(1)
    pytest.fail(f"timed out waiting for {what}:\n{log.read_text()[-4000:]}")


NO_CLUSTER = (
    f"no local SLURM cluster: as root run .ci/slurm-up (installs Debian's slurmctld slurmd slurm-client munge"
    f" with apt-get, starts two loopback nodes, writes {PROFILE}); without root install those packages and"
    " point EDM2LIB_SLURM_PROFILE at a Snakemake profile for your cluster"
)


@pytest.mark.skipif(not cluster_up(), reason=NO_CLUSTER)
def test_slurm_pipeline_trains_two_ranks_survives_usr1_and_finishes(tmp_path):
    run = {
        "preset": "edm2-tiny",
        "duration": 512,
        "batch": 8,
        "snapshot_nimg": 128,
        "checkpoint_nimg": 256,
        "status_nimg": 64,
        "t_ref": 256,
        "warmup": 64,
    }
    config = ci_config(
        tmp_path,
        runs={"tiny": run},
        phema={"sigma_rel": [0.10]},
        guidance={"ag": {"w": 1.5, "guide": {"run": "tiny", "nimg": 256, "sigma_rel": 0.10}}},
    )
    log = tmp_path / "snakemake.log"
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "results/fid_table.csv",  # targets first: --configfile takes several values
        "-s",
        str(SNAKEFILE),
        "-d",
        str(tmp_path),
        "--profile",
        str(PROFILE),
        "--workflow-profile",
        str(workflow_profile(tmp_path)),
        "--configfile",
        str(config),
    ]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        train_log = tmp_path / "runs" / "tiny" / "log.txt"
        job = wait_for(
            lambda: [j for j in squeue("train", tmp_path) if j[1] == "RUNNING"],
            400,
            "the training job",
            proc,
            log,
        )
        job_id = job[0][0]
        wait_for(
            lambda: train_log.is_file() and " nimg " in train_log.read_text(),
            300,
            "training steps",
            proc,
            log,
        )
        subprocess.run(["scancel", "--signal=USR1", job_id], check=True)
        print(f"\nsent USR1 to training job {job_id}")

        def requeued_or_done():
            for jid, state, reason in squeue("train", tmp_path):
                if state == "PENDING" and reason == "BeginTime":  # requeued: skip SLURM's ~2 min hold
                    subprocess.run(["scontrol", "update", f"JobId={jid}", "StartTime=now"], check=False)
            return (tmp_path / "runs" / "tiny" / "trained.json").is_file()

        wait_for(requeued_or_done, 600, "the resumed training to finish", proc, log)
        assert proc.wait(timeout=600) == 0, log.read_text()[-4000:]
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)
            subprocess.run(["scancel", "--me"], check=False)
    text = train_log.read_text()
    print(text)
    assert "2 rank(s) on cpu" in text  # the DDP job: two srun ranks in one SLURM job
    assert "preempted by signal 10" in text  # SIGUSR1 reached the ranks, which checkpointed and stopped
    assert "resumed from" in text and "nimg          512" in text  # the rerun continued to the end
    sbatched = sorted(
        p.name.removeprefix("rule_") for p in (tmp_path / ".snakemake" / "slurm_logs").iterdir()
    )
    print("rules submitted with sbatch:", sbatched)
    assert {"prepare", "refstats", "train", "phema", "sample", "score"} <= set(sbatched)
    assert (tmp_path / "results" / "fid_table.csv").read_text().count("\n") == 2


def rank_processes() -> dict[int, tuple[int, str]]:
    """SLURM rank -> (pid, node name) of the training processes srun started on this host."""
    ranks = {}
    for proc in Path("/proc").iterdir():
        try:
            if b"edm2lib.training" not in (proc / "cmdline").read_bytes():
                continue
            env = dict(
                item.split("=", 1) for item in (proc / "environ").read_text().split("\0") if "=" in item
            )
        except OSError:
            continue
        if "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:
            ranks[int(env["SLURM_PROCID"])] = (int(proc.name), env.get("SLURMD_NODENAME", "?"))
    return ranks


@pytest.mark.skipif(not cluster_up(), reason=NO_CLUSTER)
def test_slurm_training_on_two_nodes_by_two_tasks_survives_usr1_to_one_rank(tmp_path):
    nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True).stdout.split()
    if len(set(nodes)) < 2:
        pytest.skip(f"the SLURM cluster has one node ({nodes}); .ci/slurm-up starts two emulated nodes")
    run = {"preset": "edm2-tiny", "duration": 192, "batch": 8, "snapshot_nimg": 96, "checkpoint_nimg": 96}
    run |= {"status_nimg": 32, "t_ref": 256, "warmup": 64}
    guide = {"run": "tiny", "nimg": 96, "sigma_rel": 0.10}
    config = ci_config(
        tmp_path, runs={"tiny": run}, phema={"sigma_rel": [0.10]}, guidance={"ag": {"w": 1.5, "guide": guide}}
    )
    # 2 nodes x 2 ranks, one per fake GPU; the ranks take RANK/WORLD_SIZE/LOCAL_RANK from srun's variables
    # and meet at the first node of SLURM_JOB_NODELIST (the rig resolves its node names to 127.0.0.1).
    profile = workflow_profile(
        tmp_path,
        nodes=2,
        tasks=4,
        tasks_per_gpu=None,
        gpu=None,
        mem_mb=2500,
        slurm_extra="--gpus-per-node=2 --ntasks-per-node=2 --signal=USR1@60 --requeue",
    )
    log = tmp_path / "snakemake.log"
    cmd = [sys.executable, "-m", "snakemake", "runs/tiny/trained.json", "-s", str(SNAKEFILE)]
    cmd += ["-d", str(tmp_path), "--profile", str(PROFILE), "--workflow-profile", str(profile)]
    cmd += ["--configfile", str(config)]
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    train_log = tmp_path / "runs" / "tiny" / "log.txt"
    try:
        ranks = wait_for(lambda: len(r := rank_processes()) == 4 and r, 400, "4 ranks", proc, log)
        stepped = lambda: train_log.is_file() and " nimg " in train_log.read_text()  # noqa: E731
        wait_for(stepped, 300, "training steps", proc, log)
        os.kill(ranks[3][0], signal.SIGUSR1)  # one rank only: the others learn of it through the collective
        print(f"\nranks (pid, node): {ranks}; sent USR1 to rank 3")

        def requeued_or_done():
            for jid, state, reason in squeue("train", tmp_path):
                if state == "PENDING" and reason == "BeginTime":  # requeued: skip SLURM's ~2 min hold
                    subprocess.run(["scontrol", "update", f"JobId={jid}", "StartTime=now"], check=False)
            return (tmp_path / "runs" / "tiny" / "trained.json").is_file()

        wait_for(requeued_or_done, 600, "the resumed training to finish", proc, log)
        assert proc.wait(timeout=300) == 0, log.read_text()[-4000:]
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)
            subprocess.run(["scancel", "--me"], check=False)
    text = train_log.read_text()
    print(text)
    assert sorted(node for _, node in ranks.values()) == sorted(nodes[:2] * 2)  # two ranks on each node
    assert "4 rank(s) on cpu" in text
    assert "preempted by signal 10" in text
    assert "resumed from" in text and "nimg          192" in text
