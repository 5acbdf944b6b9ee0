"""Magnitude-preserving primitives of the EDM2 U-Net (EDM2 paper section 3, config G; EDM2-FACTS 4.1)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

_SILU_RMS = 0.596  # RMS of silu(x), x ~ N(0, 1): dividing by it restores unit magnitude (EDM2 config G)


def normalize(x: torch.Tensor, dim: int | Sequence[int] | None = None, eps: float = 1e-4) -> torch.Tensor:
    """Scale `x` to unit RMS over `dim` (default: all but dim 0); the norm is taken in float32.

    EDM2-FACTS 4.1: x / (eps + ||x||_dim / sqrt(N)), eps added to the RMS, not under the root.
    """
    if dim is None:
        dim = list(range(1, x.ndim))
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    norm = torch.add(eps, norm, alpha=math.sqrt(norm.numel() / x.numel()))  # ||x|| / sqrt(N) + eps
    return x / norm.to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """Magnitude-preserving SiLU (EDM2 config G, EDM2-FACTS 4.1)."""
    return F.silu(x) / _SILU_RMS


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """Magnitude-preserving weighted sum ((1-t) a + t b) / sqrt((1-t)^2 + t^2) (EDM2 config G)."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


def mp_cat(a: torch.Tensor, b: torch.Tensor, dim: int = 1, t: float = 0.5) -> torch.Tensor:
    """Magnitude-preserving concatenation along `dim`, `t` balancing b against a (EDM2 config G)."""
    Na, Nb = a.shape[dim], b.shape[dim]
    C = math.sqrt((Na + Nb) / ((1 - t) ** 2 + t**2))
    return torch.cat([a * (C / math.sqrt(Na) * (1 - t)), b * (C / math.sqrt(Nb) * t)], dim=dim)


def resample(x: torch.Tensor, f: Sequence[float] = (1, 1), mode: str = "keep") -> torch.Tensor:
    """2x down-/up-sampling with the separable filter f f^T normalised to sum 1 (EDM2-FACTS 4.1).

    The default filter [1, 1] is 2x2 average pooling (down) and nearest-neighbour upsampling (up).
    """
    if mode == "keep":
        return x
    if mode not in ("down", "up"):
        raise ValueError(f"resample mode {mode!r} is not one of 'keep', 'down', 'up'")
    if tuple(f) == (1, 1):  # the paper's filter: use the dedicated (faster) kernels
        if mode == "down":
            return F.avg_pool2d(x, 2)
        return F.interpolate(x, scale_factor=2.0, mode="nearest")
    f1 = torch.as_tensor(f, dtype=torch.float32, device=x.device)
    f2 = (f1.ger(f1) / f1.sum().square()).to(x.dtype)
    C, pad = x.shape[1], (len(f) - 1) // 2
    w = f2.expand(C, 1, *f2.shape)
    if mode == "down":
        return F.conv2d(x, w, groups=C, stride=2, padding=pad)
    return F.conv_transpose2d(x, w * 4, groups=C, stride=2, padding=pad)


class MPFourier(nn.Module):
    """Magnitude-preserving Fourier features sqrt(2) cos(2 pi (f x + p)) of a noise level (EDM2 config G)."""

    def __init__(self, num_channels: int, bandwidth: float = 1):
        super().__init__()
        # EDM2-FACTS 4.5: freqs drawn before phases, from the global RNG
        self.register_buffer("freqs", 2 * math.pi * torch.randn(num_channels) * bandwidth)
        self.register_buffer("phases", 2 * math.pi * torch.rand(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.to(torch.float32).ger(self.freqs.to(torch.float32)) + self.phases.to(torch.float32)
        return (y.cos() * math.sqrt(2)).to(x.dtype)


class MPConv(nn.Module):
    """Bias-free linear ([] kernel) or 2-D convolution, forced weight normalisation (EDM2 config D-E)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: Sequence[int]):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, *kernel))
        self.fan_in = in_channels * math.prod(kernel)

    def forward(self, x: torch.Tensor, gain: float | torch.Tensor = 1) -> torch.Tensor:
        w = self.weight.to(torch.float32)
        if self.training:
            # Forced weight normalisation: the stored weight stays unit-norm (EDM2 config E).
            with torch.no_grad():
                self.weight.copy_(normalize(w))
        w = normalize(w)  # traditional weight normalisation on top, differentiable (EDM2 config E)
        w = (w * (gain / math.sqrt(self.fan_in))).to(x.dtype)  # MP fan-in scaling (EDM2 config D)
        if w.ndim == 2:
            return x @ w.t()
        return F.conv2d(x, w, padding=w.shape[-1] // 2)
