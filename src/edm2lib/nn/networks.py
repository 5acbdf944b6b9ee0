"""The EDM2 magnitude-preserving U-Net (config G) and its EDM preconditioning, with the official names."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from edm2lib.nn.layers import MPConv, MPFourier, mp_cat, mp_silu, mp_sum, normalize, resample

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_BLOCK_KWARGS = {"resample_filter", "channels_per_head", "dropout", "res_balance", "attn_balance", "clip_act"}


class Block(nn.Module):
    """Encoder ('enc') or decoder ('dec') residual block, optional cosine self-attention (EDM2-FACTS 4.2)."""

    def __init__(
        self,
        in_channels: int,  # input width
        out_channels: int,  # output width
        emb_channels: int,  # width of the noise/label embedding
        flavor: str = "enc",  # 'enc' (skip before the residual) or 'dec' (skip after)
        resample_mode: str = "keep",  # 'keep', 'down' or 'up'
        resample_filter: Sequence[float] = (1, 1),  # separable resampling filter
        attention: bool = False,  # cosine self-attention after the residual branch
        channels_per_head: int = 64,  # attention head width
        dropout: float = 0,  # dropout probability inside the residual branch
        res_balance: float = 0.3,  # mp_sum weight of the residual branch
        attn_balance: float = 0.3,  # mp_sum weight of the attention branch
        clip_act: float | None = 256,  # clamp activations to +-clip_act (None: no clamp)
    ):
        super().__init__()
        if flavor not in ("enc", "dec"):
            raise ValueError(f"Block flavor {flavor!r} is not 'enc' or 'dec'")
        self.out_channels = out_channels
        self.flavor = flavor
        self.resample_filter = tuple(resample_filter)
        self.resample_mode = resample_mode
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.dropout = dropout
        self.res_balance = res_balance
        self.attn_balance = attn_balance
        self.clip_act = clip_act
        # EDM2-FACTS 4.5/4.6: registration and init-draw order emb_gain, conv_res0, emb_linear, conv_res1, ...
        self.emb_gain = nn.Parameter(torch.zeros([]))
        self.conv_res0 = MPConv(out_channels if flavor == "enc" else in_channels, out_channels, [3, 3])
        self.emb_linear = MPConv(emb_channels, out_channels, [])
        self.conv_res1 = MPConv(out_channels, out_channels, [3, 3])
        self.conv_skip = MPConv(in_channels, out_channels, [1, 1]) if in_channels != out_channels else None
        self.attn_qkv = MPConv(out_channels, out_channels * 3, [1, 1]) if self.num_heads else None
        self.attn_proj = MPConv(out_channels, out_channels, [1, 1]) if self.num_heads else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = resample(x, f=self.resample_filter, mode=self.resample_mode)
        if self.flavor == "enc":
            if self.conv_skip is not None:
                x = self.conv_skip(x)
            x = normalize(x, dim=1)  # pixel norm (EDM2 config F, EDM2-FACTS 4.2 step 2)

        # Residual branch (EDM2-FACTS 4.2 steps 3-6).
        y = self.conv_res0(mp_silu(x))
        c = self.emb_linear(emb, gain=self.emb_gain) + 1
        y = mp_silu(y * c[:, :, None, None].to(y.dtype))
        if self.training and self.dropout != 0:
            y = F.dropout(y, p=self.dropout)
        y = self.conv_res1(y)
        if self.flavor == "dec" and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = mp_sum(x, y, t=self.res_balance)

        if self.num_heads:
            x = mp_sum(x, self._attention(x), t=self.attn_balance)
        if self.clip_act is not None:
            x = x.clamp(-self.clip_act, self.clip_act)
        return x

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        """Cosine self-attention over pixels (EDM2-FACTS 4.2 step 9), on the official q/k/v channel layout."""
        B, C, H, W = x.shape
        heads = self.num_heads
        # attn_qkv channel index = head * 3 * Ch + c * 3 + (0: q, 1: k, 2: v) (EDM2-FACTS 4.2 step 9).
        qkv = self.attn_qkv(x).reshape(B, heads, C // heads, 3, H * W)
        qkv = normalize(qkv.permute(3, 0, 1, 4, 2), dim=-1)  # [3, B, heads, HW, Ch], unit RMS over Ch
        q, k, v = qkv.unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(Ch)) v
        y = y.transpose(-1, -2).reshape(B, C, H, W)  # back to channel = head * Ch + c
        return self.attn_proj(y)


class UNet(nn.Module):
    """The magnitude-preserving U-Net F(x; c_noise, y) of EDM2 config G (EDM2-FACTS 4.3)."""

    def __init__(
        self,
        img_resolution: int,  # input/output resolution
        img_channels: int,  # input/output channels
        label_dim: int,  # class-label dimension, 0 = unconditional
        model_channels: int = 192,  # base width
        channel_mult: Sequence[int] = (1, 2, 3, 4),  # width multiplier per resolution level
        channel_mult_noise: int | None = None,  # noise-embedding width multiplier (None: channel_mult[0])
        channel_mult_emb: int | None = None,  # embedding width multiplier (None: max(channel_mult))
        num_blocks: int = 3,  # residual blocks per encoder level (decoder: one more)
        attn_resolutions: Sequence[int] = (16, 8),  # resolutions with self-attention
        label_balance: float = 0.5,  # mp_sum weight of the label embedding against the noise embedding
        concat_balance: float = 0.5,  # mp_cat weight of the skip connection
        **block_kwargs: Any,  # Block keywords: dropout, channels_per_head, res_balance, ...
    ):
        super().__init__()
        unknown = sorted(set(block_kwargs) - _BLOCK_KWARGS)
        if unknown:
            raise ValueError(
                f"unknown network keyword(s) {unknown}; UNet takes model_channels, channel_mult, "
                f"channel_mult_noise, channel_mult_emb, num_blocks, attn_resolutions, label_balance, "
                f"concat_balance and the Block keywords {sorted(_BLOCK_KWARGS)}"
            )
        cblock = [model_channels * m for m in channel_mult]
        cnoise = model_channels * channel_mult_noise if channel_mult_noise is not None else cblock[0]
        cemb = model_channels * channel_mult_emb if channel_mult_emb is not None else max(cblock)
        self.label_dim = label_dim
        self.label_balance = label_balance
        self.concat_balance = concat_balance
        # EDM2-FACTS 4.5: out_gain, emb_fourier, emb_noise, emb_label, encoder, decoder, out_conv.
        self.out_gain = nn.Parameter(torch.zeros([]))
        self.emb_fourier = MPFourier(cnoise)
        self.emb_noise = MPConv(cnoise, cemb, [])
        self.emb_label = MPConv(label_dim, cemb, []) if label_dim else None

        self.enc = nn.ModuleDict()
        cout = img_channels + 1  # + a constant-ones channel
        for level, channels in enumerate(cblock):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, channels
                self.enc[f"{res}x{res}_conv"] = MPConv(cin, cout, [3, 3])
            else:
                self.enc[f"{res}x{res}_down"] = Block(
                    cout, cout, cemb, flavor="enc", resample_mode="down", **block_kwargs
                )
            for idx in range(num_blocks):
                cin, cout = cout, channels
                self.enc[f"{res}x{res}_block{idx}"] = Block(
                    cin, cout, cemb, flavor="enc", attention=res in attn_resolutions, **block_kwargs
                )

        self.dec = nn.ModuleDict()
        skips = [block.out_channels for block in self.enc.values()]
        for level, channels in reversed(list(enumerate(cblock))):
            res = img_resolution >> level
            if level == len(cblock) - 1:
                self.dec[f"{res}x{res}_in0"] = Block(
                    cout, cout, cemb, flavor="dec", attention=True, **block_kwargs
                )
                self.dec[f"{res}x{res}_in1"] = Block(cout, cout, cemb, flavor="dec", **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = Block(
                    cout, cout, cemb, flavor="dec", resample_mode="up", **block_kwargs
                )
            for idx in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), channels
                self.dec[f"{res}x{res}_block{idx}"] = Block(
                    cin, cout, cemb, flavor="dec", attention=res in attn_resolutions, **block_kwargs
                )
        self.out_conv = MPConv(cout, img_channels, [3, 3])
        # Which decoder modules first concatenate a skip: fixed at construction, no name tests per call.
        self._dec_takes_skip = [name.split("_")[-1].startswith("block") for name in self.dec]

    def forward(
        self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None
    ) -> torch.Tensor:
        # Embedding (EDM2-FACTS 4.3): Fourier features of c_noise, mp_sum with the unit-RMS one-hot label.
        emb = self.emb_noise(self.emb_fourier(noise_labels))
        if self.emb_label is not None:
            label = self.emb_label(class_labels * math.sqrt(class_labels.shape[1]))
            emb = mp_sum(emb, label, t=self.label_balance)
        emb = mp_silu(emb)

        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        skips = []
        for i, block in enumerate(self.enc.values()):
            x = block(x) if i == 0 else block(x, emb)
            skips.append(x)
        for takes_skip, block in zip(self._dec_takes_skip, self.dec.values()):
            if takes_skip:
                x = mp_cat(x, skips.pop(), t=self.concat_balance)
            x = block(x, emb)
        return self.out_conv(x, gain=self.out_gain)


class Precond(nn.Module):
    """EDM preconditioning D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) and the learned log-variance.

    Constructor keywords are the official ones (EDM2-FACTS 4.4), so official configs port over; the
    extra `compute_dtype` ('float32' | 'float16' | 'bfloat16') overrides the official rule (float16 only
    with `use_fp16` on CUDA). Weight normalisation runs in float32 and `normalize` takes its norms in float32.
    """

    def __init__(
        self,
        img_resolution: int,  # image (or latent) resolution
        img_channels: int,  # image (or latent) channels
        label_dim: int,  # class-label dimension, 0 = unconditional
        use_fp16: bool = True,  # official rule: float16 activations on CUDA
        sigma_data: float = 0.5,  # expected std of the training data
        logvar_channels: int = 128,  # Fourier width of the log-variance head
        compute_dtype: str | None = None,  # explicit activation dtype on any device (None: official rule)
        **unet_kwargs: Any,  # UNet keywords: model_channels, channel_mult, num_blocks, dropout, ...
    ):
        super().__init__()
        if compute_dtype is not None and compute_dtype not in _DTYPES:
            raise ValueError(f"compute_dtype {compute_dtype!r} is not one of {sorted(_DTYPES)} or None")
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.sigma_data = sigma_data
        self.compute_dtype = compute_dtype
        self._config = _jsonable(
            dict(
                img_resolution=img_resolution,
                img_channels=img_channels,
                label_dim=label_dim,
                use_fp16=use_fp16,
                sigma_data=sigma_data,
                logvar_channels=logvar_channels,
                **({"compute_dtype": compute_dtype} if compute_dtype is not None else {}),
                **unet_kwargs,
            )
        )
        self.unet = UNet(
            img_resolution=img_resolution, img_channels=img_channels, label_dim=label_dim, **unet_kwargs
        )
        self.logvar_fourier = MPFourier(logvar_channels)
        self.logvar_linear = MPConv(logvar_channels, 1, [])

    @property
    def config(self) -> dict[str, Any]:
        """The constructor keywords (JSON-serialisable): `Precond(**net.config)` rebuilds this network."""
        return _jsonable(self._config)

    def activation_dtype(self, device: torch.device, force_fp32: bool = False) -> torch.dtype:
        """The dtype the U-Net computes in on `device`."""
        if force_fp32:
            return torch.float32
        if self.compute_dtype is not None:
            return _DTYPES[self.compute_dtype]
        return torch.float16 if self.use_fp16 and device.type == "cuda" else torch.float32

    def forward(
        self,
        x: torch.Tensor,
        sigma: torch.Tensor | float,
        class_labels: torch.Tensor | None = None,
        force_fp32: bool = False,
        return_logvar: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros([1, self.label_dim], device=x.device)
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        dtype = self.activation_dtype(x.device, force_fp32)

        # EDM preconditioning (EDM2-FACTS 4.4; Karras et al. 2022 table 1).
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sd**2 + sigma**2).sqrt()
        c_noise = sigma.flatten().log() / 4

        F_x = self.unet((c_in * x).to(dtype), c_noise, class_labels)
        D_x = c_skip * x + c_out * F_x.to(torch.float32)
        if not return_logvar:
            return D_x
        # The learned log-variance u(sigma) of the loss weighting (EDM2-FACTS 4.4).
        logvar = self.logvar_linear(self.logvar_fourier(c_noise)).reshape(-1, 1, 1, 1)
        return D_x, logvar


def _jsonable(value: Any) -> Any:
    """A deep copy of `value` with tuples as lists, so configs round-trip through JSON unchanged."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
