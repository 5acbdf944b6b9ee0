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
COLUMNS = [
    "run", "model", "nimg", "sigma_rel", "guidance", "w", "guide", "interval", "steps", "nfe",
    "images", "seed_blocks", "seeds", "fid", "fid_mean", "fd_dinov2", "fd_dinov2_mean",
    "fid_detector", "fd_dinov2_detector", "random_init", "paper_fid", "paper_fd_dinov2",
]  # fmt: skip
METRICS = {"inception": "fid", "dinov2": "fd_dinov2"}


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
    return row


def collect(metric_paths: Sequence[str | os.PathLike]) -> list[dict[str, Any]]:
    """Table rows (COLUMNS) from per-block metrics JSONs, sorted by run, guidance, time and sigma_rel."""
    points: dict[tuple, list[dict[str, Any]]] = {}
    for path in metric_paths:
        record = json.loads(Path(path).read_text())
        key = (record["run"], record["nimg"], record["sigma_rel"], record["guidance"])
        points.setdefault(key, []).append(record)
    rows = [_with_paper(_fold(blocks)) for blocks in points.values()]
    return sorted(rows, key=lambda r: (r["run"], r["guidance"], r["nimg"], r["sigma_rel"]))


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
            if r[f"paper_{metric}"] and r[metric]
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


def write_table(rows: Sequence[Mapping[str, Any]], out_csv: str | os.PathLike) -> None:
    """results/fid_table.csv: one row per scored point, detector identities spelled out."""
    text = _io.StringIO()
    writer = csv.DictWriter(text, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: _cell(row.get(k, "")) for k in COLUMNS} for row in rows)
    atomic_write_text(out_csv, text.getvalue())


def plot_fid_vs_sigma_rel(rows: Sequence[Mapping[str, Any]], out_png: str | os.PathLike) -> None:
    """The paper's Figure-5 style: metric vs post-hoc EMA length, one curve per model and guidance, the
    best sigma_rel of each curve marked; one panel per metric present."""
    from matplotlib.figure import Figure  # no pyplot: renders with Agg whatever the global backend

    metrics = [m for m in METRICS.values() if any(r.get(m) not in ("", None) for r in rows)]
    if not metrics:
        raise ValueError("no FID or FD-DINOv2 values to plot")
    fig = Figure(figsize=(5.5 * len(metrics), 4.2), dpi=120)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        curves: dict[str, list[tuple[float, float]]] = {}
        for r in rows:
            if r.get(metric) not in ("", None):
                label = f"{r['model']} @ {r['nimg']} img, {r['guidance']} (w={r['w']:g})"
                curves.setdefault(label, []).append((float(r["sigma_rel"]), float(r[metric])))
        for label, points in sorted(curves.items()):
            points.sort()
            xs, ys = zip(*points)
            (line,) = ax.plot(xs, ys, ".-", lw=1.5, ms=4, label=label)
            best = min(points, key=lambda p: p[1])
            ax.plot(*best, "o", color=line.get_color())
            ax.annotate(
                f"{best[1]:.2f}", best, textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7
            )
        ax.set_xlabel("EMA length sigma_rel (post-hoc)")
        ax.set_ylabel({"fid": "FID", "fd_dinov2": "FD-DINOv2"}[metric])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if any(r.get("random_init") for r in rows):
        fig.suptitle("RANDOM-INIT DETECTORS\npipeline demo numbers, not comparable to the paper", color="red")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")


def write_results(
    metric_paths: Sequence[str | os.PathLike], out_csv: str | os.PathLike, out_png: str | os.PathLike
) -> list[dict[str, Any]]:
    """Collect every metrics JSON into the results table and the FID-vs-sigma_rel plot."""
    rows = collect(metric_paths)
    if not rows:
        raise ValueError("no metrics files given; nothing to tabulate")
    write_table(rows, out_csv)
    plot_fid_vs_sigma_rel(rows, out_png)
    return rows
