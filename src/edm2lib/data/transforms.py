"""Decode any image to RGB uint8 and bring it to a square resolution (center-crop-dhariwal, ...)."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

TRANSFORMS = ("center-crop-dhariwal", "center-crop", "resize", "pad")

WHITE = (255, 255, 255)


def decode_image(payload: bytes | np.ndarray) -> Image.Image:
    """Open encoded bytes (or wrap an HxW / HxWxC uint8 array) as a fully decoded PIL image.

    Animated files give their first frame; images over PIL's `MAX_IMAGE_PIXELS` (about 89 Mpx) are refused
    as decompression bombs. Raises ValueError with the decoder's reason."""
    if isinstance(payload, np.ndarray):
        return Image.fromarray(payload)
    if len(payload) == 0:
        raise ValueError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(payload))
            img.seek(0)  # first frame of an animated GIF / APNG / WebP
            img.load()
    except UnidentifiedImageError:
        raise ValueError("not a recognised image format (the content is not an image)") from None
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ... for bad data
        raise ValueError(f"cannot decode image: {type(e).__name__}: {e}") from e
    return img


def to_rgb(img: Image.Image) -> np.ndarray:
    """HxWx3 uint8. Transparency is composited on white; 16-bit channels are rounded to 8 bits."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        # 16-bit greyscale: PIL's own convert would clip at 255 instead of rescaling 65535 -> 255
        grey = np.asarray(img, dtype=np.float64)
        grey = np.clip(np.rint(grey / 257), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.mode == "F":
        grey = np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "La", "PA", "RGBa") or (img.mode == "L" and "transparency" in img.info):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGBA", img.size, (*WHITE, 255))
        img = Image.alpha_composite(background, img)
    try:
        rgb = img.convert("RGB")
    except ValueError as e:
        raise ValueError(f"image mode {img.mode!r} cannot be converted to RGB: {e}") from e
    return np.asarray(rgb, dtype=np.uint8)


def _centre_crop(arr: np.ndarray, size: int) -> np.ndarray:
    top = (arr.shape[0] - size) // 2
    left = (arr.shape[1] - size) // 2
    return arr[top : top + size, left : left + size]


def center_crop_dhariwal(arr: np.ndarray, resolution: int) -> np.ndarray:
    """ADM/EDM2 crop (EDM2 App. B.1; docs/data.md): BOX-halve while the short side is >= 2x the target,
    BICUBIC so the short side equals the target, then take the centre square."""
    img = Image.fromarray(arr)
    while min(img.size) >= 2 * resolution:
        img = img.resize((img.size[0] // 2, img.size[1] // 2), resample=Image.Resampling.BOX)
    scale = resolution / min(img.size)
    size = (round(img.size[0] * scale), round(img.size[1] * scale))
    img = img.resize(size, resample=Image.Resampling.BICUBIC)
    return _centre_crop(np.asarray(img), resolution)


def center_crop(arr: np.ndarray, resolution: int) -> np.ndarray:
    """Centre square of the short side, then LANCZOS to the target (StyleGAN's `center-crop`)."""
    side = min(arr.shape[:2])
    img = Image.fromarray(np.ascontiguousarray(_centre_crop(arr, side)))
    return np.asarray(img.resize((resolution, resolution), resample=Image.Resampling.LANCZOS))


def resize(arr: np.ndarray, resolution: int) -> np.ndarray:
    """LANCZOS straight to target x target, ignoring the aspect ratio (for already square sources)."""
    img = Image.fromarray(arr)
    return np.asarray(img.resize((resolution, resolution), resample=Image.Resampling.LANCZOS))


def pad(arr: np.ndarray, resolution: int) -> np.ndarray:
    """Centre the image on a black square; pixels are kept exactly (Fashion-MNIST 28 -> 32)."""
    h, w = arr.shape[:2]
    if h > resolution or w > resolution:
        raise ValueError(f"image is {w}x{h}, larger than the pad target {resolution}; use a crop transform")
    out = np.zeros((resolution, resolution, 3), dtype=np.uint8)
    top, left = (resolution - h) // 2, (resolution - w) // 2
    out[top : top + h, left : left + w] = arr
    return out


_FUNCS = {
    "center-crop-dhariwal": center_crop_dhariwal,
    "center-crop": center_crop,
    "resize": resize,
    "pad": pad,
}


def check_transform(name: str) -> None:
    """Raise ValueError for an unknown transform name."""
    if name not in _FUNCS:
        raise ValueError(f"transform {name!r} is unknown; choose one of {', '.join(TRANSFORMS)}")


def transform_image(payload: bytes | np.ndarray, resolution: int, transform: str) -> np.ndarray:
    """Encoded image (or array) -> uint8 [resolution, resolution, 3]; ValueError says why not."""
    check_transform(transform)
    arr = to_rgb(decode_image(payload))
    out = _FUNCS[transform](np.ascontiguousarray(arr), resolution)
    if out.shape != (resolution, resolution, 3):
        raise ValueError(
            f"transform {transform} gave shape {out.shape}, expected {resolution}x{resolution}x3"
        )
    return np.ascontiguousarray(out, dtype=np.uint8)
