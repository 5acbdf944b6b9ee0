"""Streaming post-hoc EMA reconstruction of a (time x sigma_rel) grid, reading each snapshot byte once.

Loop over tensor names; for each name read that tensor (in chunks of elements) from every snapshot that some
target uses, form all targets' values with one matrix product in fp32, and append them to every output
file. The outputs are streamed in the safetensors layout (the header is computable up front from shapes and
dtypes), as temporary files renamed only when all of them are complete. Two stages overlap: a pool of
workers reads, converts and mixes chunks (positional reads and numpy release the GIL), a writer thread
appends the results in order. Peak memory is O(workers x (snapshots + targets) x chunk), independent of
the model size. numpy only (bf16 is widened by integer operations), so the CLI starts in a fraction of a
second.
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
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from edm2lib import files
from edm2lib.phema import half, tensorfile
from edm2lib.phema.profiles import posthoc_coefficients, profile_error, sigma_rel_to_gamma
from edm2lib.phema.tensorfile import TensorFile

_OUT_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16"}  # output dtype -> safetensors name
CHUNK_NUMEL = 1 << 16  # elements per input per read
BLOCK = 8192  # columns converted and mixed at a time: the fp32 scratch then stays in the CPU caches


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


def _layout(inputs: Sequence[TensorFile]) -> dict[str, tuple[str, list[int]]]:
    """Tensor name -> (safetensors dtype, shape), identical across all files, else an error naming both."""
    first, *rest = inputs
    for f in rest:
        if set(f.tensors) != set(first.tensors):
            raise ValueError(
                f"{f.path}: tensor keys differ from {first.path}: "
                f"missing {sorted(set(first.tensors) - set(f.tensors))[:5]}, "
                f"extra {sorted(set(f.tensors) - set(first.tensors))[:5]}"
            )
        for k, (dt, shape) in first.tensors.items():
            got = f.tensors[k]
            if got != (dt, shape):
                raise ValueError(f"{f.path}: key {k} is {got[0]}{got[1]}, but {dt}{shape} in {first.path}")
    return dict(sorted(first.tensors.items()))


class _Mixer:
    """coeffs^T @ [one chunk of a tensor from every input] in fp32, on a pool of worker threads.

    `mix` returns a Future of the [targets, count] result. A worker reads the chunk from every input
    straight into its scratch, then widens and mixes BLOCK columns at a time so that its fp32 scratch stays
    in the CPU cache; fp16 and bf16 go through `half`'s integer conversions. Scratch buffers are per worker
    and reused (fresh large allocations page-fault on every chunk and cost more than the arithmetic);
    results come from a fixed set of buffers, each handed back by `release` once written, which also
    bounds the chunks in flight.
    """

    def __init__(
        self, coeffs: np.ndarray, inputs: list[TensorFile], chunk_numel: int, dtype: np.dtype, workers: int
    ) -> None:
        self.coeffs_t = np.ascontiguousarray(coeffs.T, dtype=np.float32)  # [targets, inputs]
        self.inputs = inputs  # in coefficient order
        self.dtype, self.chunk_numel = np.dtype(dtype), chunk_numel
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="phema-mix")
        self.local = threading.local()
        self.free: queue.Queue = queue.Queue()
        for _ in range(2 * workers + 2):  # computing, queued for the writer, being written
            self.free.put(None)  # allocated on first use, at the size needed

    def mix(self, name: str, first: int, count: int) -> Future:
        """Future [targets, count] values of elements [first, first + count) of tensor `name`."""
        return self.pool.submit(self._combine, name, first, count, self.free.get())

    def release(self, result: np.ndarray) -> None:
        """Hand a written result's buffer back for a later chunk."""
        self.free.put(result.base if result.base is not None else result)

    def _combine(self, name: str, first: int, n: int, buffer: np.ndarray | None) -> np.ndarray:
        (k, s), dt = self.coeffs_t.shape, self.inputs[0].tensors[name][0]
        if buffer is None or buffer.size < k * n:
            buffer = np.empty(k * max(n, self.chunk_numel), dtype=self.dtype)
        result = buffer[: k * n].reshape(k, n)
        raw = self._buffer(f"raw-{dt}", s, n, tensorfile.RAW[dt])
        for i, f in enumerate(self.inputs):
            f.read(name, first, raw[i])
        self._check_finite(raw, dt, name)
        for j in range(0, n, BLOCK):
            b = min(BLOCK, n - j)
            x = self._widen(raw[:, j : j + b], dt)
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

    def _widen(self, raw: np.ndarray, dt: str) -> np.ndarray:
        """A [inputs, columns] block of raw input elements as fp32 (exactly: every source value fits)."""
        if dt == "F32":
            return raw
        if dt == "F64":
            x = self._buffer("in", *raw.shape, np.float32)
            np.copyto(x, raw, "same_kind")
            return x
        widen = half.to_float32 if dt == "F16" else half.bfloat16_to_float32
        return widen(raw, self._buffer("in", *raw.shape, np.int32))

    def _check_finite(self, raw: np.ndarray, dt: str, name: str) -> None:
        """Refuse a chunk holding inf or NaN, naming the first input that holds one."""
        if dt in ("F16", "BF16"):
            exponent = half.EXPONENT_BITS[dt]
            work = self._buffer("bits16", *raw.shape, np.uint16)
            if not half.nonfinite(raw, work, exponent):
                return
            bad = next(i for i in range(len(raw)) if half.nonfinite(raw[i], work[i], exponent))
        elif np.isfinite(raw).all():
            return
        else:
            bad = next(i for i in range(len(raw)) if not np.isfinite(raw[i]).all())
        raise ValueError(f"{self.inputs[bad].path}: tensor {name} holds inf or NaN; it cannot be averaged")

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
        header, nbytes = tensorfile.header(
            ((n, out_dtypes[n], shape) for n, (_, shape) in layout.items()),
            {files.META_KEY: json.dumps(meta, sort_keys=True)},
        )
        f = stack.enter_context(open(tmp, "wb"))  # noqa: SIM115 (closed by the stack)
        f.write(header)
        outs.append((f, len(header) + nbytes))
    return outs


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
    (EDM2 Sec. 3.2); buffers (metadata `buffers`, and every non-float tensor) come from the last input used.
    `dtype`: of the averaged parameters, "float16"/"float32"/"float64" (a numpy or torch dtype also works).
    `workers`: threads reading, converting and mixing chunks (default: the CPU count, at most 4).
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
        opened = {}  # input index -> its open file, for the inputs some target uses
        stack.callback(lambda: [f.close() for f in opened.values()])
        for i in plan.rows:
            opened[int(i)] = TensorFile(inputs[i][0])
        layout = _layout(list(opened.values()))
        meta0 = inputs[plan.rows[-1]][1]
        buffers = {k for k, (dt, _) in layout.items() if dt not in tensorfile.FLOATS}
        buffers |= set(meta0.get("buffers", [])) & set(layout)
        outs = _open_outputs(stack, plan, inputs, layout, buffers, _OUT_DTYPES[out_dtype], out_dir)
        workers = workers or min(4, os.cpu_count() or 1)
        mixer = _Mixer(plan.X[plan.rows], list(opened.values()), chunk_numel, np.dtype(out_dtype), workers)
        stack.enter_context(contextlib.closing(mixer))
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
            numel = math.prod(shape)
            if name in buffers:  # copied from the last input each target uses; one read per input
                write_ready(0)  # the outputs are appended in layout order
                for i in sorted(set(plan.last)):
                    value = opened[i].read(name, 0, np.empty(numel * tensorfile.ITEMSIZE[dt], np.uint8))
                    writer.put((outs[k][0], value) for k, j in enumerate(plan.last) if j == i)
                continue
            for first in range(0, numel, chunk_numel):
                pending.append(mixer.mix(name, first, min(chunk_numel, numel - first)))
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
