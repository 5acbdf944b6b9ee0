"""Network and training presets as data: the EDM2 paper's img512/img64 models and small CPU models."""

from __future__ import annotations

import dataclasses
from typing import Any

from edm2lib.nn import ladder

_KI, _MI = 2**10, 2**20


@dataclasses.dataclass(frozen=True)
class Preset:
    """One preset: `Precond` keywords plus training hyper-parameters, time in images (EDM2 App. D).

    Field names equal the `edm2lib.training.config.TrainConfig` keys, so `preset.training` can seed one.
    """

    name: str
    network: dict[str, Any]  # Precond keywords (official names)
    encoder: str  # 'sd-vae' (latent models) or 'pixels'
    batch: int  # images per optimizer step
    duration: int  # training length in images
    lr_ref: float  # alpha_ref of the inverse-sqrt lr schedule (EDM2 Eq. 67)
    t_ref: int  # images before the lr starts decaying (EDM2 Eq. 67)
    warmup: int  # linear lr warm-up length in images (EDM2 Eq. 67)
    P_mean: float  # mean of ln(sigma) in training (EDM2 App. B.2)
    P_std: float  # std of ln(sigma) in training (EDM2 App. B.2)
    sigma_rels: tuple[float, ...] = (0.050, 0.100)  # power-function EMA widths tracked online (EDM2 App. D)
    snapshot_nimg: int = 8 * _MI  # EMA snapshot interval in images
    checkpoint_nimg: int = 128 * _MI  # training-state checkpoint interval in images
    status_nimg: int = 128 * _KI  # status line interval in images
    dtype: str = "fp16"  # activation precision on GPU (TrainConfig.dtype)
    config: str = "G"  # the ladder letter `network` builds (EDM2 Table 1)

    @property
    def training(self) -> dict[str, Any]:
        """The training fields as a plain dict (TrainConfig keys)."""
        skip = {"name", "network", "encoder", "config"}
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}
        values["sigma_rels"] = list(self.sigma_rels)
        return values


def _paper(
    family: str, size: str, model_channels: int, dropout: float, lr_ref: float, duration_mi: int
) -> Preset:
    """An EDM2 paper preset: U-Net defaults besides width and dropout, batch 2048 (EDM2 App. D)."""
    latent = family == "img512"
    return Preset(
        name=f"edm2-{family}-{size}",
        network=dict(
            img_resolution=64,  # img512 runs at 64x64 on SD-VAE latents, img64 on pixels
            img_channels=4 if latent else 3,
            label_dim=1000,
            model_channels=model_channels,
            dropout=dropout,
        ),
        encoder="sd-vae" if latent else "pixels",
        batch=2048,
        duration=duration_mi * _MI,
        lr_ref=lr_ref,
        t_ref=(70000 if latent else 35000) * 2048,  # 70k / 35k batches (EDM2 App. D)
        warmup=10_000_000,
        P_mean=-0.4 if latent else -0.8,
        P_std=1.0 if latent else 1.6,
    )


_PAPER = [
    # family, size, model_channels, dropout, lr_ref, duration (Mi images) -- EDM2 App. D
    ("img512", "xxs", 64, 0.00, 0.0170, 2048),
    ("img512", "xs", 128, 0.00, 0.0120, 2048),
    ("img512", "s", 192, 0.00, 0.0100, 2048),
    ("img512", "m", 256, 0.10, 0.0090, 2048),
    ("img512", "l", 320, 0.10, 0.0080, 1792),
    ("img512", "xl", 384, 0.10, 0.0070, 1280),
    ("img512", "xxl", 448, 0.10, 0.0065, 896),
    ("img64", "xs", 128, 0.00, 0.0120, 1024),
    ("img64", "s", 192, 0.00, 0.0100, 1024),
    ("img64", "m", 256, 0.10, 0.0090, 2048),
    ("img64", "l", 320, 0.10, 0.0080, 1024),
    ("img64", "xl", 384, 0.10, 0.0070, 640),
]

# Small CPU presets. The demo trains Fashion-MNIST (padded to 32x32, RGB) for a few hundred steps on two
# cores; its schedule is the paper's shrunk to minutes: warm-up, t_ref and snapshots in thousands of images.
_SMALL = [
    Preset(
        name="edm2-demo",
        network=dict(
            img_resolution=32,
            img_channels=3,
            label_dim=10,
            model_channels=32,
            channel_mult=[1, 2, 2],
            num_blocks=1,
            attn_resolutions=[8],
            dropout=0.0,
        ),
        encoder="pixels",
        batch=16,  # ~1.8 GFLOP per image and step: about 1.5 s per step on 2 cores
        duration=6 * _KI,  # 384 steps
        lr_ref=0.01,
        t_ref=2 * _KI,
        warmup=1 * _KI,
        P_mean=-0.8,
        P_std=1.6,
        snapshot_nimg=1 * _KI,  # 6 snapshots per sigma_rel for the post-hoc EMA
        checkpoint_nimg=2 * _KI,
        status_nimg=512,
        dtype="fp32",
    ),
    Preset(
        name="edm2-tiny",
        network=dict(
            img_resolution=16,
            img_channels=3,
            label_dim=10,
            model_channels=16,
            channel_mult=[1, 2],
            num_blocks=1,
            attn_resolutions=[8],
            channels_per_head=16,  # 2 heads at the 32-channel 8x8 level
            dropout=0.0,
        ),
        encoder="pixels",
        batch=8,
        duration=4 * _KI,
        lr_ref=0.01,
        t_ref=2 * _KI,
        warmup=512,
        P_mean=-0.8,
        P_std=1.6,
        snapshot_nimg=1 * _KI,
        checkpoint_nimg=2 * _KI,
        status_nimg=512,
        dtype="fp32",
    ),
]

PRESETS: dict[str, Preset] = {p.name: p for p in [*(_paper(*row) for row in _PAPER), *_SMALL]}


def get_preset(name: str, config: str = "G") -> Preset:
    """The preset called `name` with its network as ladder config `config` ('A'..'G', EDM2 Table 1).

    'G' is the preset as published. For 'A'..'F' the network gets `ablation=config` and 10% dropout
    (EDM2 Figs. 16-21); A also attends at the next finer resolution (32x32 beside 16 and 8 at 64x64,
    EDM2 Fig. 16). The `network` dict is a fresh copy the caller may modify.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
    ladder.switches(config)  # an unknown letter fails here, naming the allowed ones
    preset = PRESETS[name]
    network = _copy(preset.network)
    if config != "G":
        network.update(ablation=config, dropout=0.1)
        if config == "A" and "attn_resolutions" in network:
            network["attn_resolutions"] = _adm_attention(
                network["attn_resolutions"], network["img_resolution"]
            )
    return dataclasses.replace(preset, network=network, config=config)


def _adm_attention(resolutions: list[int], img_resolution: int) -> list[int]:
    """ADM's attention resolutions: the given ones and the next finer one inside the image (EDM2 App. B.2)."""
    finer = 2 * max(resolutions)
    return [finer, *resolutions] if finer < img_resolution else list(resolutions)


def _copy(network: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, list) else v for k, v in network.items()}
