"""Convert a source of images into images.h5 (uint8 [N,H,W,3], labels, class names), deterministically."""

from __future__ import annotations

import collections
import json
import multiprocessing as mp
import os
import sys
import time
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

from edm2lib.data.dataset import IMAGES_FORMAT
from edm2lib.data.sources import Source, open_source
from edm2lib.data.transforms import check_transform, transform_image
from edm2lib.files import atomic_path, atomic_write_text

TASK = 16  # images per worker task: amortises inter-process overhead
AHEAD = 8  # tasks in flight per worker: bounds memory on 1.28M-image sources
WRITE_ROWS = 64  # images per HDF5 write: one write per image costs more than decoding a 28x28 one


def _convert_many(
    payloads: list[bytes | np.ndarray | str], resolution: int, transform: str
) -> list[tuple[np.ndarray | None, str]]:
    out: list[tuple[np.ndarray | None, str]] = []
    for p in payloads:
        if isinstance(p, str):  # the file could not be read; p says why
            out.append((None, p))
            continue
        try:
            out.append((transform_image(p, resolution, transform), ""))
        except ValueError as e:
            out.append((None, str(e)))
    return out


def _results(source: Source, resolution: int, transform: str, workers: int):
    """Yield (index, image or None, reason) in source order, decoding in `workers` processes."""
    n = len(source.names)
    tasks = [range(i, min(i + TASK, n)) for i in range(0, n, TASK)]

    def payloads(task: range) -> list[bytes | np.ndarray | str]:
        out: list[bytes | np.ndarray | str] = []
        for i in task:
            try:
                out.append(source.read(i))
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError) as e:
                out.append(f"cannot read: {type(e).__name__}: {e}")  # e.g. a corrupt zip member
        return out

    if workers <= 1:
        for task in tasks:
            for i, (img, reason) in zip(task, _convert_many(payloads(task), resolution, transform)):
                yield i, img, reason
        return
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with ctx.Pool(workers) as pool:
        pending: collections.deque = collections.deque()
        queue = iter(tasks)
        for task in queue:
            pending.append((task, pool.apply_async(_convert_many, (payloads(task), resolution, transform))))
            if len(pending) >= workers * AHEAD:
                break
        while pending:
            task, res = pending.popleft()
            for i, (img, reason) in zip(task, res.get()):
                yield i, img, reason
            nxt = next(queue, None)
            if nxt is not None:
                pending.append((nxt, pool.apply_async(_convert_many, (payloads(nxt), resolution, transform))))


def _checked_source(
    source: str | os.PathLike,
    labels: str | os.PathLike | None,
    resolution: int,
    transform: str,
    on_error: str,
    max_images: int | None,
) -> Source:
    """Check the arguments and open the source, cut to its first `max_images` names (sorted order)."""
    if on_error not in ("skip", "fail"):
        raise ValueError(f"on_error={on_error!r}; expected 'skip' or 'fail'")
    if resolution < 1:
        raise ValueError(f"resolution={resolution}; expected a positive integer")
    if max_images is not None and max_images < 0:
        raise ValueError(f"max_images={max_images}; expected None or a count >= 0")
    check_transform(transform)
    src = open_source(source, labels)
    if on_error == "fail" and src.problems:
        name, reason = src.problems[0]
        raise ValueError(f"{src.description}: {name}: {reason}")
    if max_images is not None:
        src.names = src.names[:max_images]
    return src


def _worker_count(workers: int | None, src: Source) -> int:
    if src.arrays is not None:
        return 1  # in-memory arrays (Fashion-MNIST): shipping them to workers costs more than converting
    return min(8, os.cpu_count() or 1) if workers is None else workers


def _converted(
    src: Source, results: Iterable[tuple[int, np.ndarray | None, str]], on_error: str, skipped: list
) -> Iterator[tuple[int, np.ndarray]]:
    """(index, image) of the images that converted; the others raise (on_error 'fail') or go to `skipped`."""
    for i, img, reason in results:
        if img is None:
            if on_error == "fail":
                raise ValueError(f"{src.description}: {src.names[i]}: {reason}")
            skipped.append((src.names[i], reason))
            continue
        yield i, img


def _create_images(f: h5py.File, n: int, resolution: int, compression: str | None) -> h5py.Dataset:
    """The `images` dataset, sized for all `n` names (shrunk to the kept ones at the end), one chunk a row."""
    shape = (resolution, resolution, 3)
    return f.create_dataset(
        "images",
        shape=(n, *shape),
        maxshape=(None, *shape),
        chunks=(1, *shape),
        dtype=np.uint8,
        compression=compression,
        track_times=False,
    )


def _write_rows(images: h5py.Dataset, converted: Iterable[tuple[int, np.ndarray]]) -> list[int]:
    """Write the images in order, WRITE_ROWS per HDF5 write; returns the source indices written."""
    kept: list[int] = []
    block: list[np.ndarray] = []
    for i, img in converted:
        kept.append(i)
        block.append(img)
        if len(block) == WRITE_ROWS:
            images[len(kept) - len(block) : len(kept)] = np.stack(block)
            block = []
    if block:
        images[len(kept) - len(block) : len(kept)] = np.stack(block)
    return kept


def _write_report(report: Path, problems: list[tuple[str, str]]) -> None:
    """`<out_h5>.skipped.tsv`: one `name<TAB>reason` line per file left out."""
    atomic_write_text(report, "name\treason\n" + "".join(f"{a}\t{b}\n" for a, b in problems))


def _finish_file(
    f: h5py.File, src: Source, kept: list[int], transform: str, resolution: int, skipped: int
) -> None:
    """Labels of the kept images, class names and the attributes, after the images are written."""
    if src.class_ids is not None:
        kept_labels = np.asarray([src.class_ids[i] for i in kept], dtype=np.int64)
        f.create_dataset("labels", data=kept_labels, track_times=False)
    f.create_dataset(
        "class_names",
        data=np.asarray(src.class_names, dtype=object),
        dtype=h5py.string_dtype(),
        track_times=False,
    )
    meta = {
        "format": IMAGES_FORMAT,
        "encoder": '{"kind": "pixels"}',
        "source": src.description,
        "transform": transform,
        "resolution": resolution,
        "count": len(kept),
        "skipped": skipped,
        "label_dim": len(src.class_names) if src.class_ids is not None else 0,
    }
    for k in sorted(meta):
        f.attrs[k] = meta[k]


def prepare_dataset(
    source: str | os.PathLike,
    out_h5: str | os.PathLike,
    resolution: int,
    transform: str = "center-crop-dhariwal",
    labels: str | os.PathLike | None = None,
    on_error: str = "skip",
    workers: int | None = None,
    max_images: int | None = None,
    compression: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Convert `source` (folder, .zip or ``fashion-mnist[:DIR]``, see `open_source`) into `out_h5`.

    ``on_error="skip"`` drops undecodable or unlabelled files and lists them, and label entries without an
    image, with reasons in ``<out_h5>.skipped.tsv`` (its line count is `skipped`); ``"fail"`` raises
    ValueError at the first one. `max_images` keeps the first
    N names in sorted order. `compression` ("gzip", "lzf" or None) trades size for read speed. The same
    input gives a byte-identical file. Returns a summary dict (count, skipped, report, images_per_s, ...).
    """
    src = _checked_source(source, labels, resolution, transform, on_error, max_images)
    out_h5 = Path(out_h5)
    report = out_h5.with_name(out_h5.name + ".skipped.tsv")
    n = len(src.names)
    results = _results(src, resolution, transform, _worker_count(workers, src))
    t0 = time.perf_counter()
    skipped: list[tuple[str, str]] = []
    with atomic_path(out_h5) as tmp, h5py.File(tmp, "w", libver="earliest") as f:
        images = _create_images(f, n, resolution, compression)
        desc = f"prepare {out_h5.name}"
        with tqdm(results, total=n, desc=desc, unit="img", disable=not progress, mininterval=1) as bar:
            kept = _write_rows(images, _converted(src, bar, on_error, skipped))
        src.close()
        problems = sorted(set(src.problems) | set(skipped))  # one line per file: the `skipped` count
        _write_report(report, problems)
        if not kept:
            raise ValueError(f"{src.description}: no image could be converted; reasons in {report}")
        images.resize(len(kept), axis=0)
        _finish_file(f, src, kept, transform, resolution, len(problems))
    seconds = time.perf_counter() - t0
    return {
        "path": str(out_h5),
        "count": len(kept),
        "skipped": len(problems),
        "report": str(report),
        "class_names": src.class_names,
        "resolution": resolution,
        "seconds": seconds,
        "images_per_s": n / seconds if seconds > 0 else float("inf"),
    }


def prepare_heldout(
    source: str, path: str | None, resolution: int, transform: str, out_h5: str | os.PathLike
) -> dict[str, Any]:
    """The source's held-out split as an images.h5 with the data set's transform (Fashion-MNIST: its 10k
    test images; other sources have no held-out split)."""
    from edm2lib.data.fashion_mnist import CLASS_NAMES, fashion_mnist_arrays

    if source != "fashion-mnist":
        raise ValueError(
            f"data.source {source!r} has no held-out split; the classifier detector and the floor "
            "(metrics.detectors: classifier, metrics.floor) need data.source fashion-mnist"
        )
    where, names, images, labels = fashion_mnist_arrays(path)
    test = [i for i, n in enumerate(names) if n.startswith("test/")]
    out = np.stack([transform_image(images[i], resolution, transform) for i in test])
    meta = {
        "format": IMAGES_FORMAT,
        "encoder": '{"kind": "pixels"}',
        "source": f"fashion-mnist:{where}",
        "split": "test",
        "transform": transform,
        "resolution": resolution,
        "count": len(out),
        "skipped": 0,
    }
    with atomic_path(out_h5) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("images", data=out, chunks=(1, *out.shape[1:]))
        f.create_dataset("labels", data=labels[test].astype(np.int64))
        f.create_dataset("class_names", data=np.asarray(CLASS_NAMES, dtype=object), dtype=h5py.string_dtype())
        f.attrs.update(meta)
    print(json.dumps(meta))
    return meta
