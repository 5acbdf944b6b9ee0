"""Data sets: prepare images.h5, encode latents.h5 with the SD VAE, read both, decode to pixels."""

from edm2lib.data.dataset import ImageDataset, LatentDataset, open_dataset
from edm2lib.data.encode import encode_dataset
from edm2lib.data.encoders import (
    PIXELS,
    Codec,
    PixelCodec,
    VAECodec,
    decode_latents,
    encode_pixels,
    load_vae,
    make_codec,
    parse_encoder,
    sd_vae_description,
)
from edm2lib.data.prepare import prepare_dataset
from edm2lib.data.sources import open_source
from edm2lib.data.transforms import TRANSFORMS

__all__ = [
    "PIXELS",
    "TRANSFORMS",
    "Codec",
    "ImageDataset",
    "LatentDataset",
    "PixelCodec",
    "VAECodec",
    "decode_latents",
    "encode_dataset",
    "encode_pixels",
    "load_vae",
    "make_codec",
    "open_dataset",
    "open_source",
    "parse_encoder",
    "prepare_dataset",
    "sd_vae_description",
]
