"""One FeatureView run split over N worker processes (``shards``, the pods of an Indexed Job)
against one redis-server, beside the unsplit run.

One freshly started redis-server (no persistence, loopback), the synthetic users table of
``materialize_bench`` (one row per entity, 3 features, TTL off), ``FLUSHALL`` between runs. For
each worker count N, N processes of ``recsys_workloads.materialize`` start at once, as the
Job's pods do (``$JOB_COMPLETION_INDEX`` and ``$RECSYS_RUN_ID`` in their environment); N = 1
is the unsplit run (``shards`` unset), the reference. Reported per N: wall time from the first
start to the last exit (what a user waits for), entities per second over it, the ratio to
N = 1, the slowest shard's read and write phases, the largest worker's peak RSS, and the
store's CPU seconds per wall second (1.0: one Redis thread saturated).

Speed is reported, never asserted. Every worker, their Python start-up and the redis-server
share this machine's cores, so N workers on a machine with fewer than N + 1 free cores
measure contention, not the split: see benchmarks/README.md for what was measured and how it
extends to several nodes.

    python benchmarks/sharded_materialize_bench.py --rows 10000000 --workers 1,2,4
    python benchmarks/sharded_materialize_bench.py --rows 10000000 --workers 1,2 --primaries 2

(``--primaries K``: a fresh Redis Cluster of K primaries instead of one server.)
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
import redis.cluster

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]

from materialize_bench import FEATURES, RESULTS, ensure_data, start_redis  # noqa: E402

from testbed.redis_server import start_redis_cluster  # noqa: E402


def split_run(url: str, cluster: bool, source: Path, workers: int, work: Path) -> dict[str, Any]:
    """Run the materializer as ``workers`` processes at once; their figures and the wall time."""
    config: dict[str, Any] = {
        "featureView": "bench.users",
        "joinKey": "user_id",
        "source": {"uri": str(source)},
        "features": FEATURES,
        "ttlSeconds": 0,
        "onlineStore": {"redisUrl": url, **({"redisCluster": True} if cluster else {})},
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
    # VmHWM, polled: the rusage of a child counts the memory of the parent it was forked from
    peak_kib = 0
    while any(proc.poll() is None for _, proc in procs):
        for _, proc in procs:
            peak_kib = max(peak_kib, _high_water_kib(proc.pid))
        time.sleep(0.05)
    wall = time.monotonic() - started
    summaries = []
    for log, proc in procs:
        if proc.returncode:
            raise RuntimeError(f"a worker failed ({proc.returncode}): {log.read_text()}")
        summaries.append(json.loads(log.read_text()))
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


def server_cpu_seconds(url: str, cluster: bool) -> float:
    """CPU seconds the store's servers (every primary of a cluster) have used so far: how busy
    the store was during a run, so a flat rate can be told apart from a saturated server."""
    if cluster:
        seed = redis.cluster.RedisCluster.from_url(url)
        nodes = [(n.host, n.port) for n in seed.get_primaries()]
        seed.close()
    else:
        plain = redis.Redis.from_url(url)
        kwargs = plain.connection_pool.connection_kwargs
        nodes = [(kwargs["host"], kwargs["port"])]
        plain.close()
    total = 0.0
    for host, port in nodes:
        with redis.Redis(host, port) as client:
            info = client.info("cpu")
            total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return total


def _high_water_kib(pid: int) -> int:
    """The process's peak resident set so far (0 once it has exited)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _server(args: argparse.Namespace, work: Path) -> tuple[Callable[[], None], str, bool]:
    """The store: one redis-server, or a fresh cluster of ``--primaries`` primaries."""
    if args.primaries:
        cluster = start_redis_cluster(masters=args.primaries, replicas=0)
        return cluster.stop, cluster.url, True
    server, port = start_redis(work)

    def stop() -> None:
        server.terminate()
        server.wait()

    return stop, f"redis://127.0.0.1:{port}/0", False


def _flush(url: str, cluster: bool) -> None:
    # 10M keys take FLUSHALL longer than the default timeouts allow
    client = (
        redis.cluster.RedisCluster.from_url(url, socket_timeout=600)
        if cluster
        else redis.Redis.from_url(url, socket_timeout=600)
    )
    try:
        client.flushall()
    finally:
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument(
        "--primaries",
        type=int,
        default=0,
        help="a Redis Cluster of this many primaries (0: one server)",
    )
    args = parser.parse_args()
    source = ensure_data(args.rows)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        stop, url, cluster = _server(args, work)
        try:
            for workers in (int(n) for n in args.workers.split(",")):
                _flush(url, cluster)
                cpu = server_cpu_seconds(url, cluster)
                result = split_run(url, cluster, source, workers, work)
                busy = (server_cpu_seconds(url, cluster) - cpu) / result["wall_seconds"]
                result["store_cpu_per_wall_second"] = round(busy, 2)
                result["vs_1"] = round(result["rows_per_second"] / results[0]["rows_per_second"],
                                       2) if results else 1.0  # fmt: skip
                results.append(result)
                print(json.dumps(result), flush=True)
        finally:
            stop()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"sharded-materialize-{time.strftime('%Y%m%dT%H%M%S')}.json"
    meta = {"rows": args.rows, "primaries": args.primaries}
    out.write_text(json.dumps({**meta, "results": results}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
