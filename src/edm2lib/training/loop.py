"""The EDM2 training loop: DDP + accumulation, Adam, power-function EMA, snapshots, checkpoints, preemption.

Single process:   python -m edm2lib.training --config cfg.yaml
One node, N GPUs: torchrun --standalone --nproc_per_node=N -m edm2lib.training --config cfg.yaml
SLURM:            srun -n N python -m edm2lib.training --config cfg.yaml
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from edm2lib import distributed, files
from edm2lib.data.dataset import LatentDataset, open_dataset
from edm2lib.nn.layers import MPConv
from edm2lib.nn.networks import Precond
from edm2lib.phema.ema import make_ema
from edm2lib.training import checkpoint, preempt, telemetry
from edm2lib.training.compiled import LossStep, wants_compile
from edm2lib.training.config import TrainConfig, identity_changes, identity_of
from edm2lib.training.loss import draw_noise, learning_rate
from edm2lib.training.status import RunLog, peak_memory_gib, progress_bar
from edm2lib.training.stream import ShardedSampler, derive_seed, make_generator


def check_dtype(dtype: str, device: torch.device) -> None:
    """Refuse, before any compute, an activation dtype the device cannot run (bf16 on a pre-Ampere GPU)."""
    if dtype == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name(device)
        raise ValueError(
            f"config key 'dtype' = 'bf16' but {device} ({name}) has no bfloat16 support; "
            "use dtype fp16 or fp32"
        )


@torch.no_grad()
def zero_nonfinite_grads(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """Replace NaN/Inf gradient entries by 0 (EDM2 App. D.2); return how many there were."""
    count = torch.zeros([], dtype=torch.int64, device=params[0].device)
    grads = [p.grad for p in params if p.grad is not None]
    if grads and count.device.type == "cpu":  # one check first (reading it costs nothing on the CPU):
        norms = torch.stack(torch._foreach_norm(grads))  # a NaN/Inf entry makes its tensor's norm NaN/Inf
        if bool(norms.isfinite().all()):
            return count
    for g in grads:
        count += (~torch.isfinite(g)).sum()
        torch.nan_to_num_(g, nan=0.0, posinf=0.0, neginf=0.0)
    return count


class Trainer:
    """One rank's training state; `run()` trains to `config.duration` or until preempted."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.dist = distributed.init(cfg.device)
        self.device = self.dist.device
        check_dtype(cfg.dtype, self.device)
        self.rounds = cfg.rounds(self.dist.world_size)
        self.batch_gpu = cfg.micro_batch(self.dist.world_size)
        self.dataset = open_dataset(cfg.data)
        self.net_kwargs = cfg.network_kwargs(self.dataset)
        self.run_dir = Path(cfg.run_dir)
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log = RunLog(self.run_dir, self.dist.is_main)
        self._was_deterministic = torch.are_deterministic_algorithms_enabled()  # restored by run()
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        torch.backends.cuda.matmul.allow_tf32 = False  # docs/official.md: no TF32, no reduced fp16 reductions
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False

        torch.manual_seed(cfg.seed)  # same initial weights on every rank
        self.net = Precond(**self.net_kwargs).to(self.device).train()
        self.params = list(self.net.parameters())
        self.mpconvs = [m for m in self.net.modules() if isinstance(m, MPConv)]
        self.forced = [m for m in self.mpconvs if m.weight_norm == "forced"]
        # Adam with the recipe's betas (EDM2 App. B.2: beta2 0.99 from B on), eps 1e-8; fused on CUDA
        self.fused = True if self.device.type == "cuda" else None
        self.optimizer = torch.optim.Adam(
            self.params, lr=0.0, betas=cfg.adam_betas, eps=1e-8, fused=self.fused
        )
        self.ema = make_ema(self.net, cfg)  # power-function (B-G) or traditional (A), per `cfg.ema`
        self.sampler = ShardedSampler(
            len(self.dataset), cfg.seed, self.dist.rank, self.dist.world_size, self.batch_gpu
        )
        self.loader = ThreadPoolExecutor(2, thread_name_prefix="edm2-data")  # reads overlap the step
        self.ahead: dict[int, Future] = {}  # micro-batch start -> its examples, being read
        self.nimg = 0
        self.probe: telemetry.Probe | None = None  # drawn on first use
        self.t_start = time.monotonic()
        self.elapsed_before = 0.0  # seconds spent in earlier sessions of this run
        self.nonfinite = torch.zeros([], dtype=torch.int64, device=self.device)  # gradient entries zeroed
        self.nonfinite_steps = torch.zeros([], dtype=torch.int64, device=self.device)
        self._resume()
        self.model = self.net
        if self.dist.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.net, device_ids=ids)
        compile = wants_compile(cfg.compile, self.device)  # docs/training.md, "Speed of the step"
        self.loss_step = LossStep(compile, device=self.device)

    # ---- resume / checkpoint -------------------------------------------------------------------------
    def _resume(self) -> None:
        found = None
        if self.dist.is_main:
            with warnings.catch_warnings(record=True) as skipped:
                warnings.simplefilter("always")
                found = checkpoint.find_latest_valid(self.run_dir)
            for w in skipped:
                self.log(f"warning: {w.message}")
                warnings.warn(w.message, stacklevel=2)
        # rank 0 picks the checkpoint, every rank loads that one; -2: checkpoints exist but none is valid
        none = -2 if self.dist.is_main and checkpoint.list_checkpoints(self.run_dir) else -1
        (nimg,) = distributed.all_reduce_max([checkpoint.nimg_of(found) if found else none], self.device)
        if nimg == -2:
            raise ValueError(
                f"{self.run_dir}/checkpoints: no checkpoint verifies (see the warnings); refusing to start "
                f"over in a used run_dir: delete the checkpoints to restart from scratch"
            )
        if nimg < 0:
            self.log(f"new run in {self.run_dir}: {self._describe()}")
            return
        path = checkpoint.checkpoint_dir(self.run_dir, int(nimg))
        ckpt = checkpoint.load(path)
        state = ckpt["state"]
        self._check_compatible(state, path)
        self.net.load_state_dict({k: v.to(self.device) for k, v in ckpt["net"].items()}, strict=True)
        checkpoint.load_optimizer(self.optimizer, ckpt["optimizer"], state["param_groups"])
        for group in self.optimizer.param_groups:  # the kernel choice follows this session's device
            group["fused"] = self.fused
        self.ema.load_state_dict({k: v.to(self.device) for k, v in ckpt["ema"].items()})
        self._set_rng(ckpt["rng"], state["world_size"])
        self.nimg = int(state["nimg"])
        self.elapsed_before = float(state["elapsed_s"])
        self.nonfinite += int(state["nonfinite_grads"])
        self.nonfinite_steps += int(state["nonfinite_steps"])
        self.log.truncate_stats(self.nimg)
        if self.dist.is_main:
            files.truncate_jsonl(self.run_dir / files.RUN_TELEMETRY, self.nimg)
        self.log(f"resumed from {path} at nimg {self.nimg}: {self._describe()}")

    def _describe(self) -> str:
        d = self.dist
        return (
            f"{d.world_size} rank(s) on {self.device}, batch {self.cfg.batch} = {self.batch_gpu} x "
            f"{self.rounds} round(s) x {d.world_size}, {sum(p.numel() for p in self.params):,} parameters, "
            f"data {self.dataset}"
        )

    def _check_compatible(self, state: dict[str, Any], path: Path) -> None:
        """Resume only the same experiment: every identity key must match (`TrainConfig.identity`)."""
        changes = identity_changes(identity_of(state["config"]), self.cfg.identity())
        if changes:
            raise ValueError(
                f"{path}: this run was trained with another identity (changed: {'; '.join(changes)}); "
                f"to start afresh delete {self.run_dir}/checkpoints and {self.run_dir}/snapshots "
                f"(or give the run a new name), or restore the original values"
            )
        precision = ("use_fp16", "compute_dtype")  # may change between sessions (e.g. resume on a CPU)
        saved_net, net = (
            {k: v for k, v in d.items() if k not in precision} for d in (state["network"], self.net_kwargs)
        )
        if saved_net != json.loads(json.dumps(net)):
            raise ValueError(f"{path}: checkpoint network {state['network']} differs from {self.net_kwargs}")

    def _rng_states(self) -> dict[str, torch.Tensor]:
        """Every rank's torch RNG states, gathered (all ranks must call it)."""
        states = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            states["cuda"] = torch.cuda.get_rng_state(self.device)
        out = {}
        for kind, state in states.items():
            gathered = distributed.all_gather(state.to(self.device))
            out.update({f"{kind}.{rank}": t.cpu() for rank, t in enumerate(gathered)})
        return out

    def _set_rng(self, states: dict[str, torch.Tensor], world_size: int) -> None:
        if world_size != self.dist.world_size:
            self.log(f"checkpoint was written by {world_size} ranks; RNG states not restored (not needed)")
            return
        torch.set_rng_state(states[f"cpu.{self.dist.rank}"])
        if self.device.type == "cuda" and f"cuda.{self.dist.rank}" in states:
            torch.cuda.set_rng_state(states[f"cuda.{self.dist.rank}"], self.device)

    def save_checkpoint(self, extra: dict[str, Any] | None = None) -> Path | None:
        """Collective: gather RNG states; rank 0 writes `checkpoints/ckpt-{nimg}` and prunes old ones."""
        rng = self._rng_states()
        path = None
        if self.dist.is_main:
            state = {
                "elapsed_s": self.elapsed(),
                "sampler": {"position": self.nimg, "seed": self.cfg.seed},
                "world_size": self.dist.world_size,
                "nonfinite_grads": int(self.nonfinite),
                "nonfinite_steps": int(self.nonfinite_steps),
                "network": self.net_kwargs,
                "config": self.cfg.to_dict(),
                "identity": self.cfg.identity_hash(),
                **(extra or {}),
            }
            t0 = time.monotonic()
            path = checkpoint.save(
                self.run_dir,
                self.nimg,
                self.net.state_dict(),
                self.optimizer,
                self.ema.state_dict(),
                rng,
                state,
                self.cfg.keep_checkpoints,
            )
            self.log(f"checkpoint {path} ({time.monotonic() - t0:.1f} s)")
        distributed.barrier()
        return path

    # ---- training ------------------------------------------------------------------------------------
    def elapsed(self) -> float:
        """Training seconds over all sessions of this run."""
        return self.elapsed_before + time.monotonic() - self.t_start

    def _examples(self, positions: range) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (network space) and one-hot labels of the stream entries `positions`, on the CPU."""
        indices = self.sampler.positions(positions.start, len(positions))
        if not isinstance(self.dataset, LatentDataset):
            return self.dataset.get_batch(indices)
        # a fresh latent sample per example and use (EDM2 App. B.1), seeded by its stream position
        raw, codec = self.dataset.raw(indices), self.dataset.codec
        x = [codec.encode_batch(raw[i : i + 1], make_generator("cpu", "latent", self.cfg.seed, q))
             for i, q in enumerate(positions)]  # fmt: skip
        return torch.cat(x), self.dataset.labels(indices)

    def _loaded(self, positions: range) -> tuple[torch.Tensor, torch.Tensor]:
        """`_examples`, in pinned memory when training on CUDA (the copy to the device then is async)."""
        images, labels = self._examples(positions)
        if self.device.type == "cuda":
            images, labels = images.pin_memory(), labels.pin_memory()
        return images, labels

    def _fetch(self, start: int, keep: bool = False) -> Future:
        """The examples of the micro-batch starting at stream position `start`, read by a loader thread.

        The result is a pure function of `start`, so reading ahead never changes what training sees.
        """
        future = self.ahead.get(start) if keep else self.ahead.pop(start, None)
        if future is None:
            future = self.loader.submit(self._loaded, range(start, start + self.batch_gpu))
            if keep:
                self.ahead[start] = future
        return future

    def step(self) -> torch.Tensor:
        """One optimizer step over the global batch at `self.nimg`; returns the summed per-element loss."""
        cfg = self.cfg
        lr = learning_rate(self.nimg, cfg.lr_ref, cfg.t_ref, cfg.warmup)  # EDM2 eq. 16, t before the step
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros([], dtype=torch.float64, device=self.device)
        starts = [self.sampler.micro_batch_start(self.nimg, r) for r in range(self.rounds)]
        batches = [self._fetch(start) for start in starts]
        for r in range(self.rounds):  # read the next step's examples while this one computes
            self._fetch(self.sampler.micro_batch_start(self.nimg + cfg.batch, r), keep=True)
        # forced weight normalisation (EDM2 sec. 2.3) once per step, before round 0, so that accumulation
        # rounds see the same weights as the other ranks; the forward then only normalises on use
        for m in self.forced:
            m.force_weight_norm_()
        for m in self.mpconvs:
            m.train(False)
        # docs/official.md: sum over pixels, mean over the global batch (DDP averages over ranks)
        scale = cfg.loss_scaling / (self.batch_gpu * self.rounds)
        for r, start in enumerate(starts):
            positions = range(start, start + self.batch_gpu)
            images, labels = batches[r].result()
            shape = tuple(images.shape[1:])
            sigma, noise = draw_noise(positions, shape, cfg.P_mean, cfg.P_std, cfg.seed, self.device)
            images = images.to(self.device, non_blocking=True)  # pinned by the loader on CUDA
            labels = labels.to(self.device, non_blocking=True)
            torch.manual_seed(derive_seed("dropout", cfg.seed, start))  # dropout draws from the global RNG
            last = r == self.rounds - 1
            sync = contextlib.nullcontext() if last or self.model is self.net else self.model.no_sync()
            with sync:
                args = (images, labels, sigma, noise, self.net.sigma_data, scale)
                loss_sum += self.loss_step(self.model, *args)
        for m in self.mpconvs:
            m.train(True)
        bad = zero_nonfinite_grads(self.params)
        self.nonfinite += bad
        self.nonfinite_steps += (bad > 0).long()
        self.optimizer.step()
        self.nimg += cfg.batch
        self.ema.update(self.net, self.nimg, cfg.batch)  # EDM2 Eq. 1: after the step, nimg advanced
        return loss_sum

    def run(self) -> dict[str, Any]:
        """Train until `duration` or a preemption signal; a summary with exit_code 0 or EXIT_PREEMPTED."""
        cfg = self.cfg
        self.t_start = time.monotonic()
        flag = preempt.PreemptionFlag(lambda: self.nimg)
        last_ckpt_time = time.monotonic()
        window = {"loss": torch.zeros([], dtype=torch.float64, device=self.device), "t": time.monotonic()}
        window.update(nimg=self.nimg, steps=0)
        bar = progress_bar(self.dist.is_main, cfg.duration, self.nimg)
        status: dict[str, Any] = {}
        exit_code, reason = 0, "done"
        try:
            while self.nimg < cfg.duration:
                window["loss"] += self.step()
                window["steps"] += 1
                if bar is not None:
                    bar.update(cfg.batch)
                due_time = (
                    cfg.checkpoint_minutes > 0
                    and time.monotonic() - last_ckpt_time >= 60 * cfg.checkpoint_minutes
                )
                stop, due_time, preempted = self._agree(flag, due_time)
                done = self.nimg >= cfg.duration
                if self.nimg % cfg.status_nimg == 0 or done or stop:
                    status = self._status(window)
                if self.dist.is_main and ((cfg.snapshot_nimg and self.nimg % cfg.snapshot_nimg == 0) or done):
                    self._snapshot()
                if self.dist.is_main and cfg.telemetry_nimg and (self.nimg % cfg.telemetry_nimg == 0 or done):
                    self._telemetry()
                ckpt_due = cfg.checkpoint_nimg and self.nimg % cfg.checkpoint_nimg == 0
                if ckpt_due or due_time or stop or done:
                    self.save_checkpoint({"preempt": preempted} if stop else {})
                    last_ckpt_time = time.monotonic()
                if stop:
                    exit_code, reason = preempt.EXIT_PREEMPTED, "preempted"
                    self.log(f"preempted by signal {preempted['signal']} at nimg {preempted['signal_nimg']}")
                    if self.dist.is_main:
                        preempt.maybe_requeue(cfg.requeue, self.log)
                    break
        finally:
            self.loader.shutdown(wait=False, cancel_futures=True)
            flag.restore()
            torch.use_deterministic_algorithms(self._was_deterministic)
            if bar is not None:
                bar.close()
        return {
            "status": reason,
            "exit_code": exit_code,
            "nimg": self.nimg,
            "elapsed_s": self.elapsed(),
            "nonfinite_grads": int(self.nonfinite),
            "nonfinite_steps": int(self.nonfinite_steps),
            "last_status": status,
            "run_dir": str(self.run_dir),
        }

    def _agree(self, flag: preempt.PreemptionFlag, due_time: bool) -> tuple[bool, bool, dict[str, int]]:
        """Collective: (stop, time for a checkpoint, preemption record) as every rank will see them."""
        # a signal on any rank stops all ranks; rank 0's clock decides time-based checkpoints
        neg_nimg = -flag.signal_nimg if flag.signal_nimg is not None else -math.inf
        mine = [flag.raised, self.dist.is_main and due_time, flag.signum or 0, neg_nimg]
        on = self.device if self.dist.world_size > 1 else torch.device("cpu")  # 1 rank: no device sync
        stop, due, signum, neg_nimg = distributed.all_reduce_max(mine, on)
        return bool(stop), bool(due), {"signal": int(signum), "signal_nimg": int(-neg_nimg) if stop else -1}

    def _status(self, window: dict[str, Any]) -> dict[str, Any]:
        """Collective: loss averaged over ranks and steps since the last status line; rank 0 logs it."""
        now = time.monotonic()
        loss = distributed.all_reduce_sum(window["loss"].clone())
        images = self.nimg - window["nimg"]
        elements = images * self.dataset.channels * self.dataset.resolution**2
        seconds = max(now - window["t"], 1e-9)
        stats = {
            "nimg": self.nimg,
            "loss": float(loss) / max(elements, 1),
            "lr": learning_rate(self.nimg - self.cfg.batch, self.cfg.lr_ref, self.cfg.t_ref, self.cfg.warmup),
            "images_per_s": images / seconds,
            "sec_per_step": seconds / max(window["steps"], 1),
            "peak_mem_gib": peak_memory_gib(self.device),
            "nonfinite_grads": int(self.nonfinite),
            "nonfinite_steps": int(self.nonfinite_steps),
            "elapsed_s": self.elapsed(),
        }
        self.log.record(stats)
        self.log(
            f"nimg {stats['nimg']:>12,d}  loss {stats['loss']:.4f}  lr {stats['lr']:.3e}  "
            f"{stats['images_per_s']:.1f} img/s  {stats['sec_per_step']:.3f} s/step  "
            f"mem {stats['peak_mem_gib']:.2f} GiB  nonfinite {stats['nonfinite_grads']}"
        )
        window.update(loss=torch.zeros_like(window["loss"]), t=now, nimg=self.nimg, steps=0)
        return stats

    def _telemetry(self) -> None:
        """Append the raw and the EMA network's magnitudes at this nimg to telemetry.jsonl (rank 0)."""
        cfg = self.cfg
        if self.probe is None:
            self.probe = telemetry.make_probe(
                self.dataset, cfg.telemetry_probe, cfg.seed, cfg.P_mean, cfg.P_std
            )
        ema_net = copy.deepcopy(self.net)  # the longest tracked EMA (or A's one), as plotted in EDM2 Fig. 15
        ema_net.load_state_dict(self.ema.averaged_state_dict(self.net))
        records = [
            telemetry.measure(n, self.probe, self.nimg, w) for n, w in ((self.net, "raw"), (ema_net, "ema"))
        ]
        files.append_jsonl(self.run_dir / files.RUN_TELEMETRY, records)

    def _snapshot(self) -> None:
        paths = self.ema.save_snapshots(
            self.run_dir / "snapshots",
            self.net,
            self.nimg,
            config=self.net.config,
            encoder=self.dataset.encoder,
            source=f"edm2lib training run {self.run_dir.name}",
            identity=self.cfg.identity_hash(),
            **({"batch_size": self.cfg.batch} if self.cfg.ema == "traditional" else {}),
        )
        self.log(f"snapshots {', '.join(p.name for p in paths)}")


def train(config: TrainConfig | dict[str, Any]) -> dict[str, Any]:
    """Train (resuming from the newest valid checkpoint in run_dir) and return a summary dict."""
    cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    try:
        return Trainer(cfg).run()
    finally:
        distributed.shutdown()
