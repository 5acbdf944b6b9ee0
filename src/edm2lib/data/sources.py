"""Enumerate prepare inputs: class folders, flat folder + labels file, zips of either, Fashion-MNIST."""

from __future__ import annotations

import csv
import io
import json
import os
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from edm2lib.data.fashion_mnist import CLASS_NAMES, fashion_mnist_arrays

LABEL_FILES = ("dataset.json",)  # found automatically at the root of a folder or zip (EDM2 layout)


# raster formats PIL decodes without external tools; other files in a source are ignored
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".gif", ".bmp", ".dib", ".tif", ".tiff", ".webp"}
    | {".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".qoi"}
)


def _hidden(name: str) -> bool:
    """Dot files and macOS zip debris (``__MACOSX/``, ``._x.jpg``) are not part of a data set."""
    return any(part.startswith(".") or part == "__MACOSX" for part in PurePosixPath(name).parts)


@dataclass
class Source:
    """What `prepare` converts: sorted relative names, their class ids, and how to fetch each payload."""

    description: str
    names: list[str]
    class_ids: list[int] | None  # None: unlabelled
    class_names: list[str]
    problems: list[tuple[str, str]] = field(default_factory=list)  # (name, reason) found while listing
    root: Path | None = None  # folder or zip file
    arrays: np.ndarray | None = None  # in-memory images (IDX sources)
    _zip: zipfile.ZipFile | None = field(default=None, repr=False)

    def read(self, i: int) -> bytes | np.ndarray:
        """The encoded bytes (or uint8 array) of item `i`."""
        if self.arrays is not None:
            return self.arrays[i]
        assert self.root is not None
        if self.root.is_dir():
            return (self.root / self.names[i]).read_bytes()
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.root)
        return self._zip.read(self.names[i])

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None


def _list_folder(root: Path) -> list[str]:
    names = (p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return [n for n in names if not _hidden(n)]


def _list_zip(path: Path) -> tuple[list[str], list[tuple[str, str]]]:
    try:
        with zipfile.ZipFile(path) as z:
            names = [i.filename for i in z.infolist() if not i.is_dir() and not _hidden(i.filename)]
    except zipfile.BadZipFile as e:
        raise ValueError(f"{path}: not a readable zip file ({e})") from e
    counts = Counter(names)
    problems = [
        (n, f"duplicate name: stored {c} times in the zip; skipped") for n, c in counts.items() if c > 1
    ]
    return sorted(n for n, c in counts.items() if c == 1), problems


def _read_labels_file(text: str, fmt: str, where: str) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """name -> label (int or class name) from CSV rows ``name,label`` (header optional) or JSON."""
    pairs: list[tuple[str, Any]] = []
    if fmt == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: invalid JSON ({e})") from e
        if isinstance(data, dict) and "labels" in data:  # EDM2 / StyleGAN dataset.json
            data = data["labels"] or []
        pairs = list(data.items()) if isinstance(data, dict) else [tuple(p) for p in data]
        bad = [p for p in pairs if len(p) != 2 or not isinstance(p[1], int | str) or isinstance(p[1], bool)]
        if bad:
            raise ValueError(f"{where}: entry {list(bad[0])} should be [name, class id or class name]")
    elif fmt == ".csv":
        rows = [r for r in csv.reader(io.StringIO(text)) if r and any(c.strip() for c in r)]
        if rows and rows[0][0].strip().lower() in ("filename", "file", "name", "image", "path"):
            rows = rows[1:]
        for r in rows:
            if len(r) != 2:
                raise ValueError(f"{where}: row {r} should have two columns: filename,label")
            pairs.append((r[0].strip(), r[1].strip()))
    else:
        raise ValueError(f"{where}: labels file must end in .csv or .json")
    labels: dict[str, Any] = {}
    problems = []
    counts = Counter(PurePosixPath(n).as_posix() for n, _ in pairs)
    for name, label in pairs:
        name = PurePosixPath(name).as_posix()
        if counts[name] > 1:
            problems.append((name, f"duplicate name: listed {counts[name]} times in {where}; image skipped"))
        else:
            labels[name] = int(label) if isinstance(label, int) or str(label).lstrip("-").isdigit() else label
    return labels, sorted(set(problems))


def _assign(
    names: list[str], labels: str | Path | None, read_text: Any, where: str
) -> tuple[list[str], list[int] | None, list[str], list[tuple[str, str]]]:
    """Match image names with labels from folders or a labels file; every mismatch is one problem."""
    problems: list[tuple[str, str]] = []
    label_files = [n for n in names if n in LABEL_FILES]
    images = sorted(n for n in names if PurePosixPath(n).suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise ValueError(f"{where}: no image files found (extensions such as .jpg, .png)")
    if labels is None and label_files:
        labels = label_files[0]
    if labels in ("none", False):
        return images, None, [], problems
    if labels is None or labels == "folders":
        top = [n for n in images if "/" not in n]
        if labels is None and len(top) == len(images):
            return images, None, [], problems
        problems += [(n, "image at the top level of a class-folder layout; skipped") for n in top]
        images = [n for n in images if "/" in n]
        class_names = sorted({n.split("/", 1)[0] for n in images})
        index = {c: i for i, c in enumerate(class_names)}
        return images, [index[n.split("/", 1)[0]] for n in images], class_names, problems
    text, label_where = read_text(labels)
    table, dup = _read_labels_file(text, Path(str(labels)).suffix.lower(), label_where)
    problems += dup
    dup_names = {n for n, _ in dup}
    present = set(images)
    problems += [(n, f"named in {label_where} but no such image") for n in sorted(set(table) - present)]
    unlabelled = [n for n in images if n not in table and n not in dup_names]
    problems += [(n, f"no label in {label_where}; skipped") for n in unlabelled]
    images = [n for n in images if n in table]
    values = [table[n] for n in images]
    if all(isinstance(v, int) for v in values):
        if any(v < 0 for v in values):
            raise ValueError(f"{label_where}: class ids must be >= 0")
        class_names = [str(i) for i in range(max(values, default=-1) + 1)]
        return images, values, class_names, problems
    class_names = sorted({str(v) for v in values})
    index = {c: i for i, c in enumerate(class_names)}
    return images, [index[str(v)] for v in values], class_names, problems


def open_source(source: str | os.PathLike, labels: str | os.PathLike | None = None) -> Source:
    """A folder, a .zip, or ``fashion-mnist[:DIR]``; `labels` is None (auto: ``dataset.json`` at the root,
    else class sub-folders, else unlabelled), ``"folders"``, ``"none"``, or a CSV/JSON labels file
    (a path, or a name inside the zip)."""
    text = str(source)
    if text == "fashion-mnist" or text.startswith("fashion-mnist:"):
        where, names, images, labels = fashion_mnist_arrays(text.partition(":")[2] or None)
        return Source(f"fashion-mnist:{where}", names, labels.tolist(), list(CLASS_NAMES), arrays=images)
    path = Path(source)
    if path.is_dir():
        names = _list_folder(path)
        zip_problems: list[tuple[str, str]] = []

        def read_text(name: Any) -> tuple[str, str]:
            p = Path(name) if Path(name).is_absolute() or Path(name).exists() else path / str(name)
            if not p.is_file():
                raise FileNotFoundError(f"labels file {name} not found (looked at {p})")
            return p.read_text(), str(p)

    elif path.is_file() and path.suffix.lower() == ".zip":
        names, zip_problems = _list_zip(path)

        def read_text(name: Any) -> tuple[str, str]:
            if Path(str(name)).is_file():
                return Path(str(name)).read_text(), str(name)
            with zipfile.ZipFile(path) as z:
                if str(name) not in z.namelist():
                    raise FileNotFoundError(f"labels file {name} is neither a file nor a member of {path}")
                return z.read(str(name)).decode(), f"{path}:{name}"

    elif path.exists():
        raise ValueError(f"{path}: source must be a folder, a .zip or 'fashion-mnist[:DIR]'")
    else:
        raise FileNotFoundError(f"{path}: no such folder or zip file")
    images, class_ids, class_names, problems = _assign(names, labels, read_text, str(path))
    return Source(str(path), images, class_ids, class_names, sorted(zip_problems + problems), root=path)
