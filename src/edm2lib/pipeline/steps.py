"""One function per Snakemake rule (`workflow/scripts/<rule>.py` calls `steps.<rule>`): config to engines.

`run_step` gives all of them the same error contract. Command line (after training by hand):
`python -m edm2lib.pipeline.steps trained CFG OUT`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from edm2lib import files
from edm2lib.files import atomic_write_text, read_network_meta
from edm2lib.pipeline.config import training_config


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
    from edm2lib import distributed

    return distributed.resolve_device("auto").type


def prepare(data: Mapping[str, Any], out_h5: str | Path, workers: int) -> dict[str, Any]:
    """images.h5 from the `data` config section (Fashion-MNIST: Debian's files, else a checked download)."""
    from edm2lib.data import prepare_dataset
    from edm2lib.pipeline.config import data_source

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


def encode(images_h5: str, latents_h5: str, vae: str, revision: str | None, batch: int) -> dict[str, Any]:
    """images.h5 -> latents.h5 with the SD VAE (`batch`: images per VAE call, a performance knob)."""
    from edm2lib.data import encode_dataset

    return encode_dataset(
        images_h5, latents_h5, vae=vae, revision=revision, batch_size=batch, device=default_device(),
        progress=False,
    )  # fmt: skip


def _metrics(settings: Mapping[str, Any], batch: int, download: bool) -> dict[str, Any]:
    """The `metrics` mapping the engines read: detector settings plus the performance/runtime keys."""
    return {**settings, "batch": batch, "download": download}


def refstats(
    images_h5: str, detector: str, settings: Mapping[str, Any], batch: int, download: bool, out_npz: str
) -> dict:
    """Reference feature statistics of the real images for one detector."""
    from edm2lib.pipeline.table import reference_stats

    return reference_stats(images_h5, detector, _metrics(settings, batch, download), out_npz)


def sample(
    net: str,
    guide: str | None,
    guidance: Mapping[str, Any],
    seeds: Sequence[int],
    num_steps: int,
    batch: int,
    out_h5: str,
    grid_png: str,
) -> dict[str, Any]:
    """One seed block of one point -> samples HDF5 + PNG grid (`batch` only changes speed)."""
    from edm2lib.sampling.generate import generate

    return generate(
        net, range(*seeds), out_h5=out_h5, gnet_path=guide, guidance=guidance["w"],
        guidance_interval=guidance.get("interval"), num_steps=num_steps, batch_size=batch,
        device=default_device(), grid_png=grid_png, progress=False,
    )  # fmt: skip


def score(
    samples_h5: str,
    refs: Mapping[str, str],
    settings: Mapping[str, Any],
    batch: int,
    download: bool,
    point: Mapping[str, Any],
    out_json: str,
) -> dict[str, Any]:
    """One seed block of samples -> metrics JSON (FID / FD-DINOv2 and the detectors' identities)."""
    from edm2lib.pipeline.table import score_point

    return score_point(samples_h5, refs, _metrics(settings, batch, download), point, out_json)


def table(
    metric_paths: Sequence[str], out_csv: str, out_png: str, floor_paths: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """Every metrics JSON (+ the floor's) -> results/fid_table.csv + results/fid_vs_sigma_rel.png."""
    from edm2lib.pipeline.table import write_results

    return write_results(list(metric_paths), out_csv, out_png, list(floor_paths))


def train_config(run: Mapping[str, Any], data: str, out_yaml: str | Path) -> dict[str, Any]:
    """Write runs/<run>/training.yaml (run_dir = its folder), validated by `TrainConfig` first."""
    from edm2lib.training.config import TrainConfig

    out_yaml = Path(out_yaml)
    values = training_config(run, data, str(out_yaml.parent))
    TrainConfig.from_dict(values)  # a bad key or value fails here, before any compute
    atomic_write_text(out_yaml, yaml.safe_dump(values, sort_keys=False))
    return values


def training_identity(run: Mapping[str, Any], data: str, run_dir: str) -> str:
    """The identity hash (`TrainConfig.identity_hash`) of one `runs.<name>` entry."""
    from edm2lib.training.config import TrainConfig

    return TrainConfig.from_dict(training_config(run, data, run_dir)).identity_hash()


def request_fresh(run_dir: str | Path, identity: str) -> None:
    """Mark the train job of `run_dir` as forced (Snakefile `onstart`): a stale run's state is set aside."""
    atomic_write_text(Path(run_dir) / files.RUN_FRESH, json.dumps({"identity": identity}) + "\n")


def clear_fresh_request(run_dir: str | Path) -> None:
    """Drop a request left by an earlier invocation (`onstart` of one that does not force the job)."""
    (Path(run_dir) / files.RUN_FRESH).unlink(missing_ok=True)


def _checkpoint_config(run_dir: Path) -> dict[str, Any] | None:
    """The training config stored in the newest checkpoint of `run_dir` (its state.json), or None."""
    from edm2lib.training import checkpoint

    for _, path in reversed(checkpoint.list_checkpoints(run_dir)):
        with contextlib.suppress(OSError, ValueError, KeyError):
            return json.loads((path / files.CHECKPOINT_STATE).read_text())["config"]
    return None


def set_aside(run_dir: str | Path, identity: str) -> Path | None:
    """Move the training state of `run_dir` (checkpoints, snapshots, logs) of training identity `identity`
    into a new runs/<run>/stale-<identity>/ folder, one rename per entry: nothing is deleted. None if the
    run has no state."""
    run_dir = Path(run_dir)
    entries = [run_dir / name for name in files.RUN_STATE if (run_dir / name).exists()]
    if not entries:
        return None
    base = dest = run_dir / files.RUN_STALE.format(identity=identity)
    n = 1
    while dest.exists():  # the same identity set aside before
        n += 1
        dest = base.with_name(f"{base.name}-{n}")
    dest.mkdir()
    for entry in entries:
        entry.rename(dest / entry.name)
    files.fsync_dir(run_dir)
    return dest


def identity_change(config_yaml: str | Path) -> tuple[str, list[str]] | None:
    """(old identity hash, `key: old -> new` lines) when the newest checkpoint of the run has another
    training identity than `config_yaml`; None when it has the same one or there is none."""
    from edm2lib.training.config import TrainConfig, identity_changes, identity_hash, identity_of

    cfg = TrainConfig.load(config_yaml)
    saved = _checkpoint_config(Path(cfg.run_dir))
    changes = [] if saved is None else identity_changes(identity_of(saved), cfg.identity())
    return (identity_hash(identity_of(saved)), changes) if changes else None


def stale_message(run_dir: str | Path, out_json: str, old: str, changes: Sequence[str]) -> str:
    """One line: the run has another identity, what changed, and the ways out."""
    return (
        f"{run_dir}: trained with another identity (changed: {'; '.join(changes)}); to train it afresh "
        f"rerun with `--forcerun {out_json}` (its checkpoints and snapshots move to "
        f"{Path(run_dir) / files.RUN_STALE.format(identity=old)}/), or give the run a new name, or restore "
        "the original values"
    )


def _fail(failed: Path, message: str, exit_code: int) -> ValueError:
    atomic_write_text(failed, json.dumps({"error": message, "exit_code": exit_code}) + "\n")
    return ValueError(message)


def train(config_yaml: str, out_json: str, identity: str, attempt: int, launch: str = "") -> dict[str, Any]:
    """Run the training ranks (`launch`, e.g. `srun -n 8`, + `python -m edm2lib.training`), then write
    trained.json. The job resumes from the run's checkpoints; if they have another training identity it
    stops at once naming the changed keys, unless the job was forced (runs/<run>/fresh.json of this
    identity): then it sets the old state aside (`set_aside`) and trains afresh.
    Exit 75 (preemption) or a signal: exit 75, for Snakemake's `retries` to resume. Any other failure is
    deterministic: its message is kept in runs/<run>/failed.json, and a retry (attempt > 1) repeats it at
    once instead of training again."""
    run_dir = Path(config_yaml).parent
    failed = run_dir / files.RUN_FAILED
    if attempt > 1 and failed.is_file():
        message = json.loads(failed.read_text())["error"]
        raise ValueError(f"not retried (a deterministic failure; retries are for preemption): {message}")
    failed.unlink(missing_ok=True)
    fresh = run_dir / files.RUN_FRESH
    forced = fresh.is_file() and json.loads(fresh.read_text()).get("identity") == identity
    try:
        stale = identity_change(config_yaml)
    except ValueError as error:
        raise _fail(failed, str(error), 1) from None
    if stale is not None and not forced:
        raise _fail(failed, stale_message(run_dir, out_json, *stale), 1)
    if stale is not None:
        print(
            f"forced train job: training afresh; the earlier state is in {set_aside(run_dir, stale[0])}",
            flush=True,
        )
    fresh.unlink(missing_ok=True)  # consumed: a retry or requeue of this job resumes what it trained
    launch = launch if os.environ.get("SLURM_JOB_ID") else ""  # srun only inside a SLURM job
    cmd = [*shlex.split(launch), sys.executable, "-m", "edm2lib.training", "--config", str(config_yaml)]
    sys.stdout.flush()
    proc = subprocess.run(cmd, stdout=sys.stdout, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    print(proc.stderr, end="", flush=True)
    if proc.returncode == 75 or proc.returncode < 0 or proc.returncode > 128:
        print(f"training stopped with exit status {proc.returncode} (preemption or signal): retry resumes")
        raise SystemExit(75)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        message = (
            lines[-1].removeprefix("error: ") if lines else f"training exited with status {proc.returncode}"
        )
        raise _fail(failed, message, proc.returncode)
    return write_trained(config_yaml, out_json, identity)


def write_trained(
    config_yaml: str | Path, out_json: str | Path, identity: str | None = None
) -> dict[str, Any]:
    """After training exited 0: check the final snapshots and list in `out_json` every snapshot of this
    training identity (snapshots of another identity are never handed to the reconstruction)."""
    from edm2lib.phema.reconstruct import find_snapshots
    from edm2lib.training.config import TrainConfig

    cfg = TrainConfig.load(config_yaml)
    if identity is not None and identity != cfg.identity_hash():
        raise ValueError(
            f"{config_yaml}: identity {cfg.identity_hash()} is not the workflow's {identity}; "
            f"rerun the train_config rule"
        )
    snapshot_dir = Path(cfg.run_dir) / "snapshots"
    if cfg.ema == "traditional":  # CONFIG A: one EMA, no reconstruction inputs (docs/ablation.md)
        found = sorted(snapshot_dir.glob(files.TRADITIONAL_SNAPSHOT_GLOB))
        final = [snapshot_dir / files.traditional_snapshot_name(cfg.duration)]
    else:
        found = find_snapshots(snapshot_dir)
        final = [snapshot_dir / files.snapshot_name(cfg.duration, s) for s in cfg.sigma_rels]
    metas = {p: read_network_meta(p) for p in found}
    mine = cfg.identity_hash()
    snapshots = [p for p, m in metas.items() if m.get("identity") == mine and m["nimg"] <= cfg.duration]
    missing = [str(p) for p in final if p not in snapshots]
    if missing:
        raise FileNotFoundError(
            f"training of {cfg.run_dir} ended without its final snapshots of identity {cfg.identity_hash()}: "
            f"{missing}"
        )
    record = {
        "run_dir": cfg.run_dir,
        "duration": cfg.duration,
        "identity": cfg.identity_hash(),
        "ema": cfg.ema,
        "snapshots": [str(p) for p in snapshots],
    }
    atomic_write_text(out_json, json.dumps(record, indent=1) + "\n")
    return record


def _targets_by_time(targets: Sequence[Sequence[float]]) -> dict[int, list[float]]:
    by_time: dict[int, list[float]] = {}
    for nimg, sigma_rel in targets:
        by_time.setdefault(int(nimg), []).append(float(sigma_rel))
    return by_time


def phema(trained_json: str | Path, targets: Sequence[Sequence[float]], out_dir: str | Path) -> list[Path]:
    """Post-hoc EMA reconstructions (nimg, sigma_rel) of a trained run into `out_dir`, one pass per time."""
    from edm2lib.phema.reconstruct import reconstruct

    record = json.loads(Path(trained_json).read_text())
    snapshots = record["snapshots"]
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    if record.get("ema") == "traditional":
        return _traditional_phema(snapshots, targets, out_dir)
    outputs = []
    for nimg, sigma_rels in sorted(_targets_by_time(targets).items()):
        outputs += reconstruct(snapshots, sigma_rels, nimg, out_dir=out_dir, progress=False)
    for path in outputs:
        print(f"{path}: profile error {read_network_meta(path)['profile_error']:.2e}")
    return outputs


def _traditional_phema(
    snapshots: Sequence[str], targets: Sequence[Sequence[float]], out_dir: str | Path
) -> list[Path]:
    """A traditional-EMA run (CONFIG A) has no post-hoc EMA: each target is its snapshot at that time,
    copied under the phema name of the profile's sigma_rel (`pipeline.ablation.traditional_sigma_rel`)."""
    import shutil

    by_nimg = {read_network_meta(p)["nimg"]: Path(p) for p in snapshots}
    outputs = []
    for nimg, sigma_rel in targets:
        if int(nimg) not in by_nimg:
            raise ValueError(f"traditional EMA: no snapshot at nimg {int(nimg)}; have {sorted(by_nimg)}")
        src = by_nimg[int(nimg)]
        equivalent = read_network_meta(src)["sigma_rel_equivalent"]
        if round(equivalent, 3) != round(float(sigma_rel), 3):
            raise ValueError(
                f"{src}: its EMA profile has sigma_rel {equivalent:.3f}, not the target "
                f"{float(sigma_rel):.3f}; a traditional EMA cannot be reconstructed at other lengths"
            )
        out = Path(out_dir) / files.phema_name(int(nimg), float(sigma_rel))
        with files.atomic_path(out) as tmp:
            shutil.copyfile(src, tmp)
        print(f"{out}: the traditional EMA snapshot {src.name} itself (sigma_rel {equivalent:.4f})")
        outputs.append(out)
    return outputs


def phema_plot(trained_json: str | Path, targets: Sequence[Sequence[float]], out_png: str | Path) -> None:
    """PNG of a run's target EMA profiles and their reconstructions from its snapshots (a traditional
    EMA: its averaging profile next to the power-function profile of the same sigma_rel)."""
    from edm2lib.phema.plot import plot_profiles

    record = json.loads(Path(trained_json).read_text())
    if record.get("ema") == "traditional":
        from edm2lib.pipeline.ablation import plot_traditional_profile

        plot_traditional_profile(record["snapshots"], targets, out_png)
        return
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
    from edm2lib.files import phema_name
    from edm2lib.official import releases
    from edm2lib.official.convert import convert

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
    from edm2lib.files import snapshot_name
    from edm2lib.official import releases
    from edm2lib.official.convert import convert

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
    refs: str,
    resolution: int,
    detectors: Mapping[str, Any],
    download: bool,
    official: Mapping[str, Any],
    out: Mapping[str, str],
) -> dict[str, Any]:
    """NVIDIA's published reference statistics `refs` (e.g. img512) -> data/<name>/ref-<detector>.npz,
    stamped with the identity of the detectors that score against them (`detector_settings`)."""
    from edm2lib.official import releases
    from edm2lib.official.refstats import import_dataset_refs
    from edm2lib.pipeline.table import load_detectors

    pkl = _fetch(official, releases.refs_url(refs, official["base_url"]))
    dets = {d.name: d for d in load_detectors({**detectors, "download": download}, list(out))}
    metas = import_dataset_refs(
        pkl,
        out,
        {n: d.identity for n, d in dets.items()},
        {n: d.dim for n, d in dets.items()},
        resolution,
    )
    print(json.dumps(metas, default=str))
    return metas


# --- the paper's own experiments: configs A..G (docs/ablation.md) ---


def dynamics(trained_json: str | Path, out_png: str | Path, title: str) -> int:
    """results/dynamics-<run>.png: a run's activation and weight magnitudes (EDM2 Fig. 15 layout)."""
    from edm2lib.pipeline.ablation import dynamics as plot

    return plot(trained_json, out_png, title)


def ablation(
    metric_paths: Sequence[str],
    runs: Mapping[str, Mapping[str, Any]],
    phema_dirs: Mapping[str, str],
    detectors: Sequence[str],
    unguided: Sequence[str],
    out_csv: str | Path,
) -> list[dict[str, Any]]:
    """results/ablation_table.csv: per run its letter, U-Net parameters, FLOPs of one forward at batch 1
    (FlopCounterMode), EMA kind, and its best unguided point by the first detector's metric."""
    from edm2lib.pipeline.ablation import ablation_rows, net_config_of, write_ablation_table
    from edm2lib.pipeline.table import METRICS, collect

    scores = [r for r in collect(list(metric_paths)) if r["guidance"] in unguided]
    nets = {name: net_config_of(phema_dirs[name]) for name in runs}
    rows = ablation_rows(runs, scores, nets, [METRICS.get(d, d) for d in detectors])
    write_ablation_table(rows, out_csv)
    print(json.dumps(rows, indent=1, default=str))
    return rows


# --- the data-specific detector (docs/metrics.md, "Data-specific detector") and the reference floor ---


def heldout(data: Mapping[str, Any], out_h5: str | Path) -> dict[str, Any]:
    """data/<name>/heldout.h5: the source's held-out split (Fashion-MNIST: the 10k test images), with the
    data set's transform and resolution, never seen by training or the reference statistics."""
    from edm2lib.data.prepare import prepare_heldout

    return prepare_heldout(data["source"], data.get("path"), data["resolution"], data["transform"], out_h5)


def detector(
    images_h5: str, heldout_h5: str, settings: Mapping[str, Any], out_file: str, out_json: str
) -> dict[str, Any]:
    """Train the data-specific classifier on images.h5 (the training split), measure its accuracy on the
    held-out split, save it as safetensors with its identity (data set, seed, test accuracy, sha256)."""
    from edm2lib.pipeline.table import train_detector

    return train_detector(images_h5, heldout_h5, settings, out_file, out_json)


def floor(
    heldout_h5: str,
    refs: Mapping[str, str],
    settings: Mapping[str, Any],
    batch: int,
    download: bool,
    images: int,
    block: int,
    out_json: str,
) -> dict[str, Any]:
    """The reference floor: the metrics of `images` real held-out images (block `block`) against the
    reference statistics, what a perfect generator would score with that many images."""
    from edm2lib.pipeline.table import score_floor

    return score_floor(heldout_h5, refs, _metrics(settings, batch, download), images, block, out_json)


def class_grid(samples_h5: str, images_h5: str, out_png: str, per_class: int = 8) -> int:
    """A sample grid arranged by class (one labelled column per class) of one point's first seed block."""
    from edm2lib.pipeline.table import plot_class_grid

    return plot_class_grid(samples_h5, images_h5, out_png, per_class)


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
