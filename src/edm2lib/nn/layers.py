"""The U-Net's layers for every config of the ladder: learned conv/linear, norms, embeddings, joins."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

# sqrt(E[silu(x)^2]) for x ~ N(0, 1): dividing by it gives SiLU unit output magnitude (EDM2 Eq. 81).
SILU_MAGNITUDE = 0.596


def normalize(x: torch.Tensor, dim: int | Sequence[int] | None = None, eps: float = 1e-4) -> torch.Tensor:
    """`x` divided by (eps + its RMS over `dim`), default all dims but 0; the norm runs in float32.

    The eps sits beside the RMS, not under the root (EDM2 Alg. 1), which the parity with the official
    network relies on.
    """
    dims = list(range(1, x.ndim)) if dim is None else dim
    norm = torch.linalg.vector_norm(x, dim=dims, keepdim=True, dtype=torch.float32)
    per_element = math.sqrt(norm.numel() / x.numel())  # 1 / sqrt(N), N = elements under one norm
    rms_plus_eps = torch.add(eps, norm, alpha=per_element)  # EDM2 Eq. 46 (unit-RMS form of Alg. 1)
    return x / rms_plus_eps.to(x.dtype)


def silu(x: torch.Tensor, mp: bool) -> torch.Tensor:
    """SiLU, divided by its magnitude if `mp` (EDM2 Eq. 81)."""
    return mp_silu(x) if mp else F.silu(x)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """Magnitude-preserving SiLU silu(x) / 0.596 (EDM2 Eq. 81)."""
    return F.silu(x) / SILU_MAGNITUDE


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.5) -> torch.Tensor:
    """((1 - t) a + t b) / sqrt((1 - t)^2 + t^2): unit magnitude for unit inputs (EDM2 Eq. 88)."""
    scale = math.hypot(1 - t, t)
    return torch.lerp(a, b, t) / scale  # EDM2 Eq. 88 (MP-Sum)


def mp_cat(a: torch.Tensor, b: torch.Tensor, dim: int = 1, t: float = 0.5) -> torch.Tensor:
    """Concatenation along `dim` with b's share of the energy set by t (EDM2 Eq. 103, MP-Cat)."""
    n_a, n_b = a.shape[dim], b.shape[dim]
    total = math.sqrt((n_a + n_b) / ((1 - t) ** 2 + t**2))  # EDM2 Eq. 103
    return torch.cat([a * ((1 - t) * total / math.sqrt(n_a)), b * (t * total / math.sqrt(n_b))], dim=dim)


def resample(x: torch.Tensor, f: Sequence[float] = (1, 1), mode: str = "keep") -> torch.Tensor:
    """2x 'down' / 'up' sampling with the separable filter f f^T of sum 1, or 'keep' (EDM2 App. B.1).

    The default filter [1, 1] is 2x2 average pooling down and nearest-neighbour up.
    """
    if mode == "keep":
        return x
    if mode not in ("down", "up"):
        raise ValueError(f"resample mode {mode!r} is not one of 'keep', 'down', 'up'")
    if tuple(f) == (1, 1):  # the box filter: dedicated kernels, same result
        return F.avg_pool2d(x, 2) if mode == "down" else F.interpolate(x, scale_factor=2.0, mode="nearest")
    taps = torch.as_tensor(f, dtype=torch.float32, device=x.device)
    kernel = (torch.outer(taps, taps) / taps.sum() ** 2).to(x.dtype)
    channels, pad = x.shape[1], (len(f) - 1) // 2
    kernel = kernel.expand(channels, 1, *kernel.shape)
    if mode == "down":
        return F.conv2d(x, kernel, stride=2, padding=pad, groups=channels)
    return F.conv_transpose2d(x, kernel * 4, stride=2, padding=pad, groups=channels)


class MPFourier(nn.Module):
    """Random Fourier features of a noise level, frozen at init (EDM2 Eq. 35; sqrt(2) scaled, Eq. 75)."""

    def __init__(self, num_channels: int, bandwidth: float = 1, mp: bool = True):
        super().__init__()
        self.amplitude = math.sqrt(2) if mp else 1.0  # M[cos] = 1/sqrt(2) (EDM2 Eqs. 69-75)
        # Frequencies are drawn before phases, both from the global RNG (the official init order).
        self.register_buffer("freqs", torch.randn(num_channels) * bandwidth * (2 * math.pi))
        self.register_buffer("phases", torch.rand(num_channels) * (2 * math.pi))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = torch.outer(x.to(torch.float32), self.freqs.float()) + self.phases.float()
        features = angles.cos()  # EDM2 Eq. 35: cos(2 pi (f a + phi))
        if self.amplitude != 1.0:
            features = features * self.amplitude  # EDM2 Eq. 75 (MP-Fourier)
        return features.to(x.dtype)


class PositionalEmbedding(nn.Module):
    """ADM's sinusoidal embedding [cos(a f_i), sin(a f_i)], f_i = 10000^(-i / (n/2)) (EDM2 App. B.1)."""

    def __init__(self, num_channels: int, max_positions: int = 10000):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        exponents = torch.arange(half, dtype=torch.float32, device=x.device) / half
        angles = torch.outer(x.to(torch.float32), self.max_positions**-exponents)  # EDM App. B.1 (PosEmb)
        return torch.cat([angles.cos(), angles.sin()], dim=1).to(x.dtype)


class GroupNorm(nn.Module):
    """Group norm over min(32, C/4) groups: ADM's (mean, affine) or the RMS form of EDM2 Eq. 29."""

    def __init__(self, num_channels: int, rms: bool, eps: float | None = None):
        super().__init__()
        self.groups = min(32, num_channels // 4)
        self.rms = rms
        self.eps = eps if eps is not None else (1e-4 if rms else 1e-5)
        if not rms:  # ADM: learned per-channel scale and bias
            self.weight = nn.Parameter(torch.ones(num_channels))
            self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.to(torch.float32)
        if self.rms:
            grouped = h.reshape(h.shape[0], self.groups, -1)
            inv_rms = torch.rsqrt(grouped.square().mean(dim=2, keepdim=True) + self.eps)  # EDM2 Eq. 29
            return (grouped * inv_rms).reshape(x.shape).to(x.dtype)
        return F.group_norm(h, self.groups, self.weight, self.bias, self.eps).to(x.dtype)


class MPConv(nn.Module):
    """The learned linear (kernel []) or 2-D conv of every config, switched by bias, init and weight norm.

    weight_norm 'none': the stored weight is used as is (configs A-C). 'on_use': each output unit's
    weight is normalised over its fan-in when used and scaled by 1/sqrt(fan_in) (EDM2 Eqs. 46-47, D).
    'forced': in training mode the stored weight is also reset to unit RMS in place first (EDM2 Eq. 66,
    Alg. 1; E-G). `train(False)` on the module alone turns the in-place reset off.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: Sequence[int],
        bias: bool = False,
        init: str = "normal",  # 'normal' N(0, 1), 'uniform' U(+-1/sqrt(fan_in)) or 'zero'
        weight_norm: str = "forced",  # 'none', 'on_use' or 'forced'
    ):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.fan_in = in_channels * math.prod(kernel)
        self.weight_norm = weight_norm
        shape = (out_channels, in_channels, *kernel)
        self.weight = nn.Parameter(_draw(shape, init, self.fan_in))
        self.bias = nn.Parameter(_draw((out_channels,), init, self.fan_in)) if bias else None

    def forward(self, x: torch.Tensor, gain: float | torch.Tensor = 1) -> torch.Tensor:
        w = self.weight
        if self.weight_norm != "none":
            w = w.to(torch.float32)
            if self.weight_norm == "forced" and self.training:
                self.force_weight_norm_(w)
            # EDM2 Eq. 47: w_i / ||w_i|| applied to a unit-magnitude input, with the gain of Eq. 104.
            w = normalize(w) * (gain / math.sqrt(self.fan_in))
        elif not (isinstance(gain, int | float) and gain == 1):
            w = w * gain
        w = w.to(x.dtype)
        b = self.bias.to(x.dtype) if self.bias is not None else None
        if w.ndim == 2:
            return F.linear(x, w, b)
        return F.conv2d(x, w, b, padding=w.shape[-1] // 2)

    @torch.no_grad()
    def force_weight_norm_(self, w: torch.Tensor | None = None) -> None:
        """Reset the stored weight to unit RMS in place, from `w` (its float32 value) if given.

        Training mode does it on every use; a training loop may instead call it once per optimizer step
        on every 'forced' layer and run the forward with `train(False)` on them (the same values).
        """
        w = self.weight.to(torch.float32) if w is None else w
        self.weight.copy_(normalize(w))  # EDM2 Eq. 66 (forced WN, unit RMS = norm sqrt(fan_in))


def _draw(shape: tuple[int, ...], init: str, fan_in: int) -> torch.Tensor:
    """An initial tensor from the global RNG: N(0, 1), U(+-1/sqrt(fan_in)) (EDM App. B.1 init) or zeros."""
    if init == "normal":
        return torch.randn(shape)
    if init == "uniform":
        return (torch.rand(shape) * 2 - 1) / math.sqrt(fan_in)  # EDM's kaiming_uniform * sqrt(1/3)
    if init == "zero":
        return torch.zeros(shape)
    raise ValueError(f"layer init {init!r} is not one of 'normal', 'uniform', 'zero'")
