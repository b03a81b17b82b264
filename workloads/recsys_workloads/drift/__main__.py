"""``python -m recsys_workloads.drift --config PATH``: one drift check (see the package doc)."""

from __future__ import annotations

import sys

from recsys_workloads.drift.check import run
from recsys_workloads.runtime import run_entrypoint


def main(argv: list[str] | None = None) -> int:
    return run_entrypoint("drift", run, argv)


if __name__ == "__main__":
    sys.exit(main())
