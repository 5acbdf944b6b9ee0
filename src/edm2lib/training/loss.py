"""The EDM2 training objective: the loss per element, its per-example noise draws, and the lr schedule."""

from __future__ import annotations

import math

import torch

from edm2lib.training.stream import make_generator


def edm2_loss(
    net: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    P_mean: float = -0.4,
    P_std: float = 1.0,
    sigma_data: float = 0.5,
    generator: torch.Generator | None = None,
    sigma: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-element loss [B, C, H, W] of a `Precond` on clean `images`; sum it and divide by the batch size.

    RNG order as the official code: the log-normal sigma noise randn([B, 1, 1, 1]) first, then the image
    noise shaped like `images`, both from `generator` (the global RNG if None). Callers that draw per
    example (the training loop) pass `sigma` [B,1,1,1] and unit `noise` instead.
    """
    if sigma is None:
        rnd_normal = torch.randn([images.shape[0], 1, 1, 1], device=images.device, generator=generator)
        sigma = (rnd_normal * P_std + P_mean).exp()  # ln(sigma) ~ N(P_mean, P_std^2) (EDM Table 1)
    if noise is None:
        noise = torch.randn(images.shape, device=images.device, dtype=images.dtype, generator=generator)
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2  # lambda(sigma) (EDM2 Eq. 15)
    denoised, logvar = net(images + noise * sigma, sigma, labels, return_logvar=True)
    # Uncertainty-weighted loss, u(sigma) learned (EDM2 Eq. 21).
    return (weight / logvar.exp()) * (denoised - images) ** 2 + logvar


def draw_noise(
    positions: range,
    shape: tuple[int, ...],
    P_mean: float,
    P_std: float,
    seed: int,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma [B,1,1,1], noise [B,*shape]) on `device`, one seeded generator per stream position."""
    sigma = torch.empty(len(positions), 1, 1, 1, device=device)
    noise = torch.empty(len(positions), *shape, device=device)
    for i, q in enumerate(positions):
        g = make_generator(device, "noise", seed, q)
        torch.randn([1, 1, 1], generator=g, out=sigma[i])
        torch.randn(shape, generator=g, out=noise[i])
    return (sigma * P_std + P_mean).exp(), noise  # ln(sigma) ~ N(P_mean, P_std^2) (EDM Table 1)


def learning_rate(nimg: int, lr_ref: float, t_ref: float, warmup: float = 10_000_000) -> float:
    """lr for the step taken after `nimg` training images (so the very first step has lr 0).

    `t_ref` and `warmup` are in images (the paper gives t_ref in batches: multiply by the batch size).
    """
    # EDM2 Eq. 67: alpha_ref / sqrt(max(t / t_ref, 1)), times a linear warm-up
    if nimg < 0 or t_ref <= 0 or warmup < 0:
        raise ValueError(
            f"learning_rate: need nimg >= 0, t_ref > 0, warmup >= 0 (got {nimg}, {t_ref}, {warmup})"
        )
    lr = lr_ref / math.sqrt(max(nimg / t_ref, 1.0))
    if warmup > 0:
        lr *= min(nimg / warmup, 1.0)
    return lr
