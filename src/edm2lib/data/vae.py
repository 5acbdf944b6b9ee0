"""The SD VAE through diffusers: load by local folder or pinned hub id, encode pixels, decode latents."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from edm2lib.data.codecs import DECODE_BATCH, SD_VAE_ID
from edm2lib.io import sha256_file

CONFIG = "config.json"
WEIGHTS = "diffusion_pytorch_model.safetensors"


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
    x = pixels.to(device, torch.float32) / 255  # EDM2-FACTS 6.6: the VAE sees [0, 1], not [-1, 1]
    dist = vae.encode(x)["latent_dist"]
    return torch.cat([dist.mean, dist.std], dim=1).float().cpu()  # no 0.18215 factor (EDM2-FACTS 6.6)


@torch.no_grad()
def decode_latents(vae: Any, z: torch.Tensor, batch_size: int = DECODE_BATCH) -> torch.Tensor:
    """Raw latents [B,4,h,w] -> uint8 [B,H,W,3]: clamp(0,1)*255, truncated like EDM2 (EDM2-FACTS 6.6)."""
    device = next(vae.parameters()).device
    outs = []
    for chunk in z.to(device, torch.float32).split(batch_size):
        y = vae.decode(chunk)["sample"]
        outs.append((y.clamp(0, 1) * 255).to(torch.uint8).cpu())
    return torch.cat(outs).permute(0, 2, 3, 1).contiguous()
