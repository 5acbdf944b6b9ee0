"""The shared reader of images.h5 and latents.h5: random access by index, batches in network space."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from edm2lib.data.encoders import Codec, make_codec, parse_encoder

IMAGES_FORMAT = "edm2lib.images/1"  # attrs["format"] of images.h5
LATENTS_FORMAT = "edm2lib.latents/1"  # attrs["format"] of latents.h5


def _attr(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


class _H5Dataset:
    """Common part: attributes read once, the HDF5 file opened lazily in each process that reads it."""

    format = ""
    arrays: tuple[str, ...] = ()

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        with h5py.File(self.path, "r") as f:
            self.attrs = {k: _attr(v) for k, v in f.attrs.items()}
            missing = [k for k in self.arrays if k not in f]
            if missing:
                raise ValueError(f"{self.path}: {self.format} file lacks datasets {missing}; rebuild it")
            self.shape = tuple(f[self.arrays[0]].shape)
            self.class_ids = f["labels"][:].astype(np.int64) if "labels" in f else None
            names = f["class_names"][:] if "class_names" in f else []
            self.class_names = [_attr(n) for n in names]
        self.encoder = parse_encoder(self.attrs["encoder"])
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._codec: Codec | None = None

    def __getstate__(self) -> dict[str, Any]:  # picklable for DataLoader workers: never ship an open file
        return {**self.__dict__, "_file": None, "_pid": None}

    def _h5(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file

    def close(self) -> None:
        """Close this process's file handle (it reopens on the next read)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def label_dim(self) -> int:
        """Number of classes (one-hot width); 0 for an unlabelled data set."""
        if self.class_ids is None:
            return 0
        return max(len(self.class_names), int(self.class_ids.max(initial=-1)) + 1)

    @property
    def codec(self) -> Codec:
        """The CPU codec of this data set's encoder (the VAE is only loaded if `decode` is called)."""
        if self._codec is None:
            self._codec = make_codec(self.encoder)
        return self._codec

    def _index(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(
                f"{self.path}: index out of range for {len(self)} items: {idx.min()}..{idx.max()}"
            )
        return idx % max(len(self), 1)

    def _read(self, name: str, idx: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows `idx` of dataset `name`, into `out` (cast to its dtype) if given, else a new array."""
        # one chunk read per row, in file order, straight into place: h5py's fancy indexing with an
        # index list is about 100x slower for per-row chunks (bench/data.py)
        dset = self._h5()[name]
        if out is None:
            out = np.empty((len(idx), *dset.shape[1:]), dtype=dset.dtype)
        rows = idx.tolist()
        for j in np.argsort(idx, kind="stable").tolist():
            out[j] = dset[rows[j]]
        return out

    def labels(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """One-hot float32 [B, label_dim] (width 0 when unlabelled)."""
        idx = self._index(indices)
        out = torch.zeros(len(idx), self.label_dim)
        if self.class_ids is not None:
            out[torch.arange(len(idx)), torch.from_numpy(self.class_ids[idx])] = 1
        return out

    def class_id(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """Class ids int64 [B]; -1 when unlabelled."""
        idx = self._index(indices)
        if self.class_ids is None:
            return torch.full((len(idx),), -1, dtype=torch.int64)
        return torch.from_numpy(self.class_ids[idx])

    def get_batch(
        self,
        indices: Sequence[int] | np.ndarray | torch.Tensor,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x float32 [B,C,H,W] in network space, one-hot labels float32 [B,label_dim]), on the CPU.

        Latent noise comes from `generator`, or from one generator per example if a sequence is given
        (the same result as one call per example, in one read)."""
        return self.codec.encode_batch(self.raw(indices), generator), self.labels(indices)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.path)!r}, n={len(self)}, resolution={self.resolution}, "
            f"channels={self.channels}, label_dim={self.label_dim})"
        )


class ImageDataset(_H5Dataset):
    """images.h5: `images` uint8 [N,H,W,3]; network space x/127.5 - 1."""

    format = IMAGES_FORMAT
    arrays = ("images",)
    channels = 3

    @property
    def resolution(self) -> int:
        return self.shape[1]

    def images(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> np.ndarray:
        """uint8 [B,H,W,3] as stored (for reference statistics and previews)."""
        return self._read("images", self._index(indices))

    def raw(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 [B,3,H,W], the input of the pixel codec."""
        return torch.from_numpy(self.images(indices)).permute(0, 3, 1, 2)


class LatentDataset(_H5Dataset):
    """latents.h5: `mean`, `std` [N,4,h,w]; each read draws mean + std * randn (EDM2 App. B.1)."""

    format = LATENTS_FORMAT
    arrays = ("mean", "std")
    channels = 4

    @property
    def resolution(self) -> int:
        return self.shape[2]

    def raw(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """float32 [B,8,h,w] = mean||std, the input of the VAE codec."""
        idx = self._index(indices)
        out = np.empty((len(idx), 2 * self.shape[1], *self.shape[2:]), dtype=np.float32)
        self._read("mean", idx, out[:, : self.shape[1]])
        self._read("std", idx, out[:, self.shape[1] :])
        return torch.from_numpy(out)


def open_dataset(path: str | os.PathLike) -> ImageDataset | LatentDataset:
    """Open images.h5 or latents.h5 (the kind is read from the file's `format` attribute)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data set; build it with edm2lib.data.prepare_dataset")
    try:
        with h5py.File(path, "r") as f:
            fmt = _attr(f.attrs.get("format"))
    except OSError as e:
        raise ValueError(f"{path}: not an HDF5 file ({e}); expected images.h5 or latents.h5") from e
    kinds = {IMAGES_FORMAT: ImageDataset, LATENTS_FORMAT: LatentDataset}
    if fmt not in kinds:
        raise ValueError(f"{path}: format attribute {fmt!r} is not one of {sorted(kinds)}")
    return kinds[fmt](path)
