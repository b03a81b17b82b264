"""How long a routing change takes to reach every gateway replica.

    .venv/bin/python benchmarks/rollout_routing.py --replicas 1 2 4 --changes 20

A redis-server and N real gateway processes (``python -m recsys_workloads.gateway``, the
pod's command) on loopback. The operator's own publisher (``recsys_operator.online``) writes
a routing table with a new canary weight, or with no canary at all (an abort: everything back
on the stable); the clock stops when every replica's heartbeat reports the new table in use.
The reference is the gateways' poll interval, side by side: a change is expected within about
one poll (half a poll on average, plus the heartbeat written at the end of the poll).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
import redis.asyncio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from recsys_contract.formats import parse_duration  # noqa: E402
from recsys_contract.gateway import RoutingTable, Variant  # noqa: E402
from recsys_contract.keyspace import GatewayKeys  # noqa: E402
from recsys_contract.traffic import Heartbeat, live  # noqa: E402
from recsys_operator.online import publish_routing  # noqa: E402
from testbed.processes import free_port  # noqa: E402
from testbed.redis_server import start_redis  # noqa: E402

RECOMMENDER = "bench.routing"
POLL = "1s"


def table(weight: int | None) -> RoutingTable:
    stable = Variant(model_version="v1", triton="127.0.0.1:9", index="file:///nonexistent/v1")
    canary = Variant(model_version="v2", triton="127.0.0.1:9", index="file:///nonexistent/v2")
    if weight is None:
        return RoutingTable(stable=stable)
    return RoutingTable(stable=stable, canary=canary, canary_weight=weight)


def start_gateways(n: int, url: str, work: Path) -> list[subprocess.Popen[bytes]]:
    cfg = {
        "recommender": RECOMMENDER,
        "routing": table(None).to_wire(),
        "redisUrl": url,
        "pollInterval": POLL,
    }
    path = work / "gateway.json"
    path.write_text(json.dumps(cfg))
    procs = []
    for i in range(n):
        log = (work / f"gateway-{i}.log").open("wb")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "recsys_workloads.gateway", "--config", str(path),
                 f"--port={free_port()}", "--host=127.0.0.1"],
                stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "HOSTNAME": f"gateway-{i}"},
            )
        )  # fmt: skip
    return procs


def replicas_see(client: redis.Redis, keys: GatewayKeys, n: int, want: RoutingTable) -> bool:
    beats = live(
        {k.decode(): Heartbeat.from_json(v) for k, v in client.hgetall(keys.replicas).items()},
        time.time(),
    )
    canary = want.canary.model_version if want.canary else None
    return len(beats) == n and all(
        b.canary == canary and b.canary_weight == want.canary_weight for b in beats.values()
    )


async def publish(url: str, keys: GatewayKeys, t: RoutingTable) -> None:
    client = redis.asyncio.Redis.from_url(url)
    try:
        await publish_routing(client, keys, t, None)
    finally:
        await client.aclose()


def run(n: int, changes: int, url: str, work: Path, rng: random.Random) -> dict[str, list[float]]:
    keys = GatewayKeys.of(RECOMMENDER)
    client = redis.Redis.from_url(url)
    client.delete(keys.routing, keys.replicas)
    procs = start_gateways(n, url, work)
    out: dict[str, list[float]] = {"weight": [], "abort": []}
    try:
        deadline = time.monotonic() + 60
        while not replicas_see(client, keys, n, table(None)):
            if time.monotonic() > deadline:
                raise SystemExit("the gateways never reported a heartbeat")
            time.sleep(0.1)
        weight = 0
        for change in range(changes):
            # alternate weight steps and aborts; a random phase against the poll
            time.sleep(rng.uniform(0.2, 1.2))
            kind = "abort" if change % 2 else "weight"
            want = table(None) if kind == "abort" else table((weight % 90) + 10)
            weight += 17
            started = time.monotonic()
            asyncio.run(publish(url, keys, want))
            while not replicas_see(client, keys, n, want):
                if time.monotonic() - started > 30:
                    raise SystemExit(f"{kind} did not reach every replica within 30 s")
                time.sleep(0.01)
            out[kind].append(time.monotonic() - started)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(15)
        client.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    server = start_redis()
    poll = parse_duration(POLL)
    rng = random.Random(args.seed)
    print(f"poll interval {poll:.1f} s (the reference)")
    print("| replicas | change | n | median (s) | p90 (s) | max (s) | median / poll |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
    try:
        for n in args.replicas:
            with tempfile.TemporaryDirectory() as tmp:
                got = run(n, args.changes, server.url_for_db(1), Path(tmp), rng)
            for kind, times in got.items():
                times.sort()
                p90 = times[int(0.9 * (len(times) - 1))]
                med = statistics.median(times)
                print(f"| {n} | {kind} | {len(times)} | {med:.2f} | {p90:.2f} | "
                      f"{times[-1]:.2f} | {med / poll:.2f} |")  # fmt: skip
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
