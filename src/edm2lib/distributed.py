"""Process-group setup for torchrun, SLURM srun or a single process, and the few collectives training uses."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank, world size, local rank and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes every file; the other ranks never do."""
        return self.rank == 0


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand SLURM's compact host list, e.g. `gpu[01-03,07],cpu5` -> gpu01 gpu02 gpu03 gpu07 cpu5."""
    hosts: list[str] = []
    for prefix, ranges, plain in re.findall(r"([^,\[]+)\[([^\]]*)\]|([^,\[\]]+)", nodelist):
        if plain:
            hosts.append(plain)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            if not hi:
                hosts.append(prefix + lo)
                continue
            if not (lo.isdigit() and hi.isdigit()):
                raise ValueError(f"cannot parse node range '{part}' in SLURM node list '{nodelist}'")
            hosts.extend(f"{prefix}{i:0{len(lo)}d}" for i in range(int(lo), int(hi) + 1))
    if not hosts:
        raise ValueError(f"empty SLURM node list '{nodelist}'")
    return hosts


def first_host(nodelist: str) -> str:
    """First host of a SLURM node list: `scontrol show hostnames` if available, else our own parser."""
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(
                ["scontrol", "show", "hostnames", nodelist],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            ).stdout.split()
            if out:
                return out[0]
        except (subprocess.SubprocessError, OSError):
            pass
    return expand_nodelist(nodelist)[0]


def port_from_job_id(job_id: str | int) -> int:
    """A rendezvous port every rank of one SLURM job derives alike (20000-39999)."""
    return 20000 + int(job_id) % 20000


def _slurm_env() -> dict[str, str] | None:
    """torchrun-style variables derived from a SLURM job step (srun), or None outside one."""
    env = os.environ
    if "SLURM_PROCID" not in env or "SLURM_STEP_ID" not in env:
        return None  # a batch script's own shell is not a task of a step: it runs as a single process
    world = env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or "1"
    out = {"RANK": env["SLURM_PROCID"], "WORLD_SIZE": world, "LOCAL_RANK": env.get("SLURM_LOCALID", "0")}
    if int(world) > 1:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
        if "MASTER_ADDR" not in env and not nodelist:
            raise ValueError("SLURM step without SLURM_STEP_NODELIST/SLURM_JOB_NODELIST: export MASTER_ADDR")
        out["MASTER_ADDR"] = env.get("MASTER_ADDR") or first_host(nodelist)
        out["MASTER_PORT"] = env.get("MASTER_PORT") or str(port_from_job_id(env.get("SLURM_JOB_ID", "0")))
    return out


def cuda_device_nodes() -> list[str]:
    """The NVIDIA device files of this machine (/dev/nvidia0, ...): present when it has CUDA GPUs."""
    from pathlib import Path

    return sorted(str(p) for p in Path("/dev").glob("nvidia[0-9]*"))


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def local_rank() -> int:
    """This process's index on its node (`LOCAL_RANK`, set by torchrun or by `init` under srun), else 0."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(requested: str | torch.device | None = "auto", local: int | None = None) -> torch.device:
    """The one device rule of every stage: `auto` (or None) = cuda:LOCAL_RANK (modulo the visible GPUs)
    when CUDA works; cpu only when the machine has no CUDA device; a GPU machine whose CUDA fails to
    initialise is an error, not a silent CPU run. `cpu`, `cuda`, `cuda:N` as given."""
    requested = "auto" if requested is None else str(requested)
    if requested == "auto" and not torch.cuda.is_available():
        nodes = cuda_device_nodes()
        if not nodes:
            return torch.device("cpu")
        try:
            torch.cuda.init()
            reason = "torch.cuda.is_available() is False"
        except Exception as error:  # the driver's own message says what is broken
            reason = str(error).replace("\n", " ")
        raise ValueError(
            f"device auto: CUDA device(s) {', '.join(nodes)} present but CUDA "
            f"does not initialise ({reason}); fix the driver/CUDA install, or set device: cpu"
        )
    if requested == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"device '{requested}' requested but CUDA is not available; use device: cpu or auto")
    if requested.startswith("cuda:"):
        return torch.device(requested)
    return torch.device("cuda", (local_rank() if local is None else local) % torch.cuda.device_count())


def init(device: str = "auto") -> DistInfo:
    """Join the process group (torchrun env, else srun env, else one process); NCCL on GPUs, gloo on CPU."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", "0"))
    elif (slurm := _slurm_env()) is not None:
        os.environ.update(slurm)
        rank, world, local = int(slurm["RANK"]), int(slurm["WORLD_SIZE"]), int(slurm["LOCAL_RANK"])
    else:
        rank, world, local = 0, 1, 0
    dev = resolve_device(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        for key in ("MASTER_ADDR", "MASTER_PORT"):
            if key not in os.environ:
                raise ValueError(
                    f"{world} ranks but no {key} in the environment; launch with torchrun or srun"
                )
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world)
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=dev)


def active() -> bool:
    """True when a process group with more than one rank is up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_max(values: list[float], device: torch.device) -> list[float]:
    """Element-wise maximum over ranks (flags every rank must agree on)."""
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of `t` over ranks (in place, returned)."""
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather(t: torch.Tensor) -> list[torch.Tensor]:
    """`t` (same shape on every rank) from every rank, in rank order."""
    if not active():
        return [t]
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t.contiguous())
    return out


def barrier() -> None:
    """Wait for every rank (no-op for one process)."""
    if active():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
