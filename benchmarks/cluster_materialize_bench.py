"""FeatureView → Redis Cluster: the materializer at 1, 2 and 3 primaries, beside
``redis-benchmark``'s ceiling against the same cluster.

For each size a fresh cluster of that many primaries (no replicas, no persistence, loopback
ports; ``tests/testbed/redis_server.start_redis_cluster``) gets:

(a) ``recsys_workloads.materialize`` as the Job runs it (a subprocess with ``--config`` and
    ``redisCluster: true``), a full run with TTL off; its write phase is the figure compared,
    as the read and point-in-time selection do not depend on the store;
(b) ``redis-benchmark`` pipelined ``HSET`` with the same field count, one process per primary,
    all at once, each writing keys its node owns: the most the cluster takes, node by node.

The ratio of (a) to (b) at each size says how close to the cluster's own ceiling the writer
gets, and whether it keeps up as nodes are added. Speed is reported, never asserted; what the
machine's cores allow bounds both sides (every node and both clients share them).

    python benchmarks/cluster_materialize_bench.py --rows 1000000
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
import redis.cluster
from redis.crc import key_slot

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]

from materialize_bench import FEATURES, RESULTS, ensure_data  # noqa: E402

from testbed.redis_server import RedisCluster, start_redis_cluster  # noqa: E402


def ceiling(cluster: RedisCluster, rows: int) -> float:
    """HSET ops/s of one ``redis-benchmark`` per primary, all at once, summed: each sends its
    node keys of a hash tag that node owns (``redis-benchmark --cluster`` refuses clusters of
    fewer than three nodes), with the materializer's four fields."""
    runs = []
    for port in cluster.primaries:
        tag = _owned_tag(cluster, port)
        command = ["redis-benchmark", "-h", cluster.host, "-p", str(port), "-P", "1000",
                   "-c", "50", "-n", str(rows // len(cluster.primaries)), "-r", str(rows),
                   "--csv", "HSET", f"fv:bench:{{{tag}}}:__rand_int__", "t", "1714521600000000",
                   "0", "42", "1", "M", "2", "technician"]  # fmt: skip
        runs.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True))
    total = 0.0
    for run in runs:
        out, _ = run.communicate()
        if run.returncode:
            raise RuntimeError(f"redis-benchmark failed ({run.returncode})")
        total += float(list(csv.DictReader(io.StringIO(out)))[-1]["rps"])
    return total


def _owned_tag(cluster: RedisCluster, port: int) -> str:
    """A hash tag whose slot the primary at ``port`` owns."""
    client = redis.cluster.RedisCluster(cluster.host, cluster.primaries[0])
    try:
        for n in range(100_000):
            if client.nodes_manager.get_node_from_slot(key_slot(f"n{n}".encode())).port == port:
                return f"n{n}"
    finally:
        client.close()
    raise RuntimeError(f"no tag found for the node at {port}")


def ours(cluster: RedisCluster, source: Path, work: Path) -> dict[str, float]:
    """The materializer's summary figures for one full run into ``cluster``."""
    config = {
        "featureView": "bench.users",
        "joinKey": "user_id",
        "source": {"uri": str(source)},
        "features": FEATURES,
        "ttlSeconds": 0,
        "onlineStore": {"redisUrl": cluster.url, "redisCluster": True},
        "mode": "full",
    }
    config_path, log = work / "materialize.json", work / "termination-log"
    config_path.write_text(json.dumps(config))
    env = {k: v for k, v in os.environ.items() if k != "REDIS_PASSWORD"}
    subprocess.run(
        [sys.executable, "-m", "recsys_workloads.materialize", "--config", str(config_path),
         "--termination-log", str(log)],
        check=True, env=env, capture_output=True,
    )  # fmt: skip
    summary = json.loads(log.read_text())
    written = float(summary["entitiesWritten"])
    return {"entities": written, "write_rows_per_s": written / float(summary["writeSeconds"])}


def flush(cluster: RedisCluster) -> None:
    for client in cluster.primary_clients():
        with client:
            client.flushall()


def measure(masters: int, rows: int, source: Path) -> dict[str, float]:
    cluster = start_redis_cluster(masters=masters, replicas=0)
    try:
        with tempfile.TemporaryDirectory() as work:
            mine = ours(cluster, source, Path(work))
        flush(cluster)
        top = ceiling(cluster, rows)
    finally:
        cluster.stop()
    return {"masters": masters, **mine, "ceiling_ops_per_s": top,
            "ratio": mine["write_rows_per_s"] / top}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--masters", default="1,2,3")
    args = parser.parse_args()
    source = ensure_data(args.rows)
    results = []
    for masters in (int(m) for m in args.masters.split(",")):
        result = measure(masters, args.rows, source)
        results.append(result)
        print(
            f"{masters} primaries: materializer write {result['write_rows_per_s']:,.0f} rows/s, "
            f"redis-benchmark HSET {result['ceiling_ops_per_s']:,.0f}/s, "
            f"ratio {result['ratio']:.2f}",
            flush=True,
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"cluster-materialize-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps({"rows": args.rows, "results": results}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
