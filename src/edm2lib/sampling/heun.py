"""The EDM sampler: deterministic Heun (+ churn), guidance, guidance interval and per-seed noise."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch


class SeedDraw(NamedTuple):
    """Per-seed randomness of one batch: unit noise, one-hot labels, class indices, the seeds' generators."""

    noise: torch.Tensor  # float32 [B, C, H, W], unit Gaussian
    labels: torch.Tensor | None  # float32 one-hot [B, label_dim]; None for an unconditional net
    classes: torch.Tensor  # int64 [B]: class index, -1 when unconditional
    generators: list[torch.Generator]  # CPU generators, positioned after the noise and class draws


def seed_noise_and_labels(
    seeds: Sequence[int],
    shape: Sequence[int],
    label_dim: int,
    device: str | torch.device = "cpu",
    class_idx: int | None = None,
) -> SeedDraw:
    """Draw each image's noise and class from its own CPU generator, seeded `seed mod 2^32` (docs/sampling.md)

    Per seed: randn(shape) then randint(label_dim) from the same generator, as the official sampler does on
    CPU, so an image depends only on its seed (not on the batch or rank split). Drawing on CPU and moving to
    `device` makes GPU runs reproduce CPU seeds; `class_idx` fixes the class (the draw still happens, keeping
    the generator position, and hence churn noise, the same as the official code).
    """
    if class_idx is not None and not 0 <= class_idx < label_dim:
        raise ValueError(f"class_idx={class_idx} is outside [0, label_dim={label_dim}); pick a valid class")
    gens = [torch.Generator().manual_seed(int(s) % (1 << 32)) for s in seeds]
    noise = torch.stack([torch.randn(list(shape), generator=g) for g in gens])
    classes = torch.full([len(gens)], -1, dtype=torch.int64)
    labels = None
    if label_dim > 0:
        classes = torch.stack([torch.randint(label_dim, size=[], generator=g) for g in gens])
        if class_idx is not None:
            classes[:] = class_idx
        labels = torch.eye(label_dim)[classes].to(device)
    return SeedDraw(noise.to(device), labels, classes, gens)


def karras_sigmas(
    num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0
) -> torch.Tensor:
    """The EDM noise schedule t_0 = sigma_max > ... > t_{N-1} = sigma_min, t_N = 0: N + 1 float64 values.

    Karras et al. 2022 ("Elucidating the Design Space of Diffusion-Based Generative Models") Eq. 5, the
    schedule of EDM2's sampler. Pass it as `sigmas` to `edm_sampler`, `count_nfe` and `evaluation_sigmas`.
    """
    if num_steps < 2:
        raise ValueError(f"num_steps={num_steps}: the EDM schedule needs at least 2 steps")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    i = torch.arange(num_steps, dtype=torch.float64)
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    t = (a + i / (num_steps - 1) * (b - a)) ** rho  # EDM Eq. 5
    return torch.cat([t, torch.zeros(1, dtype=torch.float64)])


def sigma_list(sigmas: torch.Tensor | Sequence[float]) -> list[float]:
    """`sigmas` as Python floats after checking it is a schedule: t_0 > ... > t_N >= 0, at least one step."""
    if isinstance(sigmas, int | float):
        raise ValueError(f"sigmas={sigmas!r}: expected a sequence of noise levels, e.g. karras_sigmas(32)")
    t = torch.as_tensor(sigmas, dtype=torch.float64)
    if t.ndim != 1 or len(t) < 2:
        raise ValueError(
            f"sigmas of shape {tuple(t.shape)}: expected N + 1 >= 2 noise levels, e.g. karras_sigmas(32)"
        )
    if not (torch.isfinite(t).all() and (t[-1] >= 0).item() and (torch.diff(t) < 0).all()):
        raise ValueError(
            f"sigmas={t.tolist()}: expected finite, strictly decreasing noise levels ending at >= 0"
        )
    return t.tolist()


def _churn_sigma(t: float, num_steps: int, S_churn: float, S_min: float, S_max: float) -> float:
    """t_hat = t (1 + gamma), gamma = min(S_churn/N, sqrt(2) - 1) inside [S_min, S_max] (EDM Alg. 2)."""
    if S_churn > 0 and S_min <= t <= S_max:
        return t * (1 + min(S_churn / num_steps, math.sqrt(2) - 1))  # EDM Alg. 2 line 4-5
    return t


def _guided_at(sigma: float, guidance: float, interval: tuple[float, float] | None) -> bool:
    """Whether the guide runs at `sigma`: w != 1 and sigma in (sigma_lo, sigma_hi] (arXiv 2404.07724)."""
    if guidance == 1:
        return False
    return interval is None or interval[0] < sigma <= interval[1]


def evaluation_sigmas(
    sigmas: torch.Tensor | Sequence[float],
    S_churn: float = 0,
    S_min: float = 0,
    S_max: float = float("inf"),
) -> list[float]:
    """The noise levels at which the sampler evaluates the denoiser, in order (2N - 1 when t_N = 0)."""
    t = sigma_list(sigmas)
    num_steps = len(t) - 1
    out = []
    for i in range(num_steps):
        out.append(_churn_sigma(t[i], num_steps, S_churn, S_min, S_max))  # Euler step at t_hat
        if t[i + 1] != 0:
            out.append(t[i + 1])  # Heun correction at t_{i+1}
    return out


def count_nfe(
    sigmas: torch.Tensor | Sequence[float],
    guidance: float = 1.0,
    guidance_interval: tuple[float, float] | None = None,
    S_churn: float = 0,
    S_min: float = 0,
    S_max: float = float("inf"),
) -> dict[str, int]:
    """Network evaluations per image: `main` (2N - 1), `guide` (those inside the interval) and `total`."""
    evaluated = evaluation_sigmas(sigmas, S_churn, S_min, S_max)
    interval = _check_interval(guidance_interval)
    guide = sum(_guided_at(s, guidance, interval) for s in evaluated)
    return {"main": len(evaluated), "guide": guide, "total": len(evaluated) + guide}


def _check_interval(interval: Sequence[float] | None) -> tuple[float, float] | None:
    if interval is None:
        return None
    if len(interval) != 2 or not 0 <= interval[0] < interval[1]:
        raise ValueError(f"guidance_interval={interval!r}: expected (sigma_lo, sigma_hi) with 0 <= lo < hi")
    return float(interval[0]), float(interval[1])


def check_sampler_inputs(
    net: torch.nn.Module,
    noise: torch.Tensor,
    labels: torch.Tensor | None,
    sigmas: torch.Tensor | Sequence[float],
    guidance: float,
    gnet: torch.nn.Module | None,
    guidance_interval: Sequence[float] | None,
) -> tuple[float, float] | None:
    """Raise ValueError for inputs the sampler cannot honour; returns the validated interval."""
    sigma_list(sigmas)
    C, R = net.img_channels, net.img_resolution
    if noise.ndim != 4 or tuple(noise.shape[1:]) != (C, R, R):
        raise ValueError(f"noise shape {tuple(noise.shape)}: the network expects [B,{C},{R},{R}]")
    if labels is not None:
        if net.label_dim == 0:
            raise ValueError("labels given but the network is unconditional (label_dim 0); pass labels=None")
        if tuple(labels.shape) != (noise.shape[0], net.label_dim):
            raise ValueError(
                f"labels shape {tuple(labels.shape)}: expected one-hot [{noise.shape[0]}, {net.label_dim}]"
            )
    if guidance != 1 and gnet is None:
        raise ValueError(f"guidance={guidance} needs a guiding network (gnet); pass gnet or guidance=1")
    if gnet is not None and (gnet.img_channels, gnet.img_resolution) != (C, R):
        raise ValueError(
            f"guiding network is {gnet.img_channels}x{gnet.img_resolution}^2 but the main network is "
            f"{C}x{R}^2; the guide must work in the same space"
        )
    return _check_interval(guidance_interval)


@torch.no_grad()
def edm_sampler(
    net: torch.nn.Module,
    noise: torch.Tensor,
    labels: torch.Tensor | None = None,
    sigmas: torch.Tensor | Sequence[float] | None = None,
    *,
    guidance: float = 1.0,
    gnet: torch.nn.Module | None = None,
    guidance_interval: Sequence[float] | None = None,
    S_churn: float = 0,
    S_min: float = 0,
    S_max: float = float("inf"),
    S_noise: float = 1,
    generators: Sequence[torch.Generator] | None = None,
    dtype: torch.dtype = torch.float32,
    callback: Callable[[int, float, float, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Solve the probability-flow ODE from x_0 = noise * t_0 down the schedule `sigmas` with Heun's method.

    EDM Alg. 2 in k-diffusion's shape: `sigmas` = t_0 > ... > t_N (default `karras_sigmas(32)`, EDM2's
    32-step schedule); a step to t_{i+1} = 0 is a plain Euler step.
    `noise` is unit Gaussian [B,C,H,W]; `labels` one-hot [B,label_dim] go to both nets. With a guide `gnet`,
    D = D_g + w (D_main - D_g) (EDM2 sec. 5 / autoguidance), applied only where sigma is in
    `guidance_interval` = (sigma_lo, sigma_hi] (arXiv 2404.07724); elsewhere D = D_main and the guide is not
    evaluated. Churn noise comes from `generators` (one per image, e.g. `SeedDraw.generators`; default: the
    global RNG). `callback(i, t_cur, t_next, x_next)` runs after every step. Returns x in `dtype`.
    """
    t = sigma_list(karras_sigmas(32) if sigmas is None else sigmas)
    interval = check_sampler_inputs(net, noise, labels, t, guidance, gnet, guidance_interval)
    if generators is not None and len(generators) != noise.shape[0]:
        raise ValueError(f"{len(generators)} generators for a batch of {noise.shape[0]}; pass one per image")
    glabels = labels if gnet is not None and gnet.label_dim > 0 else None

    def denoise(x: torch.Tensor, sigma: float) -> torch.Tensor:
        s = torch.full([x.shape[0]], sigma, dtype=dtype, device=x.device)
        D = net(x, s, labels).to(dtype)
        if not _guided_at(sigma, guidance, interval):
            return D
        D_g = gnet(x, s, glabels).to(dtype)
        return D_g + guidance * (D - D_g)  # docs/sampling.md: guidance as a lerp from the guide

    def churn_noise(like: torch.Tensor) -> torch.Tensor:
        if generators is None:
            return torch.randn_like(like)
        eps = torch.stack([torch.randn(like.shape[1:], generator=g) for g in generators])
        return eps.to(device=like.device, dtype=like.dtype)

    num_steps = len(t) - 1
    x_next = noise.to(dtype) * t[0]  # EDM Alg. 2 line 1: x_0 = noise * t_0
    for i in range(num_steps):
        t_cur, t_next, x_cur = t[i], t[i + 1], x_next
        t_hat = _churn_sigma(t_cur, num_steps, S_churn, S_min, S_max)
        x_hat = x_cur
        if t_hat > t_cur:  # EDM Alg. 2 line 6: raise the noise level to t_hat
            x_hat = x_cur + math.sqrt(t_hat**2 - t_cur**2) * S_noise * churn_noise(x_cur)
        d_cur = (x_hat - denoise(x_hat, t_hat)) / t_hat  # EDM Alg. 2 line 7
        x_next = x_hat + (t_next - t_hat) * d_cur  # Euler step, line 8
        if t_next != 0:  # Heun correction, EDM Alg. 2 lines 9-11 (none on a step to sigma 0)
            d_prime = (x_next - denoise(x_next, t_next)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
        if callback is not None:
            callback(i, t_cur, t_next, x_next)
    return x_next
