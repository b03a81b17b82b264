"""What the gateway records for the rollout's analysis, on a real redis-server: per-version
counters per bucket (written by the poll, kept across a failed write), outcome events credited
to their impression's bucket, the replica heartbeat, and the standby index.

The gateways under test serve through their real HTTP app; their indexes are small in-memory
ones and their Triton endpoint refuses connections, so every response is the variant's
fallback items: the counters' whole path runs without a model server."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient, TestServer
from test_gateway_pipeline import flat_index

from recsys_contract import traffic
from recsys_contract.keyspace import GatewayKeys
from recsys_workloads.gateway.app import Gateway, create_app, replica_id
from recsys_workloads.gateway.config import parse_gateway_config
from recsys_workloads.gateway.stats import Increment, TrafficStats
from testbed.processes import wait_until
from testbed.redis_server import RedisServer, start_redis

pytestmark = pytest.mark.redis

SEEDS = {"mem://m-v1": 1, "mem://m-v2": 2, "mem://m-v0": 3}
WINDOW_MS = 60_000  # the attributionWindow the gateways below get


def variant(version: str) -> dict[str, str]:
    return {"modelVersion": version, "triton": "127.0.0.1:1", "index": f"mem://{version}"}


def routing(canary_weight: int | None = None, standby: bool = False) -> dict[str, Any]:
    table: dict[str, Any] = {"stable": variant("m-v1")}
    if canary_weight is not None:
        table.update(canary=variant("m-v2"), canaryWeight=canary_weight)
    if standby:
        table["standby"] = variant("m-v0")
    return table


def gateway_for(redis_url: str, table: dict[str, Any]) -> Gateway:
    """A gateway whose poller never fires by itself (the tests call ``poll_once``)."""
    cfg = parse_gateway_config(
        {
            "recommender": "test.traffic",
            "routing": table,
            "redisUrl": redis_url,
            "pollInterval": "1h",
            "redisTimeout": "300ms",
            "scoringTimeout": "1s",
            "attributionWindow": "1m",
            "candidates": 20,
            "topK": 5,
        }
    )
    gateway = Gateway(cfg)
    gateway.pool.loader = lambda uri: flat_index(uri.removeprefix("mem://"), 20, SEEDS[uri], uri)
    return gateway


@contextlib.asynccontextmanager
async def serving(gateway: Gateway) -> AsyncIterator[TestClient[Any, Any]]:
    """The gateway's app on a loopback port, once every index it wants is loaded and a poll
    has reported that."""
    async with TestClient(TestServer(create_app(gateway))) as client:
        for task in list(gateway.pool.loading.values()):
            await task
        await gateway.poll_once()
        yield client


async def recommend(client: TestClient[Any, Any], user: int) -> dict[str, Any]:
    resp = await client.get(f"/v1/recommendations?user_id={user}")
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


def fields(client: redis.Redis, key: str) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in client.hgetall(key).items()}  # type: ignore[union-attr]


def stats_keys(client: redis.Redis, keys: GatewayKeys) -> list[str]:
    return sorted(k.decode() for k in client.keys(f"{keys.base}:stats:*"))  # type: ignore[union-attr]


def flush_failures(gateway: Gateway) -> float | None:
    return gateway.metrics.registry.get_sample_value("recsys_gateway_traffic_flush_failures_total")


def summed(client: redis.Redis, keys: GatewayKeys, version: str) -> traffic.Counts:
    found = client.keys(f"{keys.base}:stats:{version}:*")
    return traffic.Counts.of(client.hgetall(k) for k in found)


# --- request counters --------------------------------------------------------------------


async def test_requests_are_counted_per_version_in_their_bucket_at_the_next_poll(
    redis_url: str, redis_client: redis.Redis
) -> None:
    gateway = gateway_for(redis_url, routing(canary_weight=50))
    async with serving(gateway) as client:
        bodies = [await recommend(client, user) for user in range(24)]
        assert not stats_keys(redis_client, gateway.keys)  # nothing written per request
        await gateway.poll_once()
        assert gateway.stats.pending == {}

    want: dict[tuple[str, int], Counter[str]] = {}
    for body in bodies:
        served_ms = traffic.served_ms_of(body["requestId"])
        assert served_ms is not None
        key = (body["modelVersion"], traffic.bucket_of(served_ms / 1000))
        counts = want.setdefault(key, Counter())
        counts.update(requests=1, fallbacks=1, impressions=len(body["items"]))
    assert {version for version, _ in want} == {"m-v1", "m-v2"}
    assert stats_keys(redis_client, gateway.keys) == sorted(
        gateway.keys.stats(v, b) for v, b in want
    )
    for (version, bucket), counts in want.items():
        stats_key = gateway.keys.stats(version, bucket)
        got = fields(redis_client, stats_key)
        latency = {f: n for f, n in got.items() if f.startswith("lat:")}
        assert {f: n for f, n in got.items() if f not in latency} == dict(counts)
        assert sum(latency.values()) == counts["requests"]  # one latency field per request
        assert 0 < redis_client.ttl(stats_key) <= traffic.STATS_TTL_SECONDS


def restart_after(server: RedisServer) -> Any:
    """Stop the server's redis-server; the returned function starts it again on its port."""
    argv = [str(a) for a in server.procs.processes[0].popen.args]  # type: ignore[union-attr]
    server.procs.stop_all()

    def answers() -> bool:
        with redis.Redis(host=server.host, port=server.port, socket_timeout=1) as probe:
            return bool(probe.ping())

    def start() -> None:
        proc = server.procs.start("redis-server", argv)
        wait_until(proc, answers, 20, "answering PING again")

    return start


async def test_counts_outlive_a_failed_flush_and_land_once_redis_is_back() -> None:
    server = start_redis(databases=1)
    try:
        gateway = gateway_for(server.url, routing())
        async with serving(gateway) as client:
            await recommend(client, 1)
            start_again = restart_after(server)
            resp = await client.get("/v1/recommendations?user_id=2")
            assert resp.status == 503  # resolved to m-v1, then Redis failed: an error of m-v1
            await gateway.report()
            assert flush_failures(gateway) == 1
            pending = sum(c[traffic.REQUESTS] for c in gateway.stats.pending.values())
            assert pending == 2
            start_again()
            await gateway.report()
            assert gateway.stats.pending == {}
            with redis.Redis.from_url(server.url) as check:
                got = summed(check, gateway.keys, "m-v1")
        assert (got.requests, got.errors, got.fallbacks, got.impressions) == (2, 1, 1, 1)
        assert sum(got.latency) == 2
    finally:
        server.stop()


async def test_an_increment_redis_refuses_stays_pending_and_the_rest_land(
    redis_url: str, redis_client: redis.Redis
) -> None:
    gateway = gateway_for(redis_url, routing())
    bucket = traffic.bucket_of(time.time())
    broken = gateway.keys.stats("m-v1", bucket)
    redis_client.set(broken, "not a hash")  # HINCRBY on it fails with WRONGTYPE
    gateway.stats.request("m-v1", bucket * 1000, 3.0, impressions=4)
    gateway.stats.request("m-v2", bucket * 1000, 3.0, fallback=True, impressions=4)
    async with serving(gateway):
        assert fields(redis_client, gateway.keys.stats("m-v2", bucket)) == {
            "requests": 1,
            "fallbacks": 1,
            "impressions": 4,
            traffic.latency_field(3.0): 1,
        }
        assert dict(gateway.stats.pending) == {
            ("m-v1", bucket): Counter(
                {"requests": 1, "impressions": 4, traffic.latency_field(3.0): 1}
            )
        }
        assert flush_failures(gateway) == 2  # at start and at the first poll
        redis_client.delete(broken)
        await gateway.report()
        assert fields(redis_client, broken)["impressions"] == 4


@pytest.mark.parametrize(
    ("recorded", "restored", "kept", "dropped"),
    [
        ([10, 20, 30], [], {10: 1, 20: 1, 30: 1}, 0),
        ([10, 20, 30, 40, 50], [], {30: 1, 40: 1, 50: 1}, 2),
        ([10, 10, 10], [], {10: 3}, 0),
        # a flush that failed puts its buckets back; the oldest go first
        ([30, 40], [10, 20], {20: 1, 30: 1, 40: 1}, 1),
        ([30], [30, 30], {30: 3}, 0),  # a bucket still pending takes its increments back
    ],
)
def test_pending_buckets_are_bounded_oldest_dropped_first(
    recorded: list[int], restored: list[int], kept: dict[int, int], dropped: int
) -> None:
    drops: list[int] = []
    stats = TrafficStats(GatewayKeys.of("ns.rec"), drops.append, max_pending=3)
    for bucket in recorded:
        stats.request("m-v1", bucket * 1000, 1.0)
    stats.restore([Increment("m-v1", b, traffic.REQUESTS, 1) for b in restored])
    assert {b: c[traffic.REQUESTS] for (_, b), c in stats.pending.items()} == kept
    assert sum(drops) == dropped


# --- outcome events ----------------------------------------------------------------------

SERVED_MS = (int(time.time()) - 600) * 1000 + 4_321  # an impression ten minutes ago
RANDOM = "ab" * 16


@pytest.mark.parametrize(
    ("table", "request_id", "delay_ms", "kind", "credited"),
    [
        pytest.param(
            routing(), traffic.request_id(RANDOM, SERVED_MS, "s"), 5_000, "click",
            ("m-v1", "event:click"), id="stable",
        ),
        pytest.param(
            routing(canary_weight=10), traffic.request_id(RANDOM, SERVED_MS, "c"), 5_000,
            "click", ("m-v2", "event:click"), id="canary",
        ),
        pytest.param(
            routing(canary_weight=10), traffic.request_id(RANDOM, SERVED_MS, "s"), 5_000,
            "purchase", ("m-v1", "event:purchase"), id="stable-beside-a-canary",
        ),
        # the canary was taken out since the impression: its events go to the stable
        pytest.param(
            routing(), traffic.request_id(RANDOM, SERVED_MS, "c"), 5_000, "click",
            ("m-v1", "event:click"), id="canary-gone",
        ),
        pytest.param(
            routing(), traffic.request_id(RANDOM, SERVED_MS, "s"), WINDOW_MS, "click",
            ("m-v1", "event:click"), id="at-the-window",
        ),
        pytest.param(
            routing(), traffic.request_id(RANDOM, SERVED_MS, "s"), WINDOW_MS + 1, "click",
            ("m-v1", "late:click"), id="past-the-window",
        ),
        pytest.param(
            routing(canary_weight=10), traffic.request_id(RANDOM, SERVED_MS, "c"), 3_600_000,
            "purchase", ("m-v2", "late:purchase"), id="late-canary-purchase",
        ),
        # a client clock behind the gateway's: still within the window
        pytest.param(
            routing(), traffic.request_id(RANDOM, SERVED_MS, "s"), -2_000, "click",
            ("m-v1", "event:click"), id="before-the-impression",
        ),
        # an id that carries no impression time counts nowhere (but is still logged)
        pytest.param(routing(), "0" * 32 + "-s", 5_000, "click", None, id="id-without-time"),
    ],
)  # fmt: skip
async def test_events_are_credited_to_their_impressions_bucket(
    redis_url: str,
    redis_client: redis.Redis,
    table: dict[str, Any],
    request_id: str,
    delay_ms: int,
    kind: str,
    credited: tuple[str, str] | None,
) -> None:
    gateway = gateway_for(redis_url, table)
    event = {"requestId": request_id, "itemId": 3, "type": kind, "timestamp": SERVED_MS + delay_ms}
    async with serving(gateway) as client:
        resp = await client.post("/v1/events", json=event)
        assert resp.status == 202
    assert redis_client.xlen(gateway.keys.events) == 1
    if credited is None:
        assert stats_keys(redis_client, gateway.keys) == []
        return
    version, field = credited
    key = gateway.keys.stats(version, traffic.bucket_of(SERVED_MS / 1000))
    assert stats_keys(redis_client, gateway.keys) == [key]
    assert fields(redis_client, key) == {field: 1}
    assert 0 < redis_client.ttl(key) <= traffic.STATS_TTL_SECONDS


async def test_the_events_of_a_served_response_add_up_in_one_post(
    redis_url: str, redis_client: redis.Redis
) -> None:
    gateway = gateway_for(redis_url, routing())
    async with serving(gateway) as client:
        body = await recommend(client, 7)
        item = body["items"][0]["itemId"]
        events = [
            {"requestId": body["requestId"], "itemId": item, "type": "click", "userId": 7},
            {"requestId": body["requestId"], "itemId": item, "type": "click"},
            {"requestId": body["requestId"], "itemId": item, "type": "purchase"},
        ]
        resp = await client.post("/v1/events", json={"events": events})
        assert resp.status == 202
    served_ms = traffic.served_ms_of(body["requestId"])
    assert served_ms is not None
    got = fields(redis_client, gateway.keys.stats("m-v1", traffic.bucket_of(served_ms / 1000)))
    assert (got["event:click"], got["event:purchase"], got["impressions"]) == (2, 1, 1)
    counts = summed(redis_client, gateway.keys, "m-v1")
    assert counts.events == {"click": 2, "purchase": 1}


async def test_a_counter_redis_refuses_does_not_refuse_the_event(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """The event is logged either way; a 503 would only have the client send it twice."""
    gateway = gateway_for(redis_url, routing())
    key = gateway.keys.stats("m-v1", traffic.bucket_of(SERVED_MS / 1000))
    redis_client.set(key, "not a hash")
    event = {"requestId": traffic.request_id(RANDOM, SERVED_MS, "s"), "itemId": 3, "type": "click"}
    async with serving(gateway) as client:
        resp = await client.post("/v1/events", json=event)
        assert resp.status == 202
        assert flush_failures(gateway) == 1
    assert redis_client.xlen(gateway.keys.events) == 1


# --- heartbeat and standby ---------------------------------------------------------------


async def test_the_heartbeat_names_the_loaded_indexes_and_goes_at_stop(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOSTNAME", "movies-gateway-7f9c-x2")
    gateway = gateway_for(redis_url, routing(canary_weight=20, standby=True))
    async with serving(gateway) as client:
        raw = redis_client.hget(gateway.keys.replicas, "movies-gateway-7f9c-x2")
        assert raw is not None
        beat = traffic.Heartbeat.from_json(raw)
        assert beat.loaded == ("mem://m-v0", "mem://m-v1", "mem://m-v2")
        assert (beat.stable, beat.canary, beat.canary_weight) == ("m-v1", "m-v2", 20)
        assert traffic.live({"r": beat}, time.time())
        resp = await client.get("/readyz")
        assert resp.status == 200
        ready = await resp.json()
        assert ready["replica"] == "movies-gateway-7f9c-x2"
        assert ready["standby"] == {"modelVersion": "m-v0", "index": "mem://m-v0", "loaded": True}
        assert ready["indexes"] == ["mem://m-v0", "mem://m-v1", "mem://m-v2"]
        # the standby is loaded, never served
        versions = {(await recommend(client, u))["modelVersion"] for u in range(30)}
        assert versions == {"m-v1", "m-v2"}
    assert redis_client.hget(gateway.keys.replicas, "movies-gateway-7f9c-x2") is None


@pytest.mark.parametrize(
    ("hostname", "expected"),
    [
        ("movies-gateway-7f9c-x2", "movies-gateway-7f9c-x2"),
        (None, f"{socket.gethostname()}-{os.getpid()}"),
        ("", f"{socket.gethostname()}-{os.getpid()}"),
    ],
)
def test_the_replica_is_named_by_its_pod(
    monkeypatch: pytest.MonkeyPatch, hostname: str | None, expected: str
) -> None:
    if hostname is None:
        monkeypatch.delenv("HOSTNAME", raising=False)
    else:
        monkeypatch.setenv("HOSTNAME", hostname)
    assert replica_id() == expected
