"""Telemetry overhead: cost of one magnitude measurement (raw + EMA network) against the training it rides on.

    python bench/telemetry.py                       # edm2-demo, batch 32, probe 256, interval 8192 images
    python bench/telemetry.py --probe 4096 --interval 8388608 --preset edm2-img512-xs --batch 1

The training step and one telemetry point (probe drawn once, then raw + EMA measured, as the Trainer does
every `telemetry_nimg` images) are timed best-of-N in the same run; the overhead at an interval is
point_time / (interval / batch * step_time). Prints a table and writes bench/out/telemetry.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from common import best_of, write_result
from edm2lib.nn.presets import get_preset
from edm2lib.training.config import TrainConfig
from edm2lib.training.loop import Trainer
from train import make_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="edm2-demo")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--probe", type=int, default=256, help="telemetry_probe (examples per point)")
    parser.add_argument("--interval", type=int, default=8192, help="telemetry_nimg (images between points)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    network = get_preset(args.preset).network
    with tempfile.TemporaryDirectory() as tmp:
        data = make_dataset(Path(tmp) / "data.h5", network)
        cfg = TrainConfig.from_dict(
            dict(data=str(data), run_dir=f"{tmp}/run", preset=args.preset, batch=args.batch, device="cpu",
                 duration=10**9, snapshot_nimg=0, checkpoint_nimg=0, checkpoint_minutes=0,
                 telemetry_nimg=args.interval, telemetry_probe=args.probe)
        )  # fmt: skip
        trainer = Trainer(cfg)
        step = best_of(trainer.step, args.repeats)
        point = best_of(trainer._telemetry, args.repeats)
        trainer.loader.shutdown(wait=False, cancel_futures=True)
    steps_between = args.interval / args.batch
    overhead = point / (steps_between * step)
    result = dict(
        preset=args.preset, batch=args.batch, probe=args.probe, interval_nimg=args.interval,
        step_s=step, telemetry_point_s=point, steps_between_points=steps_between, overhead=overhead,
    )  # fmt: skip
    print("| preset | batch | probe | interval (img) | step s | point s | overhead |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {args.preset} | {args.batch} | {args.probe} | {args.interval} | {step:.3f} | {point:.3f} "
        f"| {100 * overhead:.2f}% |"
    )
    write_result(result, "telemetry")


if __name__ == "__main__":
    main()
