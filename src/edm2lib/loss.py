"""The EDM2 training loss with learned uncertainty weighting, per element (EDM2-FACTS 6.1)."""

from __future__ import annotations

import torch


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
        sigma = (rnd_normal * P_std + P_mean).exp()  # ln(sigma) ~ N(P_mean, P_std^2) (EDM2-FACTS 6.1)
    if noise is None:
        noise = torch.randn(images.shape, device=images.device, dtype=images.dtype, generator=generator)
    weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2  # lambda(sigma) (EDM2-FACTS 6.1)
    denoised, logvar = net(images + noise * sigma, sigma, labels, return_logvar=True)
    # Uncertainty-weighted loss, u(sigma) learned (EDM2-FACTS 6.1).
    return (weight / logvar.exp()) * (denoised - images) ** 2 + logvar
