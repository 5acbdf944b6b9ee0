"""Encoders between network space and uint8 pixels: plain pixels and the SD VAE (diffusers), one home."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from edm2lib.files import sha256_file

SD_VAE_ID = "stabilityai/sd-vae-ft-mse"
RAW_MEAN = (5.81, 3.25, 0.12, -2.15)  # EDM2 App. B.1: per-channel mean of raw SD-VAE latents
RAW_STD = (4.17, 4.62, 3.71, 3.28)  # EDM2 App. B.1: per-channel std of raw SD-VAE latents
FINAL_MEAN = 0.0  # EDM2 App. B.1: target mean of network-space latents
FINAL_STD = 0.5  # EDM2 App. B.1: target std of network-space latents (= sigma_data)
DECODE_BATCH = 8  # docs/data.md: the official decoder runs the VAE in batches of 8

PIXELS: dict[str, Any] = {"kind": "pixels"}
CONFIG = "config.json"  # the two files of a diffusers AutoencoderKL folder
WEIGHTS = "diffusion_pytorch_model.safetensors"


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
    """Network space = uint8 / 127.5 - 1 (docs/ARCHITECTURE.md, encoder description)."""

    channels = 3

    def __init__(self, encoder: Mapping[str, Any] | None = None, device: str | torch.device = "cpu"):
        self.encoder = dict(encoder or PIXELS)
        self.device = torch.device(device)

    def encode_batch(self, raw: torch.Tensor, generator: object = None) -> torch.Tensor:
        """uint8 [B,3,H,W] -> float32 network space in [-1, 1]; `generator` is unused (no noise)."""
        return raw.to(self.device, torch.float32) / 127.5 - 1  # docs/ARCHITECTURE.md: pixels encoder

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Network space [B,3,H,W] -> uint8 [B,H,W,3]; +128 then truncation acts as rounding."""
        y = (x.to(torch.float32) * 127.5 + 128).clip(0, 255).to(torch.uint8)  # docs/ARCHITECTURE.md
        return y.permute(0, 2, 3, 1).contiguous()


class VAECodec:
    """Network space = (mean + std * randn) * scale + bias of SD-VAE posteriors (EDM2 App. B.1)."""

    channels = 4

    def __init__(self, encoder: Mapping[str, Any], device: str | torch.device = "cpu", vae: Any = None):
        self.encoder = parse_encoder(encoder)
        self.device = torch.device(device)
        raw_mean = torch.as_tensor(self.encoder["raw_mean"], dtype=torch.float32)
        raw_std = torch.as_tensor(self.encoder["raw_std"], dtype=torch.float32)
        # EDM2 App. B.1: scale = final_std / raw_std, bias = final_mean - raw_mean * scale (float32)
        self.scale = torch.as_tensor(self.encoder["final_std"], dtype=torch.float32) / raw_std
        self.bias = torch.as_tensor(self.encoder["final_mean"], dtype=torch.float32) - raw_mean * self.scale
        self._vae = None if vae is None else vae.to(self.device).eval().requires_grad_(False)

    @property
    def vae(self) -> Any:
        """The diffusers AutoencoderKL, loaded on first use from the description's `vae` / `revision`."""
        if self._vae is None:
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
        z = torch.addcmul(mean, std, noise)  # EDM2 App. B.1: sample the posterior anew on every use
        return z.mul_(self._per_channel(self.scale, z.device)).add_(self._per_channel(self.bias, z.device))

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Network-space latents [B,4,h,w] -> uint8 [B,H,W,3] on the CPU (docs/data.md)."""
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


def _needs(name: str, why: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"VAE {name!r}: {why}. Put {CONFIG} and {WEIGHTS} of {SD_VAE_ID} into a local folder "
        f"(e.g. `hf download {SD_VAE_ID} {CONFIG} {WEIGHTS} --local-dir vae/`) and pass that folder"
    )


def resolve_vae(name: str | os.PathLike, revision: str | None = None) -> tuple[Path, str | None]:
    """(folder holding config.json + weights, resolved hub commit or None) for a local folder or hub id.

    A hub id is looked up in the Hugging Face cache first and downloaded at `revision` only if absent."""
    path = Path(name)
    if path.is_dir():
        missing = [f for f in (CONFIG, WEIGHTS) if not (path / f).is_file()]
        if missing:
            raise _needs(str(name), f"folder {path} lacks {missing}")
        return path, revision
    text = str(name)
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise _needs(text, "no such folder, and not a hub id of the form owner/name")
    from huggingface_hub import hf_hub_download

    files = []
    for f in (CONFIG, WEIGHTS):
        try:
            files.append(Path(hf_hub_download(text, f, revision=revision, local_files_only=True)))
        except Exception:  # not cached: try the network once
            try:
                files.append(Path(hf_hub_download(text, f, revision=revision)))
            except Exception as e:  # offline, unknown revision, gated, ...
                raise _needs(
                    text, f"{f} is not cached and cannot be downloaded at revision {revision} ({e})"
                ) from e
    folder = files[1].parent
    commit = folder.name if folder.parent.name == "snapshots" else revision
    return folder, commit


def load_vae(
    name: str | os.PathLike = SD_VAE_ID, revision: str | None = None, device: str | torch.device = "cpu"
):
    """A diffusers AutoencoderKL in eval mode without gradients, from safetensors only."""
    from diffusers import AutoencoderKL

    folder, _ = resolve_vae(name, revision)
    vae = AutoencoderKL.from_pretrained(str(folder), local_files_only=True, use_safetensors=True)
    return vae.to(device).eval().requires_grad_(False)


def vae_identity(vae: Any, revision: str | None = None) -> dict[str, Any]:
    """{"vae", "revision", "vae_sha256"} of a folder / hub id, or of a loaded model (hash of its weights)."""
    if isinstance(vae, str | os.PathLike):
        folder, commit = resolve_vae(vae, revision)
        return {"vae": str(vae), "revision": commit, "vae_sha256": sha256_file(folder / WEIGHTS)}
    h = hashlib.sha256()
    for key, t in sorted(vae.state_dict().items()):
        h.update(key.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return {"vae": "in-memory", "revision": None, "vae_sha256": "state-dict:" + h.hexdigest()}


@torch.no_grad()
def encode_pixels(vae: Any, pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [B,3,H,W] -> float32 mean||std [B,8,H/8,W/8] (for the SD VAE; H/2^k for smaller ones)."""
    device = next(vae.parameters()).device
    x = pixels.to(device, torch.float32) / 255  # docs/data.md: the VAE sees [0, 1], not [-1, 1]
    dist = vae.encode(x)["latent_dist"]
    return torch.cat([dist.mean, dist.std], dim=1).float().cpu()  # no 0.18215 factor (docs/data.md)


@torch.no_grad()
def decode_latents(vae: Any, z: torch.Tensor, batch_size: int = DECODE_BATCH) -> torch.Tensor:
    """Raw latents [B,4,h,w] -> uint8 [B,H,W,3]: clamp(0,1)*255, truncated like EDM2 (docs/data.md)."""
    device = next(vae.parameters()).device
    outs = []
    for chunk in z.to(device, torch.float32).split(batch_size):
        y = vae.decode(chunk)["sample"]
        outs.append((y.clamp(0, 1) * 255).to(torch.uint8).cpu())
    return torch.cat(outs).permute(0, 2, 3, 1).contiguous()
