"""Fashion-MNIST (70k 28x28 grey, 10 classes, MIT): find the IDX files, or download them with a checksum.

The library never installs anything: as root on Debian/Ubuntu, `apt-get install dataset-fashion-mnist` puts
the files under `DEBIAN_DIR` (the README's demo command does this).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.request
from pathlib import Path

import numpy as np

from edm2lib.files import atomic_path

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # where Debian's package puts the files
INSTALL = "apt-get install dataset-fashion-mnist"  # the command named when the files are missing offline
# The zalandoresearch/fashion-mnist repository ships the same IDX .gz files under data/fashion/ (https).
URL = "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/"
CLASS_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
# sha256 of the *decompressed* IDX bytes, so re-gzipped copies (Debian's differ from the S3 ones) verify too;
# computed from Debian's dataset-fashion-mnist 0.0~git20200523.55506a9-1
FILES = {
    "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}


def read_idx(raw: bytes, where: str) -> np.ndarray:
    """Parse an uncompressed IDX file (big-endian header: 0, 0, dtype 0x08 = uint8, ndim, dims)."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{where}: not a uint8 IDX file (magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(
            f"{where}: IDX header says {dims.tolist()} but holds {data.size} bytes; file truncated?"
        )
    return data.reshape(dims)


def _load(path: Path, name: str | None = None) -> bytes:
    """Decompressed contents of IDX file `name` (default: the file's own name), sha256 checked."""
    name = name or path.name
    try:
        raw = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: not a readable gzip file ({e}); delete it and retry") from e
    digest = hashlib.sha256(raw).hexdigest()
    if digest != FILES[name]:
        raise ValueError(f"{path}: sha256 of the contents is {digest}, expected {FILES[name]}")
    return raw


def _download(directory: Path, url: str = URL) -> None:
    """Fetch the missing files; each is checked under its temporary name and renamed only if it matches."""
    for name in FILES:
        target = directory / name
        if target.is_file():
            continue
        with atomic_path(target) as tmp:
            try:
                with urllib.request.urlopen(url + name, timeout=60) as r:
                    tmp.write_bytes(r.read())
            except OSError as e:
                raise FileNotFoundError(
                    f"Fashion-MNIST: {', '.join(FILES)} are not in {DEBIAN_DIR} and downloading {url}{name} "
                    f"failed ({e}); run `{INSTALL}` as root, or put the four files in a folder and use the "
                    "source 'fashion-mnist:<folder>'"
                ) from e
            _load(tmp, name)  # a mismatch raises here: the temporary file is deleted, never renamed


def find_files(directory: str | os.PathLike | None = None, cache: str | os.PathLike | None = None) -> Path:
    """The folder holding the four IDX files: `directory`, else Debian's, else a verified download to `cache`
    (default ``$XDG_CACHE_HOME/edm2lib/fashion-mnist``)."""
    if directory is not None:
        d = Path(directory)
        missing = [n for n in FILES if not (d / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{d}: Fashion-MNIST files missing: {missing}")
        return d
    if all((DEBIAN_DIR / n).is_file() for n in FILES):
        return DEBIAN_DIR
    base = (
        Path(cache or os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edm2lib" / "fashion-mnist"
    )
    base.mkdir(parents=True, exist_ok=True)
    _download(base)
    return base


def load_fashion_mnist(directory: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [70000,28,28], labels int64 [70000]): the 60k training images, then the 10k test ones."""
    d = find_files(directory)
    parts = {n: read_idx(_load(d / n), str(d / n)) for n in FILES}
    images = np.concatenate([parts["train-images-idx3-ubyte.gz"], parts["t10k-images-idx3-ubyte.gz"]])
    labels = np.concatenate([parts["train-labels-idx1-ubyte.gz"], parts["t10k-labels-idx1-ubyte.gz"]])
    if len(images) != len(labels) or images.shape[1:] != (28, 28):
        raise ValueError(f"{d}: unexpected Fashion-MNIST shapes {images.shape} / {labels.shape}")
    return images, labels.astype(np.int64)


def fashion_mnist_arrays(
    directory: str | os.PathLike | None = None,
) -> tuple[str, list[str], np.ndarray, np.ndarray]:
    """(where, names ``train/00000`` ... ``test/09999``, images, labels) in file order, for `open_source`."""
    images, labels = load_fashion_mnist(directory)
    names = [f"train/{i:05d}" for i in range(60000)] + [f"test/{i:05d}" for i in range(len(images) - 60000)]
    return str(directory or find_files()), names, images, labels
