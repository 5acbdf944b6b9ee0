"""Command line: `python -m edm2lib.training --config cfg.yaml [--set key=value ...]`, once per rank.

Exit status: 0 when training reached `duration`, 75 (`EXIT_PREEMPTED`) after a preemption checkpoint, 1
with a one-line message on bad input (config, data set, checkpoint).
"""

from __future__ import annotations

import argparse
import sys

import yaml

from edm2lib.training.config import TrainConfig
from edm2lib.training.loop import train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edm2lib.training", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML or JSON file of TrainConfig keys")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override one key (YAML value)"
    )
    args = parser.parse_args(argv)
    try:
        values = TrainConfig.load(args.config).to_dict()
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--set {item!r}: expected KEY=VALUE")
            values[key] = yaml.safe_load(value)
        summary = train(TrainConfig.from_dict(values))
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return int(summary["exit_code"])


if __name__ == "__main__":
    sys.exit(main())
