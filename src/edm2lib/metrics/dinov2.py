"""DINOv2 ViT-L/14 FD-DINOv2 detector: the published architecture and key names, EDM2's preprocessing."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

RESOLUTION = 224  # EDM2 resizes every image to 224x224 (16x16 patches of 14)
DIM = 1024  # ViT-L embedding = feature size
MEAN = (0.485, 0.456, 0.406)  # ImageNet normalisation (docs/metrics.md)
STD = (0.229, 0.224, 0.225)
INTERPOLATE_OFFSET = 0.1  # DINOv2's +0.1 kludge in the positional-embedding scale factor


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8-valued float NCHW RGB -> bicubic antialiased resize to 224 in float (no re-quantisation,
    no clamp), /255, ImageNet mean/std (docs/metrics.md, `resize_mode='torch'`)."""
    x = F.interpolate(images.float(), (RESOLUTION, RESOLUTION), mode="bicubic", antialias=True)
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return (x / 255 - mean) / std


class PatchEmbed(nn.Module):
    """Non-overlapping patch x patch convolution -> tokens [N, L, dim]."""

    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class LayerScale(nn.Module):
    """Per-channel learned scale of a residual branch."""

    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        q, k, v = self.qkv(x).reshape(n, length, 3, self.num_heads, dim // self.num_heads).unbind(2)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(y.transpose(1, 2).reshape(n, length, dim))


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale on both residual branches."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DINOv2(nn.Module):
    """DINOv2 ViT (defaults: ViT-L/14 at img_size 518, the `dinov2_vitl14` hub model without registers).

    State-dict keys are the published ones: `cls_token`, `pos_embed`, `mask_token`, `patch_embed.proj.*`,
    `blocks.N.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.fc1,mlp.fc2,ls2.gamma}`, `norm.*`.
    Smaller `embed_dim`/`depth` give the same code path for fast tests.
    """

    def __init__(
        self,
        embed_dim: int = 1024,  # ViT-L width
        depth: int = 24,  # transformer blocks
        num_heads: int = 16,  # attention heads (64 channels each)
        patch_size: int = 14,  # pixels per patch side
        img_size: int = 518,  # training size: pos_embed holds 1 + (518/14)^2 = 1370 tokens
        mlp_ratio: float = 4.0,  # MLP hidden width / embed_dim
    ):
        super().__init__()
        self.patch_size = patch_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))  # used in DINOv2 training only
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    def reset_random(self, seed: int = 0) -> DINOv2:
        """Deterministic random weights as DINOv2 initialises them (tests and offline demos only)."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.pos_embed.copy_(torch.randn(self.pos_embed.shape, generator=g).clamp(-2, 2) * 0.02)
            self.cls_token.copy_(torch.randn(self.cls_token.shape, generator=g) * 1e-6)
            self.mask_token.zero_()
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g).clamp(-2, 2) * 0.02)
                    m.bias.zero_()
                elif isinstance(m, nn.Conv2d):
                    fan_in = m.weight[0].numel()
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * fan_in**-0.5)
                    m.bias.zero_()
                elif isinstance(m, nn.LayerNorm):
                    m.reset_parameters()
                elif isinstance(m, LayerScale):
                    m.gamma.fill_(1.0)  # the hub model's init_values=1.0
        return self

    def interpolate_pos_embed(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Positional embedding for a grid_h x grid_w patch grid: bicubic resampling of the stored square
        grid with DINOv2's scale factor (grid + 0.1) / stored_grid, no antialias (docs/metrics.md)."""
        pos = self.pos_embed.float()
        stored = pos.shape[1] - 1
        if grid_h * grid_w == stored and grid_h == grid_w:
            return pos
        m = int(math.sqrt(stored))
        patch_pos = pos[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
        scale = ((grid_h + INTERPOLATE_OFFSET) / m, (grid_w + INTERPOLATE_OFFSET) / m)
        patch_pos = F.interpolate(patch_pos, scale_factor=scale, mode="bicubic", antialias=False)
        if patch_pos.shape[-2:] != (grid_h, grid_w):
            raise ValueError(
                f"pos_embed interpolation gave {tuple(patch_pos.shape[-2:])}, not {grid_h}x{grid_w}"
            )
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
        return torch.cat([pos[:, :1], patch_pos], dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8-valued float NCHW RGB of any size -> [N, embed_dim] class token after the final norm."""
        x = preprocess(images)
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(len(tokens), -1, -1), tokens], dim=1)
        grid_h, grid_w = x.shape[2] // self.patch_size, x.shape[3] // self.patch_size
        x = tokens + self.interpolate_pos_embed(grid_h, grid_w).to(tokens.dtype)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 0]
