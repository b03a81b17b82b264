"""``python -m recsys_workloads.train --config PATH``: one training Job (or torchrun worker)."""

from __future__ import annotations

import os
import sys

from recsys_workloads.runtime import run_entrypoint
from recsys_workloads.train.pipeline import run


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if int(os.environ.get("LOCAL_RANK", "0") or 0) > 0:
        # torchrun with several processes in one pod: only local rank 0 may write the pod's
        # termination message, or a worker's summary could replace the real one.
        args += ["--termination-log", os.devnull]
    return run_entrypoint("train", run, args)


if __name__ == "__main__":
    sys.exit(main())
