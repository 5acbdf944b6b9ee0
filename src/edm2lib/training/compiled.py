"""The loss step of one micro-batch (network + loss + backward), compiled by `torch.compile` where it helps.

`compile: auto` compiles on CUDA only: on the CPU, inductor's compile time (minutes on a small machine)
outweighs its per-step gain for runs of less than hours (docs/training.md, "Speed of the step"). A compile
failure, at the first step or at a later recompile, falls back to eager with one warning; the global RNG
(dropout draws) is restored first, so the eager retry draws what the compiled call would have.

On the CPU inductor's layout optimisation (convolutions in channels-last) is switched off: with it, the
attention's per-head q/k/v normalisation becomes a reduction that opens one OpenMP region per pixel row,
and the compiled edm2-demo step measured 0.55x eager; in the networks' own NCHW layout it is faster than
eager (docs/training.md, "Speed of the step").
"""

from __future__ import annotations

import warnings

import torch

from edm2lib.training.loss import edm2_loss

COMPILE_MODES = ("auto", True, False)


def wants_compile(mode: str | bool, device: torch.device) -> bool:
    """Whether config key `compile` asks for torch.compile on `device` (auto: on CUDA only)."""
    if mode == "auto":
        return device.type == "cuda"
    return bool(mode)


def micro_batch_loss(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    sigma: torch.Tensor,
    noise: torch.Tensor,
    sigma_data: float,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss sum x `scale`, the detached loss sum) of one micro-batch: backpropagate the first."""
    loss = edm2_loss(model, images, labels, sigma_data=sigma_data, sigma=sigma, noise=noise)
    total = loss.sum()  # docs/official.md: sum over pixels; `scale` divides by the global batch
    return total * scale, total.detach()


def inductor_options(device: torch.device | str) -> dict[str, bool]:
    """inductor settings of the compiled loss step on `device` (see the module docstring)."""
    options = {"fallback_random": True}
    if torch.device(device).type == "cpu":
        options["layout_optimization"] = False
    return options


class LossStep:
    """Forward and backward of one micro-batch; returns the detached loss sum (no host sync)."""

    def __init__(self, compile: bool, backend: str = "inductor", device: torch.device | str = "cpu"):
        self.compiled = None
        self.failure: str | None = None  # why compiling failed, once it has
        if compile:  # inductor's fallback_random: dropout draws from the global RNG exactly as eager does
            options = inductor_options(device) if backend == "inductor" else None
            try:  # static shapes: a run's micro-batches all have one shape
                self.compiled = torch.compile(
                    micro_batch_loss, backend=backend, options=options, dynamic=False
                )
            except Exception as e:  # e.g. a Python version dynamo does not support yet
                self._fall_back(e)

    @property
    def is_compiled(self) -> bool:
        return self.compiled is not None

    def __call__(self, model: torch.nn.Module, *args) -> torch.Tensor:
        if self.compiled is not None:
            rng = _rng_states()
            try:
                scaled, total = self.compiled(model, *args)
                scaled.backward()  # a compiled backward that fails has accumulated no gradient yet
                return total
            except Exception as e:  # any compile or lowering error: fall back, never crash
                self._fall_back(e)
                _set_rng_states(rng)
        scaled, total = micro_batch_loss(model, *args)
        scaled.backward()
        return total

    def _fall_back(self, error: Exception) -> None:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        self.failure = f"{type(error).__name__}: {first}"[:300]
        self.compiled = None
        warnings.warn(f"torch.compile failed, training continues eager ({self.failure})", stacklevel=3)


def _rng_states() -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def _set_rng_states(states: tuple[torch.Tensor, list[torch.Tensor] | None]) -> None:
    cpu, cuda = states
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)
