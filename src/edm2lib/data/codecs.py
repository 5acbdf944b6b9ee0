"""Codecs between network space and uint8 pixels: plain pixels and the SD VAE (EDM2-FACTS 6.6)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch

SD_VAE_ID = "stabilityai/sd-vae-ft-mse"
RAW_MEAN = (5.81, 3.25, 0.12, -2.15)  # EDM2-FACTS 6.6: per-channel mean of raw SD-VAE latents
RAW_STD = (4.17, 4.62, 3.71, 3.28)  # EDM2-FACTS 6.6: per-channel std of raw SD-VAE latents
FINAL_MEAN = 0.0  # EDM2-FACTS 6.6: target mean of network-space latents
FINAL_STD = 0.5  # EDM2-FACTS 6.6: target std of network-space latents (= sigma_data)
DECODE_BATCH = 8  # EDM2-FACTS 6.6: the official decoder runs the VAE in batches of 8

PIXELS: dict[str, Any] = {"kind": "pixels"}


def sd_vae_description(vae: str = SD_VAE_ID, revision: str | None = None, **identity: Any) -> dict[str, Any]:
    """The `encoder` description of SD-VAE latents with the EDM2 constants (ARCHITECTURE.md)."""
    return {
        "kind": "sd-vae",
        "vae": str(vae),
        "revision": revision,
        "raw_mean": list(RAW_MEAN),
        "raw_std": list(RAW_STD),
        "final_mean": FINAL_MEAN,
        "final_std": FINAL_STD,
        **identity,
    }


def parse_encoder(encoder: Mapping[str, Any] | str) -> dict[str, Any]:
    """An encoder description from a dict or its JSON string, checked for the keys its kind needs."""
    desc = json.loads(encoder) if isinstance(encoder, str) else dict(encoder)
    kind = desc.get("kind")
    if kind == "sd-vae":
        missing = [k for k in ("vae", "raw_mean", "raw_std", "final_mean", "final_std") if k not in desc]
        if missing:
            raise ValueError(f"encoder description {desc} lacks {missing}; see docs/ARCHITECTURE.md")
    elif kind != "pixels":
        raise ValueError(f"encoder kind {kind!r} is unknown; expected 'pixels' or 'sd-vae'")
    return desc


def _randn(shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    noise_device = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=noise_device).to(device)


class PixelCodec:
    """Network space = uint8 / 127.5 - 1 (EDM2-FACTS 6.6, StandardRGBEncoder)."""

    channels = 3

    def __init__(self, encoder: Mapping[str, Any] | None = None, device: str | torch.device = "cpu"):
        self.encoder = dict(encoder or PIXELS)
        self.device = torch.device(device)

    def encode_batch(self, raw: torch.Tensor, generator: object = None) -> torch.Tensor:
        """uint8 [B,3,H,W] -> float32 network space in [-1, 1]; `generator` is unused (no noise)."""
        return raw.to(self.device, torch.float32) / 127.5 - 1  # EDM2-FACTS 6.6

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Network space [B,3,H,W] -> uint8 [B,H,W,3]; +128 then truncation acts as rounding."""
        y = (x.to(torch.float32) * 127.5 + 128).clip(0, 255).to(torch.uint8)  # EDM2-FACTS 6.6
        return y.permute(0, 2, 3, 1).contiguous()


class VAECodec:
    """Network space = (mean + std * randn) * scale + bias of SD-VAE posteriors (EDM2-FACTS 6.6)."""

    channels = 4

    def __init__(self, encoder: Mapping[str, Any], device: str | torch.device = "cpu", vae: Any = None):
        self.encoder = parse_encoder(encoder)
        self.device = torch.device(device)
        raw_mean = torch.as_tensor(self.encoder["raw_mean"], dtype=torch.float32)
        raw_std = torch.as_tensor(self.encoder["raw_std"], dtype=torch.float32)
        # EDM2-FACTS 6.6: scale = final_std / raw_std, bias = final_mean - raw_mean * scale (float32)
        self.scale = torch.as_tensor(self.encoder["final_std"], dtype=torch.float32) / raw_std
        self.bias = torch.as_tensor(self.encoder["final_mean"], dtype=torch.float32) - raw_mean * self.scale
        self._vae = None if vae is None else vae.to(self.device).eval().requires_grad_(False)

    @property
    def vae(self) -> Any:
        """The diffusers AutoencoderKL, loaded on first use from the description's `vae` / `revision`."""
        if self._vae is None:
            from edm2lib.data.vae import load_vae

            vae = load_vae(self.encoder["vae"], revision=self.encoder.get("revision"))
            self._vae = vae.to(self.device).eval().requires_grad_(False)
        return self._vae

    def _per_channel(self, t: torch.Tensor, device: torch.device) -> torch.Tensor:
        return t.to(device).reshape(1, -1, 1, 1)

    def encode_batch(
        self, raw: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator] | None = None
    ) -> torch.Tensor:
        """Raw mean||std [B,8,h,w] -> one fresh latent sample [B,4,h,w] in network space.

        The noise is drawn on `generator`'s device (CPU by default) so a seed gives the same latents on
        any device; a sequence of B generators draws each example's noise from its own generator."""
        raw = raw.to(self.device, torch.float32)
        mean, std = raw.chunk(2, dim=1)
        if isinstance(generator, Sequence):
            if len(generator) != len(mean):
                raise ValueError(f"{len(generator)} generators for a batch of {len(mean)}")
            noise = torch.empty(mean.shape, device=generator[0].device if generator else self.device)
            for row, g in zip(noise, generator):
                torch.randn(row.shape, generator=g, device=g.device, out=row)
            noise = noise.to(self.device)
        else:
            noise = _randn(mean.shape, generator, self.device)
        z = torch.addcmul(mean, std, noise)  # EDM2-FACTS 6.6: sample the posterior anew on every use
        return z.mul_(self._per_channel(self.scale, z.device)).add_(self._per_channel(self.bias, z.device))

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Network-space latents [B,4,h,w] -> uint8 [B,H,W,3] on the CPU (EDM2-FACTS 6.6)."""
        from edm2lib.data.vae import decode_latents

        x = x.to(self.device, torch.float32)
        z = (x - self._per_channel(self.bias, x.device)) / self._per_channel(self.scale, x.device)  # undo 6.6
        return decode_latents(self.vae, z)


Codec = PixelCodec | VAECodec


def make_codec(
    encoder: Mapping[str, Any] | str, device: str | torch.device = "cpu", vae: Any = None
) -> Codec:
    """The codec for an `encoder` description; `vae` optionally supplies an already loaded AutoencoderKL."""
    desc = parse_encoder(encoder)
    if desc["kind"] == "pixels":
        return PixelCodec(desc, device)
    return VAECodec(desc, device, vae)
