"""The U-Net of any ladder config (A..G) and its EDM preconditioning; config G keeps the official names."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from edm2lib.nn import ladder
from edm2lib.nn.ladder import Switches
from edm2lib.nn.layers import (
    GroupNorm,
    MPConv,
    MPFourier,
    PositionalEmbedding,
    mp_cat,
    mp_sum,
    normalize,
    resample,
    silu,
)

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_BLOCK_KWARGS = {"resample_filter", "channels_per_head", "dropout", "res_balance", "attn_balance", "clip_act"}


def _learned(sw: Switches, cin: int, cout: int, kernel: Sequence[int], last: bool = False) -> MPConv:
    """A learned layer as the config builds it; `last` layers start at zero where the config says so."""
    init = "zero" if last and sw.zero_init else sw.init
    return MPConv(cin, cout, kernel, bias=sw.bias, init=init, weight_norm=sw.weight_norm)


def _join(sw: Switches, a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """a + b, or the magnitude-preserving sum with b's weight t (EDM2 Eq. 88)."""
    return mp_sum(a, b, t) if sw.sum == "mp" else a + b


class Block(nn.Module):
    """One encoder ('enc') or decoder ('dec') U-Net block of any config: residual branch + attention.

    Parts (see docs/network.md): main path (resample, 1x1 conv where the width changes, encoder
    PixelNorm), residual branch (norm, SiLU, 3x3 conv, conditioning, norm, SiLU, dropout, 3x3 conv), the
    join of both, optional self-attention with its own join, and an optional clamp.
    """

    def __init__(
        self,
        in_channels: int,  # input width
        out_channels: int,  # output width
        emb_channels: int,  # width of the noise/label embedding
        flavor: str = "enc",  # 'enc' or 'dec' (where the main-path 1x1 conv and PixelNorm sit)
        resample_mode: str = "keep",  # 'keep', 'down' or 'up'
        resample_filter: Sequence[float] = (1, 1),  # separable resampling filter
        attention: bool = False,  # self-attention after the residual join
        channels_per_head: int = 64,  # attention head width N_c
        dropout: float = 0,  # dropout probability before the second residual conv
        res_balance: float = 0.3,  # weight t of the residual branch in an MP-Sum join
        attn_balance: float = 0.3,  # weight t of the attention branch in an MP-Sum join
        clip_act: float | None = 256,  # clamp the output to +-clip_act (None: no clamp)
        ablation: str = "G",  # ladder config letter 'A'..'G' (EDM2 Table 1)
    ):
        super().__init__()
        if flavor not in ("enc", "dec"):
            raise ValueError(f"Block flavor {flavor!r} is not 'enc' or 'dec'")
        sw = ladder.switches(ablation)
        self.ablation = ablation  # a plain str: module state holds no edm2lib classes
        self.out_channels = out_channels
        self.flavor = flavor
        self.resample_mode = resample_mode
        self.resample_filter = tuple(resample_filter)
        self.num_heads = out_channels // channels_per_head if attention else 0
        self.dropout = dropout
        self.res_balance = res_balance
        self.attn_balance = attn_balance
        self.clip_act = clip_act
        # With the resampling on the main path, an encoder block changes width before its branch.
        self.early_skip = sw.resample == "main" and flavor == "enc"
        branch_in = out_channels if self.early_skip else in_channels
        cond_channels = out_channels * (2 if sw.conditioning == "scale_shift" else 1)
        has_norm = sw.norm != "none"
        # Registration (and init draw) order; for config G it is the official one.
        self.emb_gain = nn.Parameter(torch.zeros([])) if sw.gains else None
        self.norm_res0 = GroupNorm(branch_in, rms=sw.norm == "rms") if has_norm else None
        self.conv_res0 = _learned(sw, branch_in, out_channels, [3, 3])
        self.emb_linear = _learned(sw, emb_channels, cond_channels, [])
        self.norm_res1 = GroupNorm(out_channels, rms=sw.norm == "rms") if has_norm else None
        self.conv_res1 = _learned(sw, out_channels, out_channels, [3, 3], last=True)
        self.conv_skip = (
            _learned(sw, in_channels, out_channels, [1, 1]) if in_channels != out_channels else None
        )
        standard = self.num_heads and sw.attention == "standard"
        self.attn_norm = GroupNorm(out_channels, rms=False) if standard else None
        self.attn_qkv = _learned(sw, out_channels, out_channels * 3, [1, 1]) if self.num_heads else None
        self.attn_proj = (
            _learned(sw, out_channels, out_channels, [1, 1], last=True) if self.num_heads else None
        )

    @property
    def switches(self) -> Switches:
        """The switches of this block's config."""
        return ladder.switches(self.ablation)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        sw = self.switches
        if sw.resample == "main":
            x = resample(x, self.resample_filter, self.resample_mode)  # EDM2 App. B.6 (main-path resampling)
            if self.early_skip and self.conv_skip is not None:
                x = self.conv_skip(x)
            if sw.pixel_norm and self.flavor == "enc":
                x = normalize(x, dim=1)  # EDM2 Eq. 30 (PixelNorm)
        branch = self._residual(x, emb)
        if sw.resample == "residual":
            x = resample(x, self.resample_filter, self.resample_mode)
        if not self.early_skip and self.conv_skip is not None:
            x = self.conv_skip(x)
        x = _join(sw, x, branch, self.res_balance)
        if self.num_heads:
            x = _join(sw, x, self._attention(x), self.attn_balance)
        if self.clip_act is not None:
            x = x.clamp(-self.clip_act, self.clip_act)  # EDM2 App. D.2 (activation clamp)
        return x

    def _residual(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """The residual branch, conditioned on the embedding (EDM2 Figs. 2b, 2c)."""
        sw, mp = self.switches, self.switches.silu == "mp"
        h = self.norm_res0(x) if self.norm_res0 is not None else x
        h = silu(h, mp)
        if sw.resample == "residual":
            h = resample(h, self.resample_filter, self.resample_mode)  # ADM: inside the branch
        h = self.conv_res0(h)
        if self.norm_res1 is not None:
            h = self.norm_res1(h)
        cond = self.emb_linear(emb, gain=self.emb_gain) if sw.gains else self.emb_linear(emb)
        if sw.conditioning == "scale_shift":
            scale, shift = cond[:, :, None, None].chunk(2, dim=1)
            h = torch.addcmul(shift.to(h.dtype), h, (scale + 1).to(h.dtype))  # EDM App. B.1 (h(1+s)+b)
        else:
            h = h * (cond + 1)[:, :, None, None].to(h.dtype)  # EDM2 App. B.3 (scale only; gain Eq. 104)
        h = silu(h, mp)
        if self.training and self.dropout != 0:
            h = F.dropout(h, p=self.dropout)
        return self.conv_res1(h)

    def _attention(self, x: torch.Tensor) -> torch.Tensor:
        """Multi-head self-attention over pixels: dot product (EDM2 Eqs. 10-12) or cosine (Eqs. 30-34).

        The 3C qkv channels are ordered head, channel, then q/k/v fastest (the official layout).
        """
        batch, channels, height, width = x.shape
        heads = self.num_heads
        h = self.attn_norm(x) if self.attn_norm is not None else x
        qkv = self.attn_qkv(h).reshape(batch, heads, channels // heads, 3, height * width)
        qkv = qkv.permute(3, 0, 1, 4, 2)  # [q/k/v, batch, head, pixel, channel]
        if self.switches.attention == "cosine":
            qkv = normalize(qkv, dim=-1)  # EDM2 Eq. 31: PixelNorm of each head's q, k and v
        else:
            qkv = qkv.to(torch.float32)  # EDM App. B.1: logits and softmax in float32
        q, k, v = qkv.unbind(0)
        mixed = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(N_c)) v (EDM2 Eq. 32)
        mixed = mixed.to(x.dtype).transpose(-1, -2).reshape(batch, channels, height, width)
        return self.attn_proj(mixed)


class UNet(nn.Module):
    """The U-Net F(x; c_noise, y) of ladder config `ablation` (EDM2 Figs. 16-22; 'G' is the official)."""

    def __init__(
        self,
        img_resolution: int,  # input/output resolution
        img_channels: int,  # input/output channels
        label_dim: int,  # class-label dimension, 0 = unconditional
        model_channels: int = 192,  # base width
        channel_mult: Sequence[int] = (1, 2, 3, 4),  # width multiplier per resolution level
        channel_mult_noise: int | None = None,  # noise-feature width multiplier (None: channel_mult[0])
        channel_mult_emb: int | None = None,  # embedding width multiplier (None: max(channel_mult))
        num_blocks: int = 3,  # blocks per encoder level (decoder: one more)
        attn_resolutions: Sequence[int] | None = None,  # None: the config's (A: 32, 16, 8; B-G: 16, 8)
        label_balance: float = 0.5,  # MP-Sum weight of the label embedding (config G)
        concat_balance: float = 0.5,  # MP-Cat weight of the skip connection (config G)
        ablation: str = "G",  # ladder config letter 'A'..'G' (EDM2 Table 1)
        **block_kwargs: Any,  # Block keywords: dropout, channels_per_head, res_balance, clip_act, ...
    ):
        super().__init__()
        unknown = sorted(set(block_kwargs) - _BLOCK_KWARGS)
        if unknown:
            raise ValueError(
                f"unknown network keyword(s) {unknown}; UNet takes model_channels, channel_mult, "
                f"channel_mult_noise, channel_mult_emb, num_blocks, attn_resolutions, label_balance, "
                f"concat_balance, ablation and the Block keywords {sorted(_BLOCK_KWARGS)}"
            )
        sw = ladder.switches(ablation)
        self.ablation = ablation
        block_kwargs = {"clip_act": sw.clip_act, **block_kwargs, "ablation": ablation}
        attn = tuple(sw.attn_resolutions if attn_resolutions is None else attn_resolutions)
        widths = [model_channels * m for m in channel_mult]
        noise_width = model_channels * channel_mult_noise if channel_mult_noise is not None else widths[0]
        emb_width = model_channels * channel_mult_emb if channel_mult_emb is not None else max(widths)
        self.label_dim = label_dim
        self.label_balance = label_balance
        self.concat_balance = concat_balance

        # Embedding (EDM2 Figs. 16-22, "Embedding"); for config G this is the official draw order.
        self.out_gain = nn.Parameter(torch.zeros([])) if sw.gains else None
        if sw.embedding == "positional":
            self.emb_fourier = PositionalEmbedding(noise_width)
        else:
            self.emb_fourier = MPFourier(noise_width, mp=sw.embedding == "mp_fourier")
        self.emb_noise = _learned(sw, noise_width, emb_width, [])
        self.emb_noise2 = _learned(sw, emb_width, emb_width, []) if sw.emb_linears == 2 else None
        # EDM's class embedding is N(0, 1) on the raw one-hot (A, B); C unifies it (EDM2 App. B.3).
        label_init = sw.init if sw.unit_label else "normal"
        self.emb_label = (
            MPConv(label_dim, emb_width, [], init=label_init, weight_norm=sw.weight_norm)
            if label_dim
            else None
        )

        self.enc = nn.ModuleDict()
        width = img_channels + (1 if sw.ones_channel else 0)
        for level, level_width in enumerate(widths):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = _learned(sw, width, level_width, [3, 3])
                width = level_width
            else:
                self.enc[f"{res}x{res}_down"] = Block(
                    width, width, emb_width, "enc", resample_mode="down", **block_kwargs
                )
            for i in range(num_blocks):
                self.enc[f"{res}x{res}_block{i}"] = Block(
                    width, level_width, emb_width, "enc", attention=res in attn, **block_kwargs
                )
                width = level_width

        self.dec = nn.ModuleDict()
        skip_widths = [m.out_channels for m in self.enc.values()]
        for level in reversed(range(len(widths))):
            res = img_resolution >> level
            if level == len(widths) - 1:
                self.dec[f"{res}x{res}_in0"] = Block(
                    width, width, emb_width, "dec", attention=True, **block_kwargs
                )
                self.dec[f"{res}x{res}_in1"] = Block(width, width, emb_width, "dec", **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = Block(
                    width, width, emb_width, "dec", resample_mode="up", **block_kwargs
                )
            for i in range(num_blocks + 1):
                cin = width + skip_widths.pop()
                self.dec[f"{res}x{res}_block{i}"] = Block(
                    cin, widths[level], emb_width, "dec", attention=res in attn, **block_kwargs
                )
                width = widths[level]
        self.out_norm = GroupNorm(width, rms=sw.norm == "rms") if sw.norm != "none" else None
        self.out_conv = _learned(sw, width, img_channels, [3, 3], last=True)
        # Decoder blocks that first join a skip: fixed here, so the forward has no name tests.
        self._takes_skip = [name.split("_")[-1].startswith("block") for name in self.dec]

    @property
    def switches(self) -> Switches:
        """The switches of this U-Net's config."""
        return ladder.switches(self.ablation)

    def forward(
        self, x: torch.Tensor, noise_labels: torch.Tensor, class_labels: torch.Tensor | None
    ) -> torch.Tensor:
        sw, mp = self.switches, self.switches.silu == "mp"
        emb = self._embedding(noise_labels, class_labels)
        if sw.ones_channel:
            x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)  # EDM2 App. B.3 (constant input channel)
        skips = []
        for module in self.enc.values():
            x = module(x, emb) if isinstance(module, Block) else module(x)
            skips.append(x)
        for takes_skip, block in zip(self._takes_skip, self.dec.values()):
            if takes_skip:
                skip = skips.pop()
                # EDM2 Eq. 103 (MP-Cat, main path first) or ADM's plain concatenation.
                x = mp_cat(x, skip, t=self.concat_balance) if sw.cat == "mp" else torch.cat([x, skip], dim=1)
            x = block(x, emb)
        if self.out_norm is not None:
            x = self.out_norm(x)
        if sw.out_silu:
            x = silu(x, mp)
        return self.out_conv(x, gain=self.out_gain) if sw.gains else self.out_conv(x)

    def _embedding(self, noise_labels: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        """The embedding e of c_noise and the class label that conditions every block."""
        sw, mp = self.switches, self.switches.silu == "mp"
        emb = self.emb_noise(self.emb_fourier(noise_labels))
        if self.emb_noise2 is not None:
            emb = self.emb_noise2(silu(emb, mp))
        if self.emb_label is not None:
            if sw.unit_label:
                class_labels = class_labels * math.sqrt(class_labels.shape[1])  # unit RMS (EDM2 App. B.3)
            emb = _join(sw, emb, self.emb_label(class_labels), self.label_balance)  # t = 0.5 (EDM2 App. B.7)
        return silu(emb, mp)


class Precond(nn.Module):
    """EDM preconditioning D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) and the loss weighting u(sigma).

    Constructor keywords are the official ones, so official configs port over; `compute_dtype`
    ('float32' | 'float16' | 'bfloat16') overrides the official rule (float16 only with `use_fp16` on
    CUDA), and `ablation` ('A'..'G', default 'G') picks the ladder config (both appear in `config` only
    when set). Config A has no learned loss weighting: no log-variance head, and `return_logvar` gives
    u = 0, under which the uncertainty loss of EDM2 Eq. 21 is exactly EDM's loss.
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
        ablation: str = "G",  # ladder config letter 'A'..'G' (EDM2 Table 1)
        **unet_kwargs: Any,  # UNet keywords: model_channels, channel_mult, num_blocks, dropout, ...
    ):
        super().__init__()
        if compute_dtype is not None and compute_dtype not in _DTYPES:
            raise ValueError(f"compute_dtype {compute_dtype!r} is not one of {sorted(_DTYPES)} or None")
        sw = ladder.switches(ablation)
        self.ablation = ablation
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.sigma_data = sigma_data
        self.compute_dtype = compute_dtype
        extras = {"compute_dtype": compute_dtype} if compute_dtype is not None else {}
        if ablation != "G":
            extras["ablation"] = ablation
        self._config = _jsonable(
            dict(
                img_resolution=img_resolution,
                img_channels=img_channels,
                label_dim=label_dim,
                use_fp16=use_fp16,
                sigma_data=sigma_data,
                logvar_channels=logvar_channels,
                **extras,
                **unet_kwargs,
            )
        )
        self.unet = UNet(img_resolution, img_channels, label_dim, ablation=ablation, **unet_kwargs)
        if (
            sw.learned_weighting
        ):  # EDM2 Eq. 21: u(sigma) = linear(Fourier(c_noise)), parameters named logvar_*
            self.logvar_fourier = MPFourier(logvar_channels, mp=sw.embedding == "mp_fourier")
            self.logvar_linear = _learned(sw, logvar_channels, 1, [])
        else:
            self.logvar_fourier = self.logvar_linear = None

    @property
    def config(self) -> dict[str, Any]:
        """The constructor keywords (JSON-serialisable): `Precond(**net.config)` rebuilds this network."""
        return _jsonable(self._config)

    @property
    def switches(self) -> Switches:
        """The switches of this network's config."""
        return ladder.switches(self.ablation)

    @property
    def learned_weighting(self) -> bool:
        """Whether the network has a log-variance head (configs B-G; EDM2 Eq. 21)."""
        return self.logvar_linear is not None

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
            class_labels = torch.zeros([1, self.label_dim], device=x.device)  # broadcasts: no class
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)

        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)  # EDM2 Eqs. 4-8 (c_skip)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()  # EDM2 Eqs. 4-8 (c_out)
        c_in = 1 / (sd2 + sigma**2).sqrt()  # EDM2 Eqs. 4-8 (c_in)
        c_noise = sigma.flatten().log() / 4  # EDM2 Eqs. 4-8 (c_noise)

        dtype = self.activation_dtype(x.device, force_fp32)
        F_x = self.unet((c_in * x).to(dtype), c_noise, class_labels)
        D_x = c_skip * x + c_out * F_x.to(torch.float32)  # EDM2 Eqs. 4-8 (D)
        if not return_logvar:
            return D_x
        if self.logvar_linear is None:
            return D_x, torch.zeros_like(sigma)  # config A: u = 0, EDM's loss (EDM2 App. B.1)
        logvar = self.logvar_linear(self.logvar_fourier(c_noise))  # u(sigma) of EDM2 Eq. 21
        return D_x, logvar.reshape(-1, 1, 1, 1)


def _jsonable(value: Any) -> Any:
    """A deep copy of `value` with tuples as lists, so configs round-trip through JSON unchanged."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
