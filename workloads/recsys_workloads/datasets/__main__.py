"""``python -m recsys_workloads.datasets {movielens,synthetic} --out DIR [...]``.

Prints the written paths as JSON, so scripts can pick them up. Bad arguments exit with
``EXIT_BAD_INPUT`` like every other workload.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, fields
from datetime import datetime

from recsys_workloads.datasets import movielens, synthetic
from recsys_workloads.runtime import EXIT_BAD_INPUT, EXIT_OK, BadInputError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m recsys_workloads.datasets")
    sub = parser.add_subparsers(dest="dataset", required=True)
    ml = sub.add_parser("movielens", help="MovieLens-100k from the recbole wheel's package data")
    ml.add_argument("--out", required=True, help="output directory (path or fsspec URI)")
    syn = sub.add_parser("synthetic", help="a deterministic synthetic world (see synthetic.py)")
    syn.add_argument("--out", required=True, help="output directory (path or fsspec URI)")
    defaults = synthetic.SyntheticSpec()
    for field in fields(synthetic.SyntheticSpec):
        default = getattr(defaults, field.name)
        flag = "--" + field.name.replace("_", "-")
        if isinstance(default, datetime):
            syn.add_argument(
                flag,
                type=datetime.fromisoformat,
                default=default,
                help=f"ISO-8601 with offset (default {default.isoformat()})",
            )
        else:
            syn.add_argument(flag, type=type(default), default=default, help=f"default {default}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.dataset == "movielens":
            paths = movielens.write_dataset(args.out)
        else:
            knobs = {f.name: getattr(args, f.name) for f in fields(synthetic.SyntheticSpec)}
            paths = synthetic.write_dataset(args.out, spec=synthetic.SyntheticSpec(**knobs))
    except BadInputError as exc:
        print(f"datasets: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(json.dumps(asdict(paths)))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
