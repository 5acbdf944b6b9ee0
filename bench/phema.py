"""Post-hoc EMA reconstruction cost: bytes read, wall time vs one plain read, and peak RSS.

Writes synthetic fp16 EMA snapshots (default 16 times x 2 profiles of a 19.9M-parameter model, 1.3 GB)
into a temporary directory, reads every file twice and times the second (warm page cache) read, then
reconstructs a 31-point sigma_rel grid in a subprocess (the whole CLI run, imports included) that counts the
tensor bytes it reads and reports its peak RSS; finally times `cat` of the inputs to /dev/null (warm) and
writing as many files and bytes as the outputs hold once, the way the reconstruction writes (fsynced all at
once, in parallel, then renamed). The I/O floor is that cat plus that write.
The child also reports its CPU seconds (all threads): on a loaded machine the wall time mostly measures
the load, the CPU time what the reconstruction costs.
Run: `python bench/phema.py [--times 16] [--params-m 19.5] [--grid 31] [--threads 1]`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edm2lib import files


def write_snapshots(directory: Path, times: int, params_m: float, rows: int = 256) -> int:
    """fp16 snapshots of a synthetic model of ~params_m million parameters in [rows, 4096] matrices."""
    import torch  # only the parent writes snapshots; the timed child stays torch-free

    layers = max(1, round(params_m * 1e6 / (rows * 4096)))
    gen = torch.Generator().manual_seed(0)
    base = {f"block{i}.weight": torch.randn(rows, 4096, generator=gen).half() for i in range(layers)}
    base |= {f"block{i}.bias": torch.randn(rows, generator=gen).half() for i in range(layers)}
    base["freqs"] = torch.randn(256, generator=gen)  # a float buffer
    base["seen"] = torch.zeros((), dtype=torch.int64)
    n_params = sum(v.numel() for k, v in base.items() if k.startswith("block"))
    step = 8 << 20  # 8 Mi images between snapshots, as in the paper
    for k in range(1, times + 1):
        for j, sigma_rel in enumerate((0.05, 0.10)):
            sd = {n: (v + (k + j) * 1e-3 if n.startswith("block") else v) for n, v in base.items()}
            sd["seen"] = torch.tensor(k * step // 64)
            files.save_network(
                directory / f"snapshot-{k * step:012d}-{sigma_rel:.3f}.safetensors",
                sd,
                {"kind": "synthetic", "params": n_params},
                dtype=None,
                nimg=k * step,
                sigma_rel=sigma_rel,
                gamma=0.0,
                buffers=["freqs", "seen"],
            )
    return n_params


def read_all(paths: list[Path], chunk: int = 16 << 20) -> tuple[float, int]:
    """Seconds and bytes for one sequential read of every file."""
    start, total = time.perf_counter(), 0
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while block := f.read(chunk):
                total += len(block)
    return time.perf_counter() - start, total


def write_all(directory: Path, sizes: list[int], chunk: int = 16 << 20) -> float:
    """Seconds to write files of these sizes through `files.atomic_paths`, as the reconstruction writes its
    outputs (fsynced all at once, then renamed): the floor for writing the outputs once, durably."""
    block = os.urandom(chunk)
    paths = [directory / f"w{i}" for i in range(len(sizes))]
    start = time.perf_counter()
    with files.atomic_paths(paths) as tmps:
        for tmp, size in zip(tmps, sizes):
            with open(tmp, "wb") as f:
                for offset in range(0, size, chunk):
                    f.write(block[: min(chunk, size - offset)])
    seconds = time.perf_counter() - start
    for path in paths:
        path.unlink()
    return seconds


def cat_inputs(paths: list[Path]) -> float:
    """Seconds for `cat` of every input to /dev/null: the read floor as the shell sees it."""
    start = time.perf_counter()
    subprocess.run(["cat", *map(str, paths)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def child(snap_dir: str, out_dir: str, grid: int, start: float) -> None:
    """Reconstruct the grid, counting the tensor bytes read; print wall time (from process start, imports
    included), bytes read, peak RSS and whether torch got imported."""
    from edm2lib.phema import reconstruct as rec
    from edm2lib.phema.tensorfile import TensorFile

    read, real = [0], TensorFile.read

    def counting(self, name, first, out):
        read[0] += out.nbytes
        return real(self, name, first, out)

    TensorFile.read = counting
    sigmas = np.linspace(0.010, 0.250, grid).tolist()
    outs = rec.reconstruct(snap_dir, sigmas, out_dir=out_dir, progress=False)
    wall = time.time() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process, imports included
    errors = {
        f"{files.read_network_meta(p)['sigma_rel']:.3f}": files.read_network_meta(p)["profile_error"]
        for p in outs
    }
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # includes the parent's RSS at fork
    hwm = int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) * 1024  # this process only
    print(
        json.dumps(
            {
                "wall_s": wall,
                "cpu_s": usage.ru_utime + usage.ru_stime,
                "bytes_read": read[0],
                "peak_rss": hwm,
                "ru_maxrss": maxrss,
                "outputs": len(outs),
                "torch_imported": "torch" in sys.modules,
                "out_bytes": sum(p.stat().st_size for p in outs),
                "profile_error": errors,
            }
        )
    )


def baseline_rss() -> int:
    """Peak RSS of a subprocess that only imports edm2lib.phema.reconstruct (numpy, safetensors)."""
    code = (
        "import resource, edm2lib.phema.reconstruct; "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    return (
        int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
        * 1024
    )


def main() -> None:
    from common import write_result  # imports torch: kept out of the timed child

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--times", type=int, default=16, help="snapshot times (x 2 profiles: 0.05, 0.10)")
    parser.add_argument("--params-m", type=float, default=19.5, help="model size, millions of parameters")
    parser.add_argument("--grid", type=int, default=31, help="sigma_rel grid points in [0.010, 0.250]")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads for the reconstruction")
    parser.add_argument("--workdir", type=Path, default=None, help="where the temporary files go")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="bench-phema-") as tmp:
        snap_dir, out_dir = Path(tmp) / "snapshots", Path(tmp) / "phema"
        snap_dir.mkdir()
        t0 = time.perf_counter()
        n_params = write_snapshots(snap_dir, args.times, args.params_m)
        setup_s = time.perf_counter() - t0
        paths = sorted(snap_dir.iterdir())
        total = sum(p.stat().st_size for p in paths)
        read_all(paths)  # first read: page cache warm-up, not timed
        read_s, _ = read_all(paths)
        cmd = [
            sys.executable,
            __file__,
            "--child",
            str(snap_dir),
            str(out_dir),
            str(args.grid),
        ]
        env = {**os.environ, "OPENBLAS_NUM_THREADS": str(args.threads), "OMP_NUM_THREADS": str(args.threads)}
        proc = subprocess.run([*cmd, repr(time.time())], capture_output=True, text=True, check=True, env=env)
        res = json.loads(proc.stdout)
        cat_s = cat_inputs(paths)
        base = baseline_rss()
        out_sizes = [p.stat().st_size for p in out_dir.iterdir()]
        shutil.rmtree(out_dir)
        write_s = write_all(Path(tmp), out_sizes)

    row = {
        "snapshots": len(paths),
        "params": n_params,
        "snapshot_bytes": total,
        "grid": args.grid,
        "outputs": res["outputs"],
        "output_bytes": res["out_bytes"],
        "bytes_read_ratio": res["bytes_read"] / total,
        "read_once_s": read_s,
        "reconstruct_s": res["wall_s"],
        "reconstruct_cpu_s": res["cpu_s"],
        "time_ratio": res["wall_s"] / read_s,
        "write_once_s": write_s,
        "cat_inputs_s": cat_s,
        "io_floor_s": cat_s + write_s,
        "time_ratio_io_floor": res["wall_s"] / (cat_s + write_s),
        "torch_imported": res["torch_imported"],
        "peak_rss_gb": res["peak_rss"] / 1e9,
        "ru_maxrss_gb": res["ru_maxrss"] / 1e9,
        "baseline_rss_gb": base / 1e9,
        "setup_s": setup_s,
        "blas_threads": args.threads,
        "cpus": os.cpu_count(),
        "profile_error": res["profile_error"],
    }
    print(f"{'quantity':<40}{'value':>14}  target")
    print(f"{'snapshots x params':<40}{row['snapshots']:>6} x {n_params / 1e6:.1f}M")
    print(f"{'snapshot bytes (GB)':<40}{total / 1e9:>14.2f}")
    print(f"{'outputs (sigma_rel grid)':<40}{row['outputs']:>14d}")
    print(f"{'bytes read / snapshot bytes':<40}{row['bytes_read_ratio']:>14.3f}  <= 1.0")
    print(f"{'one warm read of all files (s)':<40}{read_s:>14.2f}")
    print(f"{'reconstruction wall, CLI start to end (s)':<40}{res['wall_s']:>14.2f}")
    print(f"{'  CPU seconds, all threads (user + sys)':<40}{res['cpu_s']:>14.2f}")
    print(f"{'  torch imported':<40}{res['torch_imported']!s:>14}")
    print(f"{'reconstruction / one read':<40}{row['time_ratio']:>14.2f}")
    print(f"{'cat inputs > /dev/null, warm (s)':<40}{cat_s:>14.2f}")
    print(f"{'write + fsync the outputs once (s)':<40}{write_s:>14.2f}")
    print(f"{'reconstruction / (cat + write once)':<40}{row['time_ratio_io_floor']:>14.2f}  <= 1.5")
    print(f"{'peak RSS, VmHWM (GB)':<40}{row['peak_rss_gb']:>14.3f}  < 1.5")
    print(f"{'  getrusage ru_maxrss (GB)':<40}{row['ru_maxrss_gb']:>14.3f}  (+ parent RSS at fork)")
    print(f"{'  of which imports alone (GB)':<40}{row['baseline_rss_gb']:>14.3f}")
    write_result(row, "phema")


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
    else:
        main()
