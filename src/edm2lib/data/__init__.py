"""Data sets: prepare images.h5, encode latents.h5 with the SD VAE, read both, decode to pixels."""

from edm2lib.data.codecs import (
    PIXELS,
    Codec,
    PixelCodec,
    VAECodec,
    make_codec,
    parse_encoder,
    sd_vae_description,
)

__all__ = ["PIXELS", "Codec", "PixelCodec", "VAECodec", "make_codec", "parse_encoder", "sd_vae_description"]
