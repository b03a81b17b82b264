"""One FeatureView run split over N worker processes (``shards``, the pods of an Indexed Job)
against one redis-server, beside the unsplit run.

One freshly started redis-server (no persistence, loopback), the synthetic users table of
``materialize_bench`` (one row per entity, 3 features, TTL off), ``FLUSHALL`` between runs. For
each worker count N, N processes of ``recsys_workloads.materialize`` start at once, as the
Job's pods do (``$JOB_COMPLETION_INDEX`` and ``$RECSYS_RUN_ID`` in their environment); N = 1
is the unsplit run (``shards`` unset), the reference. Reported per N: wall time from the first
start to the last exit (what a user waits for), entities per second over it, the ratio to
N = 1, the slowest shard's read and write phases, and the largest worker's peak RSS.

Speed is reported, never asserted. Every worker, their Python start-up and the redis-server
share this machine's cores, so N workers on a machine with fewer than N + 1 free cores
measure contention, not the split: see benchmarks/README.md for what was measured and how it
extends to several nodes.

    python benchmarks/sharded_materialize_bench.py --rows 10000000 --workers 1,2,4
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "benchmarks")]

from materialize_bench import FEATURES, RESULTS, ensure_data, start_redis  # noqa: E402


def split_run(port: int, source: Path, workers: int, work: Path) -> dict[str, Any]:
    """Run the materializer as ``workers`` processes at once; their figures and the wall time."""
    config: dict[str, Any] = {
        "featureView": "bench.users",
        "joinKey": "user_id",
        "source": {"uri": str(source)},
        "features": FEATURES,
        "ttlSeconds": 0,
        "onlineStore": {"redisUrl": f"redis://127.0.0.1:{port}/0"},
        "mode": "full",
    }
    if workers > 1:
        config["shards"] = workers
    config_path = work / f"config-{workers}.json"
    config_path.write_text(json.dumps(config))
    run_id = uuid.uuid4().hex
    base = {k: v for k, v in os.environ.items() if k != "REDIS_PASSWORD"}
    started = time.monotonic()
    procs = []
    for index in range(workers):
        log = work / f"log-{workers}-{index}"
        env = {**base, "JOB_COMPLETION_INDEX": str(index), "RECSYS_RUN_ID": run_id}
        procs.append((log, subprocess.Popen(
            [sys.executable, "-m", "recsys_workloads.materialize", "--config", str(config_path),
             "--termination-log", str(log)], env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )))  # fmt: skip
    peak_kib = 0
    summaries = []
    for log, proc in procs:
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            raise RuntimeError(f"a worker failed ({proc.returncode}): {log.read_text()}")
        peak_kib = max(peak_kib, usage.ru_maxrss)
        summaries.append(json.loads(log.read_text()))
    wall = time.monotonic() - started
    (total,) = [s for s in summaries if s.get("role") != "worker"]
    return {
        "workers": workers,
        "entities": total["entitiesWritten"],
        "wall_seconds": round(wall, 2),
        "rows_per_second": round(total["entitiesWritten"] / wall),
        "slowest_read_seconds": max(s["readSeconds"] for s in summaries),
        "slowest_write_seconds": max(s["writeSeconds"] for s in summaries),
        "peak_rss_mib": round(peak_kib / 1024, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--workers", default="1,2,4")
    args = parser.parse_args()
    source = ensure_data(args.rows)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server, port = start_redis(work)
        try:
            client = redis.Redis(port=port)
            for workers in (int(n) for n in args.workers.split(",")):
                client.flushall()
                result = split_run(port, source, workers, work)
                result["vs_1"] = round(result["rows_per_second"] / results[0]["rows_per_second"],
                                       2) if results else 1.0  # fmt: skip
                results.append(result)
                print(json.dumps(result), flush=True)
            client.close()
        finally:
            server.terminate()
            server.wait()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"sharded-materialize-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps({"rows": args.rows, "results": results}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
