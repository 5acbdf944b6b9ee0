"""Online EMA tracking of any torch module and snapshot writing: `PowerFunctionEMA` (EDM2 Sec. 3, configs
B-G) and `TraditionalEMA` (EDM's half-life EMA, CONFIG A)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edm2lib import files
from edm2lib.phema.profiles import (
    power_function_beta,
    sigma_rel_to_gamma,
    traditional_beta,
    traditional_sigma_rel,
)


class PowerFunctionEMA:
    """fp32 power-function EMAs of a module's parameters, one per `sigma_rel` (EDM2 sec. 3.1).

    Call `update(net, cur_nimg, batch_size)` after every optimizer step, with `cur_nimg` already advanced.
    Buffers are not averaged; snapshots copy them from the live network.
    """

    kind = "power"

    def __init__(self, net: torch.nn.Module, sigma_rels: Iterable[float] = (0.05, 0.10)):
        self.sigma_rels = [float(s) for s in sigma_rels]
        if not self.sigma_rels or len(set(self.sigma_rels)) != len(self.sigma_rels):
            raise ValueError(f"sigma_rels {self.sigma_rels} must be non-empty and distinct")
        self.gammas = [float(g) for g in np.atleast_1d(sigma_rel_to_gamma(self.sigma_rels))]
        self.param_names = [name for name, _ in net.named_parameters()]
        self.emas = [
            [p.detach().to(torch.float32, copy=True) for p in net.parameters()] for _ in self.sigma_rels
        ]

    def _live(self, net: torch.nn.Module) -> list[torch.Tensor]:
        params = list(net.named_parameters())
        if [n for n, _ in params] != self.param_names:
            raise ValueError("net's parameters differ from the ones this EMA was built with (names/order)")
        return [p.detach().float() for _, p in params]

    @torch.no_grad()
    def update(self, net: torch.nn.Module, cur_nimg: int, batch_size: int) -> None:
        """Advance every EMA by one step that brought training time to `cur_nimg` images."""
        live = self._live(net)
        for gamma, ema in zip(self.gammas, self.emas):
            beta = power_function_beta(cur_nimg, batch_size, gamma)  # first step: beta = 0 -> copy
            torch._foreach_lerp_(ema, live, 1.0 - beta)  # EDM2 Eq. 1: ema <- ema + (1 - beta)(net - ema)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat tensors for a safetensors checkpoint: `sigma_rels` and `ema.{index}.{param name}`."""
        sd = {"sigma_rels": torch.tensor(self.sigma_rels, dtype=torch.float64)}
        for i, ema in enumerate(self.emas):
            sd.update({f"ema.{i}.{name}": t for name, t in zip(self.param_names, ema)})
        return sd

    @torch.no_grad()
    def load_state_dict(self, sd: Mapping[str, torch.Tensor]) -> None:
        """Restore EMAs written by `state_dict` (same sigma_rels and parameter names, strict)."""
        saved = sd.get("sigma_rels")
        if saved is None or saved.tolist() != self.sigma_rels:
            got = None if saved is None else saved.tolist()
            raise ValueError(f"EMA state has sigma_rels {got}, this tracker {self.sigma_rels}")
        expected = {"sigma_rels"} | {f"ema.{i}.{n}" for i in range(len(self.emas)) for n in self.param_names}
        if set(sd) != expected:
            raise ValueError(
                f"EMA state keys differ: missing {sorted(expected - set(sd))[:5]}, "
                f"unexpected {sorted(set(sd) - expected)[:5]}"
            )
        for i, ema in enumerate(self.emas):
            for name, t in zip(self.param_names, ema):
                src = sd[f"ema.{i}.{name}"]
                if src.shape != t.shape:
                    raise ValueError(
                        f"EMA state key ema.{i}.{name}: shape {tuple(src.shape)} != {tuple(t.shape)}"
                    )
                t.copy_(src)

    def _index(self, sigma_rel: float) -> int:
        for i, s in enumerate(self.sigma_rels):
            if np.isclose(s, sigma_rel, rtol=0, atol=1e-9):
                return i
        raise ValueError(f"sigma_rel {sigma_rel} is not tracked; tracked: {self.sigma_rels}")

    @torch.no_grad()
    def snapshot_state_dict(self, net: torch.nn.Module, sigma_rel: float) -> dict[str, torch.Tensor]:
        """`net.state_dict()` key names with the EMA parameters of `sigma_rel` and the live buffers."""
        return _with_params(net, dict(zip(self.param_names, self.emas[self._index(sigma_rel)])))

    def averaged_state_dict(self, net: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The longest tracked EMA as a state dict (the network EDM2 Fig. 15 plots)."""
        return self.snapshot_state_dict(net, max(self.sigma_rels))

    def buffer_names(self, net: torch.nn.Module) -> list[str]:
        """State-dict keys of `net` that are buffers (copied, never averaged, by reconstruction)."""
        params = {name for name, _ in net.named_parameters(remove_duplicate=False)}
        return [key for key in net.state_dict() if key not in params]

    def save_snapshots(
        self,
        directory: str | os.PathLike,
        net: torch.nn.Module,
        nimg: int,
        config: Mapping[str, Any] | None = None,
        dtype: torch.dtype = torch.float16,
        **meta: Any,
    ) -> list[Path]:
        """Write one network file per tracked sigma_rel, `snapshot-{nimg:012d}-{sigma_rel:.3f}.safetensors`.

        `config` defaults to `net.config` (the `Precond` keywords) or {}; `meta` (e.g. `encoder`) is stored.
        """
        if config is None:
            config = getattr(net, "config", None) or {}
        paths = []
        for sigma_rel, gamma in zip(self.sigma_rels, self.gammas):
            path = Path(directory) / files.snapshot_name(nimg, sigma_rel)
            files.save_network(
                path,
                self.snapshot_state_dict(net, sigma_rel),
                config,
                dtype=dtype,
                nimg=int(nimg),
                sigma_rel=sigma_rel,
                gamma=gamma,
                buffers=self.buffer_names(net),
                **meta,
            )
            paths.append(path)
        return paths


class TraditionalEMA:
    """One fp32 exponential moving average with EDM's half-life in images and ramp-up (CONFIG A, EDM2
    Sec. 2 / App. B.1); the same interface as `PowerFunctionEMA` (update, state dict, snapshots).

    Its snapshots are not post-hoc reconstruction inputs: they are named `ema-*-traditional` and record
    `ema: traditional`, `halflife_nimg`, `rampup_ratio` and the profile's `sigma_rel_equivalent`.
    """

    kind = "traditional"

    def __init__(self, net: torch.nn.Module, halflife_nimg: float, rampup_ratio: float | None = 0.05):
        if not halflife_nimg > 0:
            raise ValueError(f"EMA half-life must be positive images, got {halflife_nimg!r}")
        if rampup_ratio is not None and not rampup_ratio > 0:
            raise ValueError(f"EMA ramp-up ratio must be positive or None, got {rampup_ratio!r}")
        self.halflife_nimg = float(halflife_nimg)
        self.rampup_ratio = None if rampup_ratio is None else float(rampup_ratio)
        self.param_names = [name for name, _ in net.named_parameters()]
        self.ema = [p.detach().to(torch.float32, copy=True) for p in net.parameters()]

    _live = PowerFunctionEMA._live
    buffer_names = PowerFunctionEMA.buffer_names

    @torch.no_grad()
    def update(self, net: torch.nn.Module, cur_nimg: int, batch_size: int) -> None:
        """Advance by the step that brought training time to `cur_nimg` images (EDM counts the time
        before the step, so the half-life uses `cur_nimg - batch_size`)."""
        beta = traditional_beta(cur_nimg - batch_size, batch_size, self.halflife_nimg, self.rampup_ratio)
        torch._foreach_lerp_(self.ema, self._live(net), 1.0 - beta)  # ema <- beta ema + (1 - beta) net

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat tensors: `halflife_nimg`, `rampup_ratio` (-1: none) and `ema.0.{param name}`."""
        ramp = -1.0 if self.rampup_ratio is None else self.rampup_ratio
        sd = {"halflife_nimg": torch.tensor(self.halflife_nimg, dtype=torch.float64)}
        sd["rampup_ratio"] = torch.tensor(ramp, dtype=torch.float64)
        sd.update({f"ema.0.{name}": t for name, t in zip(self.param_names, self.ema)})
        return sd

    @torch.no_grad()
    def load_state_dict(self, sd: Mapping[str, torch.Tensor]) -> None:
        """Restore an EMA written by `state_dict` (same half-life, ramp-up and parameter names, strict)."""
        mine = self.state_dict()
        if set(sd) != set(mine):
            raise ValueError(
                f"EMA state keys differ (a power-function EMA checkpoint?): missing "
                f"{sorted(set(mine) - set(sd))[:5]}, unexpected {sorted(set(sd) - set(mine))[:5]}"
            )
        for key in ("halflife_nimg", "rampup_ratio"):
            if float(sd[key]) != float(mine[key]):
                raise ValueError(f"EMA state has {key} {float(sd[key])}, this tracker {float(mine[key])}")
        for name, t in zip(self.param_names, self.ema):
            src = sd[f"ema.0.{name}"]
            if src.shape != t.shape:
                raise ValueError(f"EMA state key ema.0.{name}: shape {tuple(src.shape)} != {tuple(t.shape)}")
            t.copy_(src)

    def averaged_state_dict(self, net: torch.nn.Module) -> dict[str, torch.Tensor]:
        """`net.state_dict()` key names with the EMA parameters and the live buffers."""
        return _with_params(net, dict(zip(self.param_names, self.ema)))

    def sigma_rel(self, nimg: int, batch_size: int) -> float:
        """The relative std of this EMA's averaging profile at `nimg` (`traditional_sigma_rel`)."""
        return traditional_sigma_rel(nimg, batch_size, self.halflife_nimg, self.rampup_ratio)

    def save_snapshots(
        self,
        directory: str | os.PathLike,
        net: torch.nn.Module,
        nimg: int,
        config: Mapping[str, Any] | None = None,
        dtype: torch.dtype = torch.float16,
        batch_size: int | None = None,
        **meta: Any,
    ) -> list[Path]:
        """Write `ema-{nimg:012d}-traditional.safetensors` (one file; with `batch_size`, the training batch
        and the profile's `sigma_rel_equivalent` are recorded too)."""
        if config is None:
            config = getattr(net, "config", None) or {}
        path = Path(directory) / files.traditional_snapshot_name(nimg)
        extra = {}
        if batch_size is not None:
            extra = {"batch": int(batch_size), "sigma_rel_equivalent": self.sigma_rel(nimg, batch_size)}
        files.save_network(
            path,
            self.averaged_state_dict(net),
            config,
            dtype=dtype,
            nimg=int(nimg),
            ema="traditional",
            halflife_nimg=self.halflife_nimg,
            rampup_ratio=self.rampup_ratio,
            buffers=self.buffer_names(net),
            **extra,
            **meta,
        )
        return [path]


def _with_params(net: torch.nn.Module, ema: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`net.state_dict()` with the parameters replaced by `ema` (name -> tensor) and the live buffers."""
    by_id = {id(p): name for name, p in net.named_parameters()}  # tied parameters share one EMA
    aliases = {name: by_id[id(p)] for name, p in net.named_parameters(remove_duplicate=False)}
    return {
        key: (ema[aliases[key]] if key in aliases else value.detach()).clone()
        for key, value in net.state_dict(keep_vars=True).items()
    }


def make_ema(net: torch.nn.Module, cfg: Any) -> PowerFunctionEMA | TraditionalEMA:
    """The EMA a training config asks for: `ema: power` (sigma_rels) or `ema: traditional` (half-life)."""
    if cfg.ema == "traditional":
        return TraditionalEMA(net, cfg.ema_halflife_nimg, cfg.ema_rampup_ratio)
    return PowerFunctionEMA(net, cfg.sigma_rels)
