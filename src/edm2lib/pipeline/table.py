"""Pipeline results: reference statistics, scores per point, the FID table and the FID-vs-sigma_rel plot."""

from __future__ import annotations

import csv
import io as _io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edm2lib.files import atomic_path, atomic_write_text

# results/fid_table.csv, one row per scored point (seed blocks folded: min as in the paper, and mean)
# A metric's columns appear only when some row has a value (a config without Inception has no `fid` column).
COLUMNS = [
    "run", "model", "nimg", "sigma_rel", "guidance", "w", "guide", "interval", "steps", "nfe",
    "images", "seed_blocks", "seeds", "fid", "fid_mean", "fd_dinov2", "fd_dinov2_mean",
    "fd_classifier", "fd_classifier_mean", "class_acc", "class_acc_min",
    "fid_detector", "fd_dinov2_detector", "fd_classifier_detector", "random_init", "paper_fid",
    "paper_fd_dinov2",
]  # fmt: skip
METRICS = {"inception": "fid", "dinov2": "fd_dinov2", "classifier": "fd_classifier"}
LABELS = {"fid": "FID", "fd_dinov2": "FD-DINOv2", "fd_classifier": "FD-classifier"}
LABELS["class_acc"] = "class accuracy (classifier)"
FLOOR_RUN = "real-heldout"  # the floor row: real held-out images scored like samples


def load_detectors(
    metrics: Mapping[str, Any], names: Sequence[str] | None = None, device: str = "cpu"
) -> list:
    """The detectors of the `metrics` config section (random-init only if allowed and weights are absent)."""
    from edm2lib.metrics import load_detector

    arch = metrics.get("random_arch") or {}
    return [
        load_detector(
            name,
            weights=(metrics.get("weights") or {}).get(name),
            allow_random=metrics.get("allow_random_init", False),
            device=device,
            download=metrics.get("download", True),
            **(arch.get(name) or {}),
        )
        for name in (names or metrics["detectors"])
    ]


def reference_stats(
    images_h5: str | os.PathLike, detector: str, metrics: Mapping[str, Any], out_npz: str
) -> dict:
    """Feature statistics of the real images for one detector (`metrics.ref_images`: random subset size)."""
    from edm2lib.distributed import resolve_device
    from edm2lib.metrics import reference_stats as compute

    dets = load_detectors(metrics, [detector], resolve_device("auto").type)
    if "dataset" in dets[0].identity:
        check_dataset(dets[0], images_h5)
    meta = compute(
        images_h5,
        {detector: out_npz},
        dets,
        metrics["batch"],
        max_images=metrics.get("ref_images"),
        progress=False,
    )
    print(json.dumps(meta, default=str))
    return meta


def _describe(identity: Mapping[str, Any]) -> str:
    """One-cell detector identity: architecture, weights file and sha256 prefix, or RANDOM-INIT."""
    sha = str(identity.get("sha256", ""))
    if sha.startswith("random-init"):
        return f"RANDOM-INIT {identity.get('arch')} {identity.get('weights', '')}"
    return f"{identity.get('arch')} {identity.get('weights', '')} sha256:{sha[:12]}"


def score_point(
    samples_h5: str | os.PathLike,
    refs: Mapping[str, str],
    metrics: Mapping[str, Any],
    point: Mapping[str, Any],
    out_json: str | os.PathLike,
) -> dict[str, Any]:
    """Score one seed block of samples against the reference statistics; write the point's metrics JSON."""
    import h5py

    from edm2lib.distributed import resolve_device
    from edm2lib.metrics import score_samples

    dets = load_detectors(metrics, list(refs), resolve_device("auto").type)
    scores = score_samples(str(samples_h5), dict(refs), dets, batch_size=metrics["batch"], progress=False)
    with h5py.File(samples_h5, "r") as f:
        nfe, images = int(f.attrs["nfe"]), len(f["images"])
    record = dict(point, nfe=nfe, images=images, random_init=bool(scores["random_init"]))
    record["class_acc"] = scores.get("class_acc_mean")
    return _write_record(record, scores, out_json)


def _write_record(record: dict[str, Any], scores: Mapping[str, Any], out_json: str | os.PathLike) -> dict:
    """`record` plus each metric's score (min over the block) and detector identity, written as JSON."""
    for metric in METRICS.values():
        record[metric] = scores.get(f"{metric}_min")
        identity = scores["detectors"].get(metric)
        record[f"{metric}_detector"] = "" if identity is None else _describe(identity)
    atomic_write_text(out_json, json.dumps(record, indent=1) + "\n")
    return record


def _fold(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """One table row from the seed blocks of one point: min over blocks (the paper) and mean."""
    blocks = sorted(blocks, key=lambda r: r["block"])
    row = {k: blocks[0].get(k, "") for k in COLUMNS}
    row["seed_blocks"] = len(blocks)
    row["images"] = sum(b["images"] for b in blocks)
    row["seeds"] = " ".join(b["seeds"] for b in blocks)
    row["random_init"] = any(b["random_init"] for b in blocks)
    for metric in METRICS.values():
        values = [b[metric] for b in blocks if b.get(metric) is not None]
        row[metric] = min(values) if values else ""
        row[f"{metric}_mean"] = sum(values) / len(values) if values else ""
    accuracies = [b["class_acc"] for b in blocks if b.get("class_acc") is not None]
    row["class_acc"] = sum(accuracies) / len(accuracies) if accuracies else ""  # mean over seed blocks
    row["class_acc_min"] = min(accuracies) if accuracies else ""
    return row


def collect(
    metric_paths: Sequence[str | os.PathLike], floor_paths: Sequence[str | os.PathLike] = ()
) -> list[dict[str, Any]]:
    """Table rows (COLUMNS) from per-block metrics JSONs, sorted by run, guidance, time and sigma_rel;
    the floor (real held-out images, `score_floor`), if given, is the last row."""
    points: dict[tuple, list[dict[str, Any]]] = {}
    for path in metric_paths:
        record = json.loads(Path(path).read_text())
        key = (record["run"], record["nimg"], record["sigma_rel"], record["guidance"])
        points.setdefault(key, []).append(record)
    rows = [_with_paper(_fold(blocks)) for blocks in points.values()]
    rows.sort(key=lambda r: (r["run"], r["guidance"], r["nimg"], r["sigma_rel"]))
    if floor_paths:
        rows.append(_fold([json.loads(Path(p).read_text()) for p in floor_paths]))
    return rows


def _with_paper(row: dict[str, Any]) -> dict[str, Any]:
    """The row plus the paper's numbers where the point is at a published setting (edm2lib.official.paper)."""
    from edm2lib.official.paper import lookup

    published = lookup(row["model"], row["nimg"], row["sigma_rel"], row["w"])
    for metric in METRICS.values():
        row[f"paper_{metric}"] = published.get(metric, "")
    return row


def plot_vs_paper(table_csv: str | os.PathLike, out_png: str | os.PathLike) -> int:
    """Scatter of our scores against the paper's, one panel per metric, y = x marked; returns the points."""
    from matplotlib.figure import Figure

    with open(table_csv) as f:
        rows = list(csv.DictReader(f))
    fig = Figure(figsize=(11, 4.6), dpi=120)
    count = 0
    for ax, metric in zip(fig.subplots(1, 2), METRICS.values()):
        pairs = [
            (float(r[f"paper_{metric}"]), float(r[metric]), r)
            for r in rows
            if r.get(f"paper_{metric}") and r.get(metric)  # a metric not computed has no column
        ]
        count += len(pairs)
        for paper, ours, r in pairs:
            ax.plot(paper, ours, "o", ms=5)
            ax.annotate(f"{r['model'].removeprefix('edm2-')} {r['guidance']}", (paper, ours), fontsize=6)
        if pairs:
            lo = min(min(p, o) for p, o, _ in pairs) * 0.9
            hi = max(max(p, o) for p, o, _ in pairs) * 1.1
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="ours = paper")
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no point at a published setting", ha="center", transform=ax.transAxes)
        name = {"fid": "FID", "fd_dinov2": "FD-DINOv2"}[metric]
        ax.set_xlabel(f"{name}, paper (EDM2 Tables 2, 3, 5)")
        ax.set_ylabel(f"{name}, this pipeline (min over seed blocks)")
        ax.grid(alpha=0.3)
    if any(r["random_init"] == "True" for r in rows):
        fig.suptitle("RANDOM-INIT DETECTORS: not comparable to the paper", color="red")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    return count


def _cell(value: Any) -> Any:
    return f"{value:.4f}" if isinstance(value, float) and math.isfinite(value) else value


def present_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """COLUMNS less the columns of metrics no row has a value for (no detector configured for them)."""
    empty = {m for m in [*METRICS.values(), "class_acc"] if all(r.get(m) in ("", None) for r in rows)}
    groups = {m: {m, f"{m}_mean", f"{m}_min", f"{m}_detector", f"paper_{m}"} for m in empty}
    dropped = set().union(*groups.values()) if groups else set()
    return [c for c in COLUMNS if c not in dropped]


def write_table(rows: Sequence[Mapping[str, Any]], out_csv: str | os.PathLike) -> None:
    """results/fid_table.csv: one row per scored point, detector identities spelled out; metric columns
    only for the metrics computed."""
    columns = present_columns(rows)
    text = _io.StringIO()
    writer = csv.DictWriter(text, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _cell(row.get(k, "")) for k in columns} for row in rows)
    atomic_write_text(out_csv, text.getvalue())


def plot_fid_vs_sigma_rel(rows: Sequence[Mapping[str, Any]], out_png: str | os.PathLike) -> None:
    """The paper's Figure-5 style: metric vs post-hoc EMA length, one curve per model and guidance, the
    best sigma_rel of each curve marked (lowest distance, highest class accuracy); one panel per metric
    present. The floor row (real held-out images) is a dashed line: what a perfect generator would get."""
    from matplotlib.figure import Figure  # no pyplot: renders with Agg whatever the global backend

    floor = next((r for r in rows if r.get("run") == FLOOR_RUN), None)
    points = [r for r in rows if r.get("run") != FLOOR_RUN]
    metrics = [m for m in [*METRICS.values(), "class_acc"] if any(r.get(m) not in ("", None) for r in points)]
    if not metrics:
        raise ValueError("no FID, FD or class accuracy values to plot")
    fig = Figure(figsize=(5.5 * len(metrics), 4.2), dpi=120)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        curves: dict[str, list[tuple[float, float]]] = {}
        for r in points:
            if r.get(metric) not in ("", None):
                # the run, not the model: a model with its overrides is too long for a legend (see the table)
                label = f"{r['run']} @ {r['nimg']} img, {r['guidance']} (w={r['w']:g})"
                curves.setdefault(label, []).append((float(r["sigma_rel"]), float(r[metric])))
        best_of = max if metric == "class_acc" else min
        for label, curve in sorted(curves.items()):
            curve.sort()
            xs, ys = zip(*curve)
            (line,) = ax.plot(xs, ys, ".-", lw=1.5, ms=4, label=label)
            best = best_of(curve, key=lambda p: p[1])
            ax.plot(*best, "o", color=line.get_color())
            ax.annotate(
                f"{best[1]:.3g}", best, textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7
            )
        if floor is not None and floor.get(metric) not in ("", None):
            value = float(floor[metric])
            label = f"floor: real held-out, {floor['images']} img: {value:.3g}"
            ax.axhline(value, color="k", ls="--", lw=1, label=label)
        ax.set_xlabel("EMA length sigma_rel (post-hoc)")
        ax.set_ylabel(LABELS[metric] + (" (mean over seed blocks)" if metric == "class_acc" else ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    random = [
        LABELS[m]
        for m in metrics
        if any(str(r.get(f"{m}_detector", "")).startswith("RANDOM") for r in points)
    ]
    if random or any(r.get("random_init") for r in points):
        names = ", ".join(random) or "some"
        fig.suptitle(f"RANDOM-INIT DETECTORS ({names})\npipeline demo numbers, not comparable", color="red")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")


def write_results(
    metric_paths: Sequence[str | os.PathLike],
    out_csv: str | os.PathLike,
    out_png: str | os.PathLike,
    floor_paths: Sequence[str | os.PathLike] = (),
) -> list[dict[str, Any]]:
    """Collect every metrics JSON (and the floor's) into the results table and the metrics-vs-sigma_rel
    plot."""
    rows = collect(metric_paths, floor_paths)
    if not rows:
        raise ValueError("no metrics files given; nothing to tabulate")
    write_table(rows, out_csv)
    plot_fid_vs_sigma_rel(rows, out_png)
    return rows


# --- the data-specific detector, the held-out split and the reference floor ---


def check_dataset(det: Any, images_h5: str | os.PathLike) -> None:
    """Refuse images of another data set than the one a data-specific detector was trained on."""
    from edm2lib.metrics.classifier import dataset_identity

    theirs = dataset_identity(images_h5)
    if det.identity["dataset"] != theirs:
        raise ValueError(
            f"{images_h5}: data set {theirs!r}, but the {det.name} detector {det.identity['weights']} was "
            f"trained on {det.identity['dataset']!r}; retrain it (rule detector) or use its own data"
        )


def _labelled_images(path: str | os.PathLike) -> tuple[Any, Any, list[str]]:
    import h5py
    import numpy as np

    with h5py.File(path, "r") as f:
        if "labels" not in f:
            raise ValueError(f"{path}: no 'labels'; a classifier detector needs a labelled data set")
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f["class_names"][()]]
        return np.asarray(f["images"]), np.asarray(f["labels"]), names


def train_detector(
    images_h5: str | os.PathLike,
    heldout_h5: str | os.PathLike,
    settings: Mapping[str, Any],
    out_file: str | os.PathLike,
    out_json: str | os.PathLike,
) -> dict[str, Any]:
    """Train the classifier detector on `images_h5`, score it on `heldout_h5`, save it with its identity;
    `settings`: seed, epochs, batch, lr, width, features (metrics.classifier)."""
    import time

    from edm2lib.files import sha256_file
    from edm2lib.metrics.classifier import accuracy, dataset_identity, save_classifier, train_classifier

    dataset = dataset_identity(images_h5)
    if dataset_identity(heldout_h5) != dataset:
        raise ValueError(
            f"{heldout_h5} ({dataset_identity(heldout_h5)!r}) is not a split of {images_h5} ({dataset!r})"
        )
    x, y, names = _labelled_images(images_h5)
    x_test, y_test, _ = _labelled_images(heldout_h5)
    start = time.perf_counter()
    keys = ("seed", "epochs", "batch", "lr", "width", "features")
    net = train_classifier(x, y, len(names), **{k: settings[k] for k in keys})
    seconds = time.perf_counter() - start
    identity = {
        "dataset": dataset,
        "seed": settings["seed"],
        "test_accuracy": accuracy(net, x_test, y_test),
        "train_images": len(x),
        "test_images": len(x_test),
        "class_names": names,
        "settings": {k: settings[k] for k in keys},
    }
    meta = save_classifier(out_file, net, identity)
    record = {**meta, "file": str(out_file), "sha256": sha256_file(out_file)}
    record["train_seconds"] = round(seconds, 1)
    atomic_write_text(out_json, json.dumps(record, indent=1) + "\n")
    print(json.dumps(record))
    return record


def score_floor(
    heldout_h5: str | os.PathLike,
    refs: Mapping[str, str],
    metrics: Mapping[str, Any],
    images: int,
    block: int,
    out_json: str | os.PathLike,
) -> dict[str, Any]:
    """Metrics of held-out images [block*images, (block+1)*images) against the reference statistics, as a
    floor row of the table (the same count as a seed block of samples)."""
    import h5py

    from edm2lib.distributed import resolve_device
    from edm2lib.metrics import score_samples

    dets = load_detectors(metrics, list(refs), resolve_device("auto").type)
    for d in dets:
        if "dataset" in d.identity:
            check_dataset(d, heldout_h5)
    lo, hi = block * images, (block + 1) * images
    with h5py.File(heldout_h5, "r") as f:
        if hi > len(f["images"]):
            raise ValueError(
                f"{heldout_h5}: {len(f['images'])} held-out images, the floor of seed block {block} needs "
                f"images {lo}..{hi - 1}; lower sampling.images or sampling.seed_blocks, or set "
                "metrics.floor: false"
            )

    def batches():
        with h5py.File(heldout_h5, "r") as f:
            for i in range(lo, hi, metrics["batch"]):
                j = min(i + metrics["batch"], hi)
                yield f["images"][i:j], None, f["labels"][i:j]

    scores = score_samples(batches(), dict(refs), dets, progress=False)
    record = {
        "run": FLOOR_RUN, "model": f"real images ({Path(heldout_h5).name})", "nimg": "", "sigma_rel": "",
        "guidance": "", "w": "", "guide": "", "interval": "", "steps": "", "nfe": "", "images": images,
        "seeds": f"images {lo}-{hi - 1}", "block": block, "random_init": bool(scores["random_init"]),
        "class_acc": scores.get("class_acc_mean"),
    }  # fmt: skip
    return _write_record(record, scores, out_json)


def plot_class_grid(
    samples_h5: str | os.PathLike,
    images_h5: str | os.PathLike,
    out_png: str | os.PathLike,
    per_class: int = 8,
) -> int:
    """Samples arranged by class: one column per class (labelled with the data set's class names), the
    first `per_class` samples of that class from top to bottom; returns the number of images shown."""
    import h5py
    import numpy as np
    from matplotlib.figure import Figure

    with h5py.File(samples_h5, "r") as f:
        images, labels = np.asarray(f["images"]), np.asarray(f["labels"])
    with h5py.File(images_h5, "r") as f:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in f["class_names"][()]]
    classes = list(range(len(names))) if (labels >= 0).any() else [-1]
    per_class = max(1, min(per_class, max(int((labels == c).sum()) for c in classes)))  # no empty rows
    h, w = images.shape[1:3]
    canvas = np.full((per_class * (h + 2), len(classes) * (w + 2), 3), 255, np.uint8)
    shown = 0
    for col, c in enumerate(classes):
        for row, i in enumerate(np.flatnonzero(labels == c)[:per_class]):
            canvas[row * (h + 2) : row * (h + 2) + h, col * (w + 2) : col * (w + 2) + w] = images[i]
            shown += 1
    fig = Figure(figsize=(max(4, 0.75 * len(classes)), 0.75 * per_class + 1.2), dpi=120)
    ax = fig.subplots()
    ax.imshow(canvas, interpolation="nearest")
    ax.set_xticks([col * (w + 2) + w / 2 for col in range(len(classes))])
    ax.set_xticklabels(["unconditional"] if classes == [-1] else names, rotation=45, ha="left", fontsize=7)
    ax.xaxis.tick_top()
    ax.set_yticks([])
    ax.set_title(Path(samples_h5).parent.name, fontsize=8, pad=28)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")
    return shown
