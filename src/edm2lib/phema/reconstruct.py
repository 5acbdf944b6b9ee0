"""Streaming post-hoc EMA reconstruction of a (time x sigma_rel) grid, reading each snapshot byte once.

Loop over tensor names; for each name read that tensor (in row chunks) from every snapshot that some target
uses, form all targets' values with one matrix product in fp32, and append them to every output file. The
outputs are streamed in the safetensors layout (the header is computable up front from shapes and dtypes),
as temporary files renamed only when all of them are complete. Three stages overlap: this thread reads the
chunks, a pool of workers converts and mixes them (numpy releases the GIL), a writer thread appends the
results in order. Peak memory is O(workers x (snapshots + targets) x chunk), independent of the model size.
numpy only: torch is imported solely for bf16 inputs (which numpy cannot hold), so the CLI starts in a
fraction of a second.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import json
import math
import os
import queue
import struct
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from edm2lib import files
from edm2lib.phema import half
from edm2lib.phema.profiles import posthoc_coefficients, profile_error, sigma_rel_to_gamma

_ITEMSIZE = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
_FLOATS = {"F64", "F32", "F16", "BF16"}
_OUT_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16"}  # output dtype -> safetensors name
CHUNK_NUMEL = 1 << 16  # elements per input per read
BLOCK = 4096  # columns converted and mixed at a time: the fp32 scratch then stays in the CPU cache
MAPPED_BYTES = 128 << 20  # reopen the inputs after reading this much: touched mapped pages count in RSS


def find_snapshots(directory: str | os.PathLike) -> list[Path]:
    """The `snapshot-*.safetensors` files of a directory, converted official `network-snapshot-*` ones
    included (temporary files are hidden and skipped)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: snapshot directory not found")
    found = directory.glob("*snapshot-*.safetensors")
    paths = sorted(p for p in found if files.is_snapshot_name(p.name))
    if not paths:
        raise FileNotFoundError(
            f"{directory}: no snapshot-*.safetensors files; train with EMA snapshots first "
            "(or convert official network-snapshot-*.pkl files with python -m edm2lib.official.convert)"
        )
    return paths


def _read_inputs(paths: Sequence[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """(path, metadata) of every snapshot, sorted by (nimg, sigma_rel), validated as EMA snapshots."""
    inputs = []
    for path in paths:
        meta = files.read_network_meta(path)
        if "nimg" not in meta or "sigma_rel" not in meta:
            raise ValueError(f"{path}: network file without nimg/sigma_rel metadata; not an EMA snapshot")
        inputs.append((path, meta))
    inputs.sort(key=lambda pm: (pm[1]["nimg"], pm[1]["sigma_rel"]))
    for (pa, ma), (pb, mb) in itertools.pairwise(inputs):
        if (ma["nimg"], ma["sigma_rel"]) == (mb["nimg"], mb["sigma_rel"]):
            raise ValueError(f"{pa} and {pb}: same (nimg, sigma_rel) = ({ma['nimg']}, {ma['sigma_rel']})")
        if ma["config"] != mb["config"]:
            raise ValueError(f"{pb}: network config differs from {pa}; snapshots of different networks")
    return inputs


def _layout(files: dict[Path, Any]) -> dict[str, tuple[str, list[int]]]:
    """Tensor name -> (safetensors dtype, shape), identical across all files, else an error naming both."""
    (first, f0), *rest = files.items()
    layout = {k: (f0.get_slice(k).get_dtype(), list(f0.get_slice(k).get_shape())) for k in f0.keys()}  # noqa: SIM118 (safe_open handle)
    unknown = {k: dt for k, (dt, _) in layout.items() if dt not in _ITEMSIZE}
    if unknown:
        raise ValueError(f"{first}: unsupported tensor dtypes {unknown}; expected one of {sorted(_ITEMSIZE)}")
    for path, f in rest:
        keys = set(f.keys())
        if keys != set(layout):
            raise ValueError(
                f"{path}: tensor keys differ from {first}: missing {sorted(set(layout) - keys)[:5]}, "
                f"extra {sorted(keys - set(layout))[:5]}"
            )
        for k, (dt, shape) in layout.items():
            got = (f.get_slice(k).get_dtype(), list(f.get_slice(k).get_shape()))
            if got != (dt, shape):
                raise ValueError(f"{path}: key {k} is {got[0]}{got[1]}, but {dt}{shape} in {first}")
    return dict(sorted(layout.items()))


def _header(layout: Iterable[tuple[str, str, list[int]]], meta: dict[str, Any]) -> tuple[bytes, int]:
    """safetensors header (u64 length + JSON padded to 8 bytes) for tensors stored in `layout` order."""
    entries: dict[str, Any] = {"__metadata__": {files.META_KEY: json.dumps(meta, sort_keys=True)}}
    offset = 0
    for name, dtype, shape in layout:
        nbytes = math.prod(shape) * _ITEMSIZE[dtype]
        entries[name] = {
            "dtype": dtype,
            "shape": shape,
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    raw = json.dumps(entries, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, offset


class _Inputs:
    """safe_open handles of the inputs, reopened every MAPPED_BYTES read so that the pages a memory map
    has touched are released instead of accumulating (as resident file pages) up to the snapshot size."""

    def __init__(self, paths: dict[int, Path], framework: str = "numpy") -> None:
        self.paths, self.files, self.since_open, self.framework = paths, {}, 0, framework
        self._open()

    def _open(self) -> None:
        self.close()
        self.files = {
            i: safe_open(str(p), framework=self.framework).__enter__() for i, p in self.paths.items()
        }
        self.since_open = 0

    def close(self) -> None:
        for f in self.files.values():
            f.__exit__(None, None, None)
        self.files = {}

    def account(self, nbytes: int) -> None:
        self.since_open += nbytes
        if self.since_open > MAPPED_BYTES:
            self._open()


def _numpy(value: Any, raw: bool = False) -> np.ndarray:
    """A read tensor as a flat numpy array: itself (numpy framework), or a torch bf16 one as fp32 values
    (`raw`: its bytes unchanged, for buffers copied as they are)."""
    if isinstance(value, np.ndarray):
        return value.reshape(-1)
    import torch  # only bf16 inputs are read through torch

    value = value.contiguous().reshape(-1)
    return value.view(torch.uint8).numpy() if raw else value.float().numpy()


class _Mixer:
    """coeffs^T @ [one chunk of a tensor from every input] in fp32, on a pool of worker threads.

    `mix` reads the chunk from every input on the calling thread and returns a Future of the [targets,
    numel] result. A worker gathers the chunk's inputs, then converts and mixes BLOCK columns at a time so
    that its fp32 scratch stays in the CPU cache; fp16 goes through `half`'s integer conversions. Scratch
    buffers are per worker and reused (fresh large allocations page-fault on every chunk and cost more than
    the arithmetic); results come from a fixed set of buffers, each handed back by `release` once
    written, which also bounds the chunks in flight.
    """

    def __init__(
        self, coeffs: np.ndarray, chunk_numel: int, dtype: np.dtype, workers: int, paths: list[Path]
    ) -> None:
        self.coeffs_t = np.ascontiguousarray(coeffs.T, dtype=np.float32)  # [targets, inputs]
        self.paths = paths  # the inputs, in coefficient order: named in errors
        self.dtype, self.chunk_numel = np.dtype(dtype), chunk_numel
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="phema-mix")
        self.local = threading.local()
        self.free: queue.Queue = queue.Queue()
        for _ in range(2 * workers + 2):  # computing, queued for the writer, being written
            self.free.put(None)  # allocated on first use, at the size needed

    def mix(self, files: list[Any], name: str, rows: slice | None) -> Future:
        """Future [targets, numel] values of tensor `name` (rows `rows`, None: all); reads each file once."""
        parts = [_numpy(f.get_tensor(name) if rows is None else f.get_slice(name)[rows]) for f in files]
        return self.pool.submit(self._combine, parts, self.free.get(), name)

    def release(self, result: np.ndarray) -> None:
        """Hand a written result's buffer back for a later chunk."""
        self.free.put(result.base if result.base is not None else result)

    def _combine(self, parts: list[np.ndarray], buffer: np.ndarray | None, name: str) -> np.ndarray:
        (k, s), n = self.coeffs_t.shape, parts[0].size
        if buffer is None or buffer.size < k * n:
            buffer = np.empty(k * max(n, self.chunk_numel), dtype=self.dtype)
        result = buffer[: k * n].reshape(k, n)
        fp16 = all(p.dtype == np.float16 for p in parts)
        gathered = self._buffer("fp16" if fp16 else "fp32", s, n, np.float16 if fp16 else np.float32)
        for i, part in enumerate(parts):
            np.copyto(gathered[i], part)  # reads the mapped file; converts (non-fp16 inputs) to fp32
        if fp16 and half.nonfinite(gathered, self._buffer("bits16", s, n, np.uint16)):
            bad = next(i for i, p in enumerate(parts) if not np.isfinite(p).all())
            raise ValueError(f"{self.paths[bad]}: tensor {name} holds inf or NaN; it cannot be averaged")
        for j in range(0, n, BLOCK):
            b = min(BLOCK, n - j)
            if fp16:
                x = half.to_float32(gathered[:, j : j + b], self._buffer("in", s, b, np.int32))
            else:
                x = gathered[:, j : j + b]
            y = self._buffer("out", k, b, np.float32)
            np.matmul(self.coeffs_t, x, out=y)  # EDM2 Sec. 3.2: theta_k = sum_i X_ik theta_i
            if self.dtype == np.float16:
                work = (
                    *(self._buffer(f"work{w}", k, b, np.int32) for w in range(3)),
                    self._buffer("low", k, b, bool),
                )
                half.to_float16(y, result[:, j : j + b], work)
            else:
                np.copyto(result[:, j : j + b], y, "same_kind")
        return result

    def _buffer(self, key: str, rows: int, cols: int, dtype: Any) -> np.ndarray:
        """This worker's reused [rows, cols] buffer `key`, sized for a chunk (a longer row regrows it)."""
        buffers = self.local.__dict__.setdefault("buffers", {})
        flat = buffers.get(key)
        if flat is None or flat.size < rows * cols:
            flat = buffers[key] = np.empty(rows * max(cols, self.chunk_numel), dtype)
        return flat[: rows * cols].reshape(rows, cols)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class _Writer:
    """Appends chunks to the output files on a background thread, in the order they were put, so disk
    writes overlap the reads and arithmetic of later chunks. `done(value)` runs after each write."""

    def __init__(self, done: Any = None) -> None:
        self.error: BaseException | None = None
        self.done = done or (lambda value: None)
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="phema-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            pairs, value = item
            try:
                if self.error is None:
                    for f, v in pairs:
                        f.write(np.ascontiguousarray(v).reshape(-1).view(np.uint8))
            except BaseException as e:  # re-raised on the caller's thread
                self.error = e
            finally:
                if value is not None:
                    self.done(value)

    def put(self, pairs: Iterable[tuple[Any, np.ndarray]], value: np.ndarray | None = None) -> None:
        """Queue (file, tensor) writes; `value` (if given) goes to `done` once they are written."""
        if self.error is not None:
            raise self.error
        self.queue.put((list(pairs), value))

    def close(self) -> None:
        """Finish the queued writes and stop the thread (idempotent); re-raise a write error."""
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        if self.error is not None:
            raise self.error


class _Plan:
    """Targets of the grid, the post-hoc weights and which inputs each target uses."""

    def __init__(self, inputs: list[tuple[Path, dict[str, Any]]], out_sigma_rel, out_nimg) -> None:
        in_t = np.array([m["nimg"] for _, m in inputs], dtype=np.float64)
        in_s = np.array([m["sigma_rel"] for _, m in inputs], dtype=np.float64)
        times = [int(in_t.max())] if out_nimg is None else [int(t) for t in np.atleast_1d(out_nimg)]
        self.targets = [(t, float(s)) for t in times for s in np.atleast_1d(out_sigma_rel)]
        self.names = [files.phema_name(t, s) for t, s in self.targets]
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"targets {self.targets} repeat a file name; list each (nimg, sigma_rel) once")
        out_t = np.array([t for t, _ in self.targets], dtype=np.float64)
        out_s = np.array([s for _, s in self.targets], dtype=np.float64)
        self.X = posthoc_coefficients(in_t, in_s, out_t, out_s)  # EDM2 Sec. 3.2: [inputs, outputs]
        self.errors = profile_error(in_t, in_s, out_t, out_s)
        self.gammas = np.atleast_1d(sigma_rel_to_gamma(out_s))
        self.used = (in_t[:, None] > 0) & (in_t[:, None] <= out_t[None, :])  # docs/phema.md: 0 < t_i <= t_out
        self.rows = np.flatnonzero(self.used.any(axis=1))  # inputs no target uses are never read
        self.last = [int(np.flatnonzero(self.used[:, k]).max()) for k in range(len(self.targets))]


def _open_outputs(stack, plan: _Plan, inputs, layout, buffers, dtype, out_dir) -> list[tuple[Any, int]]:
    """Temporary output files (all fsynced and renamed when `stack` closes without error), headers written."""
    meta0 = inputs[plan.rows[-1]][1]
    out_dtypes = {k: dt if k in buffers else dtype for k, (dt, _) in layout.items()}
    tmps = stack.enter_context(files.atomic_paths([Path(out_dir) / name for name in plan.names]))
    outs = []
    for k, ((t, s), tmp) in enumerate(zip(plan.targets, tmps)):
        meta = {
            "format": files.NETWORK_FORMAT,
            "config": meta0["config"],
            "nimg": t,
            "sigma_rel": s,
            "gamma": float(plan.gammas[k]),
            "profile_error": float(plan.errors[k]),
            "source": [inputs[i][0].name for i in np.flatnonzero(plan.used[:, k])],
            "buffers": sorted(buffers),
            **({"encoder": meta0["encoder"]} if "encoder" in meta0 else {}),
        }
        header, nbytes = _header(((n, out_dtypes[n], shape) for n, (_, shape) in layout.items()), meta)
        f = stack.enter_context(open(tmp, "wb"))  # noqa: SIM115 (closed by the stack)
        f.write(header)
        outs.append((f, len(header) + nbytes))
    return outs


def _row_spans(shape: list[int], chunk_numel: int) -> list[slice | None]:
    """Row ranges of at most ~chunk_numel elements (None: read the tensor whole)."""
    if not shape or math.prod(shape) <= chunk_numel:
        return [None]
    step = max(1, chunk_numel // max(math.prod(shape[1:]), 1))
    return [slice(a, min(a + step, shape[0])) for a in range(0, shape[0], step)]


def reconstruct(
    snapshot_paths: str | os.PathLike | Iterable[str | os.PathLike],
    out_sigma_rel: float | Sequence[float],
    out_nimg: int | Sequence[int] | None = None,
    *,
    out_dir: str | os.PathLike,
    dtype: Any = "float16",
    chunk_numel: int = CHUNK_NUMEL,
    progress: bool = True,
    workers: int | None = None,
) -> list[Path]:
    """Write `phema-{nimg:012d}-{sigma_rel:.3f}.safetensors` for every (time, sigma_rel) of the grid.

    `snapshot_paths`: snapshot files or a directory of them. `out_nimg`: one time or a list of times
    (default: the latest snapshot time); the grid is times x `out_sigma_rel`. Parameters are averaged
    (EDM2 Sec. 3.2), buffers (metadata `buffers`, else non-float tensors) come from the last input used.
    `dtype`: of the averaged parameters, "float16"/"float32"/"float64" (a numpy or torch dtype also works).
    `workers`: threads converting and mixing chunks (default: the CPU count, at most 4).
    """
    out_dtype = str(dtype).removeprefix("torch.")
    if out_dtype not in _OUT_DTYPES:
        raise ValueError(f"dtype {dtype!r}: reconstructions are written as one of {sorted(_OUT_DTYPES)}")
    if isinstance(snapshot_paths, str | os.PathLike):
        snapshot_paths = find_snapshots(snapshot_paths) if Path(snapshot_paths).is_dir() else [snapshot_paths]
    paths = [Path(p) for p in snapshot_paths]
    if not paths:
        raise ValueError("no snapshot files given")
    inputs = _read_inputs(paths)
    plan = _Plan(inputs, out_sigma_rel, out_nimg)
    with contextlib.ExitStack() as stack:
        handles = stack.enter_context(contextlib.closing(_Inputs({i: inputs[i][0] for i in plan.rows})))
        layout = _layout({inputs[i][0]: f for i, f in handles.files.items()})
        if any(dt == "BF16" for dt, _ in layout.values()):  # numpy has no bf16: read through torch
            handles.framework = "pt"
            handles._open()
        meta0 = inputs[plan.rows[-1]][1]
        if "buffers" in meta0:
            buffers = set(meta0["buffers"]) & set(layout)
        else:
            buffers = {k for k, (dt, _) in layout.items() if dt not in _FLOATS}
        outs = _open_outputs(stack, plan, inputs, layout, buffers, _OUT_DTYPES[out_dtype], out_dir)
        workers = workers or min(4, os.cpu_count() or 1)
        mixer = stack.enter_context(
            contextlib.closing(
                _Mixer(
                    plan.X[plan.rows], chunk_numel, np.dtype(out_dtype), workers, list(handles.paths.values())
                )
            )
        )
        writer = stack.enter_context(contextlib.closing(_Writer(mixer.release)))
        pending: collections.deque[Future] = collections.deque()  # mixed chunks, in file order

        def write_ready(keep: int) -> None:
            while len(pending) > keep:
                values = pending.popleft().result()
                writer.put(zip((f for f, _ in outs), values), values)

        tensors: Iterable = layout.items()
        if progress:
            from tqdm import tqdm

            tensors = tqdm(tensors, desc="reconstruct", unit="tensor", total=len(layout))
        for name, (dt, shape) in tensors:
            if name in buffers:  # copied from the last input each target uses; one read per input
                write_ready(0)  # the outputs are appended in layout order
                for i in sorted(set(plan.last)):
                    value = _numpy(handles.files[i].get_tensor(name), raw=True)
                    writer.put((outs[k][0], value) for k, j in enumerate(plan.last) if j == i)
                    handles.account(value.nbytes)
                continue
            for span in _row_spans(shape, chunk_numel):
                pending.append(mixer.mix(list(handles.files.values()), name, span))
                numel = math.prod(shape) if span is None else (span.stop - span.start) * math.prod(shape[1:])
                handles.account(numel * _ITEMSIZE[dt] * len(handles.files))
                write_ready(workers)
        write_ready(0)
        writer.close()
        for (f, size), name in zip(outs, plan.names):
            if f.tell() != size:
                raise RuntimeError(f"{name}: wrote {f.tell()} bytes, the header promises {size}")
            f.close()  # leaving the stack then fsyncs every output at once and renames them
    return [Path(out_dir) / name for name in plan.names]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m edm2lib.phema.reconstruct",
        description="Post-hoc EMA: reconstruct a (time x sigma_rel) grid from EMA snapshots in one read.",
    )
    parser.add_argument("snapshot_dir", type=Path, help="directory of snapshot-*.safetensors files")
    parser.add_argument("out_dir", type=Path, help="where phema-<nimg>-<sigma_rel>.safetensors files go")
    parser.add_argument("--sigma-rel", type=float, nargs="+", required=True, help="target EMA lengths")
    parser.add_argument(
        "--nimg", type=int, nargs="+", help="target training times (default: latest snapshot)"
    )
    parser.add_argument("--dtype", choices=["float16", "float32"], default="float16", help="output precision")
    parser.add_argument("--plot", type=Path, help="also write a PNG of target vs reconstructed profiles")
    args = parser.parse_args(argv)
    paths = find_snapshots(args.snapshot_dir)
    outs = reconstruct(paths, args.sigma_rel, args.nimg, out_dir=args.out_dir, dtype=args.dtype)
    for path in outs:
        meta = files.read_network_meta(path)
        print(f"{path}  profile_error={meta['profile_error']:.2e}")
    if args.plot:
        from edm2lib.phema.plot import plot_profiles

        metas = [files.read_network_meta(p) for p in paths]
        targets = [files.read_network_meta(p) for p in outs]
        plot_profiles(
            [m["nimg"] for m in metas],
            [m["sigma_rel"] for m in metas],
            [m["nimg"] for m in targets],
            [m["sigma_rel"] for m in targets],
            args.plot,
        )


if __name__ == "__main__":
    main()
