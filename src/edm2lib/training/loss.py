"""Per-example noise draws for the EDM2 training loss, so a global batch means the same whatever its split.

`edm2lib.loss.edm2_loss` draws the noise of a whole micro-batch from one generator, which ties the draws to
the micro-batch size. Here example q of the training stream (its position, see `data_sampler`) gets its own
generator seeded from (seed, q) and draws, in the official order, its noise level then its noise
(EDM2-FACTS 6.1), on the device that trains (per-example generators cost one small kernel per draw). The
draws go to `edm2lib.loss.edm2_loss(..., sigma=, noise=)`.
"""

from __future__ import annotations

import torch

from edm2lib.training.data_sampler import make_generator


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
    return (sigma * P_std + P_mean).exp(), noise  # ln(sigma) ~ N(P_mean, P_std^2) (EDM2-FACTS 6.1)
