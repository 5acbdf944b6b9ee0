"""The paper's own experiments in the pipeline: configs A..G side by side (EDM2 Table 1, docs/ablation.md).

A run's ladder letter is its `ablation` key (default G). A run with a traditional EMA (CONFIG A's recipe,
or `ema: traditional`) has no post-hoc EMA: each of its points is its traditional EMA snapshot itself, at
the sigma_rel of that EMA's averaging profile (EDM2 Fig. 5a shows A as a single point for this reason).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edm2lib import files
from edm2lib.pipeline.config import resolved_training

COLUMNS = ["config", "run", "params", "flops_per_eval", "ema", "nimg", "best_sigma_rel", "points"]


def plot_traditional_profile(
    snapshots: Sequence[str], targets: Sequence[Sequence[float]], out_png: str | os.PathLike
) -> None:
    """PNG of a traditional EMA's averaging weights at each target time, beside the power-function profile
    of the same sigma_rel (EDM2 Eq. 2) for comparison."""
    import numpy as np
    from matplotlib.figure import Figure

    from edm2lib.phema.profiles import sigma_rel_to_gamma, traditional_weights

    metas = {files.read_network_meta(p)["nimg"]: files.read_network_meta(p) for p in snapshots}
    fig = Figure(figsize=(8, 4.5), dpi=120)
    ax = fig.subplots()
    for nimg, sigma_rel in targets:
        meta = metas[int(nimg)]
        batch = meta["batch"]
        w = traditional_weights(int(nimg), batch, meta["halflife_nimg"], meta["rampup_ratio"])
        tau = np.arange(1, len(w) + 1) * batch
        (line,) = ax.plot(
            tau, w / batch, lw=1.5, label=f"traditional EMA @ {int(nimg)} (sigma_rel {sigma_rel:.3f})"
        )
        gamma = float(sigma_rel_to_gamma(sigma_rel))
        power = (gamma + 1) * (tau / nimg) ** gamma / nimg  # EDM2 Sec. 3.1: the power-function profile
        ax.plot(
            tau, power, "--", color=line.get_color(), lw=1, label=f"power function, sigma_rel {sigma_rel:.3f}"
        )
    ax.set_xlabel("training images")
    ax.set_ylabel("weight per image")
    ax.set_title("CONFIG A: one traditional EMA, no post-hoc reconstruction")
    ax.legend(fontsize=7)
    with files.atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png")


def network_cost(net_config: Mapping[str, Any]) -> tuple[int, int]:
    """(U-Net parameters without the loss-weighting head, as EDM2 Table 1 counts them; FLOPs of one
    forward at batch 1 counted by `torch.utils.flop_counter.FlopCounterMode`, 2 per multiply-add, so about
    twice Table 1's Gflops; convolutions and matmuls only). Built on the meta device: no compute."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from edm2lib.nn.networks import Precond

    config = {**net_config, "use_fp16": False}
    config.pop("compute_dtype", None)
    with torch.device("meta"):
        net = Precond(**config).eval()
        x = torch.zeros(1, net.img_channels, net.img_resolution, net.img_resolution)
        labels = torch.zeros(1, net.label_dim) if net.label_dim else None
        sigma = torch.ones(1)
    params = sum(p.numel() for n, p in net.named_parameters() if not n.startswith("logvar"))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(x, sigma, labels)
    return params, int(counter.get_total_flops())


def ablation_rows(
    runs: Mapping[str, Mapping[str, Any]],
    scores: Sequence[Mapping[str, Any]],
    net_configs: Mapping[str, Mapping[str, Any]],
    metrics: Sequence[str],
) -> list[dict[str, Any]]:
    """One row per run: its letter, size, cost, EMA kind and its best point by `metrics[0]` (with every
    metric's score there; `scores` are `pipeline.table.collect` rows of the final time, no guidance)."""
    rows = []
    for name, run in runs.items():
        mine = [s for s in scores if s["run"] == name and s.get(metrics[0]) not in ("", None)]
        if not mine:
            raise ValueError(f"ablation table: run {name!r} has no scored point with {metrics[0]}")
        best = min(mine, key=lambda s: (s["nimg"] != max(r["nimg"] for r in mine), s[metrics[0]]))
        params, flops = network_cost(net_configs[name])
        row = {
            "config": run.get("ablation") or "G",
            "run": name,
            "params": params,
            "flops_per_eval": flops,
            "ema": resolved_training(run).ema,
            "nimg": best["nimg"],
            "best_sigma_rel": f"{best['sigma_rel']:.3f}",
            "points": sum(1 for s in mine if s["nimg"] == best["nimg"]),
        }
        for m in metrics:
            row[m] = best.get(m, "")
            row[f"{m}_detector"] = best.get(f"{m}_detector", "")
        rows.append(row)
    return sorted(rows, key=lambda r: (r["config"], r["run"]))


def write_ablation_table(rows: Sequence[Mapping[str, Any]], out_csv: str | os.PathLike) -> Path:
    """results/ablation_table.csv (columns: `COLUMNS`, then each metric and its detector)."""
    extra = [k for k in (rows[0] if rows else {}) if k not in COLUMNS]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*COLUMNS, *extra], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    files.atomic_write_text(out_csv, buf.getvalue())
    return Path(out_csv)


def net_config_of(phema_dir: str | os.PathLike) -> dict[str, Any]:
    """The `Precond` keywords recorded in any network file of a run's phema directory."""
    found = sorted(Path(phema_dir).glob("phema-*.safetensors"))
    if not found:
        raise FileNotFoundError(f"{phema_dir}: no phema-*.safetensors network files")
    return dict(files.read_network_meta(found[0])["config"])


def dynamics(trained_json: str | os.PathLike, out_png: str | os.PathLike, title: str) -> int:
    """results/dynamics-<run>.png from the run's telemetry.jsonl (EDM2 Fig. 15 layout); record count."""
    from edm2lib.training.telemetry import plot_dynamics

    run_dir = Path(json.loads(Path(trained_json).read_text())["run_dir"])
    records = files.read_jsonl(run_dir / files.RUN_TELEMETRY)
    if not records:
        raise ValueError(f"{run_dir}/telemetry.jsonl: no records; set runs.<run>.telemetry_nimg > 0")
    plot_dynamics(records, out_png, title)
    return len(records)
