"""Pipeline steps between config and engines: data preparation, training config, trained marker, phema.

Each function is what one workflow script calls; `run_step` gives all of them the same error contract.
Command line (used by the training rule after the ranks exit):
`python -m edm2lib.pipeline.steps trained CFG OUT`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from edm2lib.files import atomic_write_text, read_network_meta


def run_step(log_path: str | Path, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Run one pipeline step with its output in `log_path`; a ValueError/FileNotFoundError/KeyError from the
    library ends the process with that one line on stderr (so Snakemake shows it) and exit code 1."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        logging.basicConfig(
            stream=log, level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True
        )
        try:
            return fn(*args, **kwargs)
        except (ValueError, FileNotFoundError, KeyError) as error:
            failure = f"error: {type(error).__name__}: {error}".replace("\n", " ")
            print(failure, file=log)
    print(failure, file=sys.stderr)
    raise SystemExit(1)


def default_device() -> str:
    """`cuda` when a GPU is visible, else `cpu` (every engine falls back to CPU with the same results)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


DEBIAN_PACKAGE = "dataset-fashion-mnist"  # installs the IDX files under /usr/share/datasets/fashion-mnist


def install_fashion_mnist() -> bool:
    """As root on Debian/Ubuntu without the files: `apt-get install dataset-fashion-mnist`; True if it ran.

    Anywhere else (or if apt fails) `edm2lib.data` downloads the files and checks their sha256 instead.
    """
    import os
    import shutil
    import subprocess

    from edm2lib.data.fashion_mnist import DEBIAN_DIR, FILES

    if all((DEBIAN_DIR / n).is_file() for n in FILES) or os.geteuid() != 0 or not shutil.which("apt-get"):
        return False
    print(f"installing Debian's {DEBIAN_PACKAGE} (running as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", DEBIAN_PACKAGE]):
        if subprocess.run(cmd, env=env, stdout=sys.stdout, stderr=sys.stdout, check=False).returncode != 0:
            print(f"{' '.join(cmd)} failed; falling back to the checksummed download")
            return False
    return True


def prepare(data: Mapping[str, Any], out_h5: str | Path, workers: int) -> dict[str, Any]:
    """images.h5 from the `data` config section (Fashion-MNIST installed from Debian where possible)."""
    from edm2lib.data import prepare_dataset
    from edm2lib.pipeline.config import data_source

    if data["source"] == "fashion-mnist" and not data.get("path"):
        install_fashion_mnist()
    return prepare_dataset(
        data_source(data),
        out_h5,
        resolution=data["resolution"],
        transform=data["transform"],
        labels=data["labels"],
        max_images=data["max_images"],
        workers=workers,
        progress=False,
    )


# pipeline run keys that are not TrainConfig keys, or are named differently there
_RENAMED = {"ema_sigma_rel": "sigma_rels"}
_PIPELINE_ONLY = {"conditional", "guidance"}


def training_config(run: Mapping[str, Any], data: str, run_dir: str) -> dict[str, Any]:
    """The `edm2lib.training` config of one `runs.<name>` entry (None values keep the preset's)."""
    values: dict[str, Any] = {"data": str(data), "run_dir": str(run_dir)}
    for key, value in run.items():
        if key in _PIPELINE_ONLY or value is None:
            continue
        values[_RENAMED.get(key, key)] = value
    if not run.get("conditional", True):
        values["network"] = {**values.get("network", {}), "label_dim": 0}  # unconditional (CFG guide)
    return values


def write_training_config(run: Mapping[str, Any], data: str, out_yaml: str | Path) -> dict[str, Any]:
    """Write runs/<run>/training.yaml (run_dir = its folder), validated by `TrainConfig` first."""
    from edm2lib.training.config import TrainConfig

    out_yaml = Path(out_yaml)
    values = training_config(run, data, str(out_yaml.parent))
    TrainConfig.from_dict(values)  # a bad key or value fails here, before any compute
    atomic_write_text(out_yaml, yaml.safe_dump(values, sort_keys=False))
    return values


def write_trained(config_yaml: str | Path, out_json: str | Path) -> dict[str, Any]:
    """After training exited 0: check that the final snapshots exist and list every snapshot in `out_json`."""
    from edm2lib.phema.ema import snapshot_name
    from edm2lib.phema.reconstruct import find_snapshots
    from edm2lib.training.config import TrainConfig

    cfg = TrainConfig.load(config_yaml)
    snapshots = find_snapshots(Path(cfg.run_dir) / "snapshots")
    final = [Path(cfg.run_dir) / "snapshots" / snapshot_name(cfg.duration, s) for s in cfg.sigma_rels]
    missing = [str(p) for p in final if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"training of {cfg.run_dir} ended without its final snapshots {missing}")
    record = {"run_dir": cfg.run_dir, "duration": cfg.duration, "snapshots": [str(p) for p in snapshots]}
    atomic_write_text(out_json, json.dumps(record, indent=1) + "\n")
    return record


def _targets_by_time(targets: Sequence[Sequence[float]]) -> dict[int, list[float]]:
    by_time: dict[int, list[float]] = {}
    for nimg, sigma_rel in targets:
        by_time.setdefault(int(nimg), []).append(float(sigma_rel))
    return by_time


def reconstruct_run(
    trained_json: str | Path, targets: Sequence[Sequence[float]], out_dir: str | Path
) -> list[Path]:
    """Post-hoc EMA reconstructions (nimg, sigma_rel) of a trained run into `out_dir`, one pass per time."""
    from edm2lib.phema.reconstruct import reconstruct

    snapshots = json.loads(Path(trained_json).read_text())["snapshots"]
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    outputs = []
    for nimg, sigma_rels in sorted(_targets_by_time(targets).items()):
        outputs += reconstruct(snapshots, sigma_rels, nimg, out_dir=out_dir, progress=False)
    for path in outputs:
        print(f"{path}: profile error {read_network_meta(path)['profile_error']:.2e}")
    return outputs


def plot_run_profiles(
    trained_json: str | Path, targets: Sequence[Sequence[float]], out_png: str | Path
) -> None:
    """PNG of a run's target EMA profiles and their reconstructions from its snapshots."""
    from edm2lib.phema.plot import plot_profiles

    metas = [read_network_meta(p) for p in json.loads(Path(trained_json).read_text())["snapshots"]]
    nimg, sigma_rel = zip(*targets)
    plot_profiles([m["nimg"] for m in metas], [m["sigma_rel"] for m in metas], nimg, sigma_rel, out_png)


# --- official releases (docs/official.md): released files -> the layouts training + reconstruction write ---


def _fetch(official: Mapping[str, Any], url: str) -> Path:
    from edm2lib.official.download import fetch

    dest = Path(official["download_dir"]) / url.rsplit("/", 1)[1]
    return fetch(
        url, dest, local_dir=official.get("local_dir"), download=official["download"], progress=False
    )


def official_posthoc(
    run: Mapping[str, Any],
    targets: Sequence[Sequence[float]],
    official: Mapping[str, Any],
    out_dir: str | Path,
    out_json: str | Path,
) -> list[Path]:
    """Fetch the released post-hoc reconstructions (nimg, sigma_rel) of `run` and convert each into
    `out_dir`/phema-<nimg>-<sigma_rel>.safetensors; `out_json` lists them (the run's `trained` marker)."""
    from edm2lib.official import releases
    from edm2lib.official.convert import convert
    from edm2lib.pipeline.config import phema_name

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    outputs, sources = [], []
    for nimg, sigma_rel in targets:
        url = releases.posthoc_url(run["model"], int(nimg), float(sigma_rel), official["base_url"])
        pkl = _fetch(official, url)
        outputs.append(convert(pkl, out_dir, phema_name(int(nimg), float(sigma_rel))))
        sources.append(url)
        print(f"{url} -> {outputs[-1]}")
    record = {
        "source": "official",
        "model": run["model"],
        "files": sources,
        "phema": [str(p) for p in outputs],
    }
    atomic_write_text(out_json, json.dumps(record, indent=1) + "\n")
    return outputs


def official_raw(
    run: Mapping[str, Any], official: Mapping[str, Any], snapshots_dir: str | Path, out_json: str | Path
) -> dict[str, Any]:
    """Fetch a released run's raw EMA snapshots up to `run.duration` (every `run.snapshot_nimg`), convert
    them into `snapshots_dir` under edm2lib's snapshot names, and write the `trained` marker listing them."""
    from edm2lib.official import releases
    from edm2lib.official.convert import convert
    from edm2lib.phema.ema import snapshot_name

    snapshots = []
    for nimg in releases.raw_times(run["model"], run["duration"], run["snapshot_nimg"]):
        for std in run["ema_sigma_rel"]:
            out = Path(snapshots_dir) / snapshot_name(nimg, std)
            if not out.is_file():  # converted on an earlier (interrupted) run; each write is atomic
                pkl = _fetch(official, releases.raw_url(run["model"], nimg, std, official["base_url"]))
                convert(pkl, snapshots_dir, out.name)
            snapshots.append(str(out))
    record = {"run_dir": str(Path(snapshots_dir).parent), "duration": run["duration"], "snapshots": snapshots}
    atomic_write_text(out_json, json.dumps(record, indent=1) + "\n")
    return record


def official_refs(
    data: Mapping[str, Any], metrics: Mapping[str, Any], official: Mapping[str, Any], out: Mapping[str, str]
) -> dict[str, Any]:
    """NVIDIA's published reference statistics -> data/<name>/ref-<detector>.npz, stamped with the identity
    of the detectors `metrics` configures (the ones that score against them)."""
    from edm2lib.official import releases
    from edm2lib.official.refstats import import_dataset_refs
    from edm2lib.pipeline.table import load_detectors

    pkl = _fetch(official, releases.refs_url(data.get("refs") or data["name"], official["base_url"]))
    dets = {d.name: d for d in load_detectors(metrics, list(out))}
    metas = import_dataset_refs(
        pkl,
        out,
        {n: d.identity for n, d in dets.items()},
        {n: d.dim for n, d in dets.items()},
        data["resolution"],
    )
    print(json.dumps(metas, default=str))
    return metas


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 3 or argv[0] != "trained":
        print("usage: python -m edm2lib.pipeline.steps trained TRAINING_YAML OUT_JSON", file=sys.stderr)
        return 2
    try:
        write_trained(argv[1], argv[2])
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
