"""The gateway's decisions that need no server: which index a variant reads, request ids,
event validation, the circuit breaker and the index pool's swap."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import redis.asyncio

from recsys_contract import traffic
from recsys_contract.gateway import RoutingTable, Variant
from recsys_contract.keyspace import GatewayKeys, IndexAlias
from recsys_workloads import ann_index
from recsys_workloads.gateway.app import parse_events
from recsys_workloads.gateway.config import parse_gateway_config, parse_routing
from recsys_workloads.gateway.http1 import KeepAlivePool
from recsys_workloads.gateway.index_pool import Candidates, IndexPool, LoadedIndex
from recsys_workloads.gateway.metrics import GatewayMetrics
from recsys_workloads.gateway.pipeline import (
    NotReady,
    RecommendationService,
    Routing,
    index_uri_for,
    new_request_id,
    variant_of_request,
    wanted_indexes,
)
from recsys_workloads.gateway.served_log import StreamWriter
from recsys_workloads.gateway.store import GatewayStore
from recsys_workloads.gateway.triton_client import (
    Breaker,
    TritonClient,
    ranker_request,
    user_tower_request,
)
from recsys_workloads.runtime import BadInputError

STABLE = Variant(model_version="m-v1", triton="t:1", index="file:///ix/m-v1")
CANARY = Variant(model_version="m-v2", triton="t:2", index="file:///ix/m-v2")


def test_stable_follows_a_matching_alias_and_ignores_a_foreign_one() -> None:
    assert index_uri_for("stable", STABLE, None) == "file:///ix/m-v1"
    rebuilt = IndexAlias("file:///ix/m-v1-rebuilt", "m-v1")
    assert index_uri_for("stable", STABLE, rebuilt) == "file:///ix/m-v1-rebuilt"
    assert index_uri_for("stable", STABLE, IndexAlias("file:///ix/x")) == "file:///ix/x"
    # an alias already moved to m-v2 while the table still says m-v1 is stable: the m-v1
    # tower must not query m-v2's embedding space
    assert index_uri_for("stable", STABLE, IndexAlias("file:///ix/m-v2", "m-v2")) == (
        "file:///ix/m-v1"
    )
    assert index_uri_for("canary", CANARY, rebuilt) == "file:///ix/m-v2"


STANDBY = Variant(model_version="m-v0", triton="t:0", index="file:///ix/m-v0")
ALIAS_B = IndexAlias("file:///ix/m-v1-b", "m-v1")


@pytest.mark.parametrize(
    ("table", "alias", "wanted"),
    [
        (RoutingTable(stable=STABLE), None, {"file:///ix/m-v1"}),
        (
            RoutingTable(stable=STABLE, canary=CANARY, canary_weight=10),
            None,
            {"file:///ix/m-v1", "file:///ix/m-v2"},
        ),
        (
            RoutingTable(stable=STABLE, canary=CANARY, canary_weight=10),
            ALIAS_B,
            {"file:///ix/m-v1-b", "file:///ix/m-v2"},
        ),
        # the standby is loaded though never served, and it does not follow the alias
        (
            RoutingTable(stable=STABLE, standby=STANDBY),
            ALIAS_B,
            {"file:///ix/m-v1-b", "file:///ix/m-v0"},
        ),
        (
            RoutingTable(stable=STABLE, canary=CANARY, canary_weight=5, standby=STANDBY),
            None,
            {"file:///ix/m-v1", "file:///ix/m-v2", "file:///ix/m-v0"},
        ),
        (
            RoutingTable(stable=STABLE, standby=STANDBY.model_copy(update={"index": None})),
            None,
            {"file:///ix/m-v1"},
        ),
    ],
)
def test_wanted_indexes(table: RoutingTable, alias: IndexAlias | None, wanted: set[str]) -> None:
    assert wanted_indexes(Routing(table, "redis", alias)) == wanted


@pytest.mark.parametrize(
    ("request_id", "variant"),
    [
        (new_request_id("stable", 1_700_000_000_123), "stable"),
        (new_request_id("canary", 1_700_000_000_123), "canary"),
        ("0" * 32 + "-s", "stable"),  # minted before ids carried a time
        ("0" * 32 + "-c", "canary"),
        ("made-up", None),
        ("-s", None),
        ("abc-x", None),
        ("abc", None),
    ],
)
def test_request_ids_carry_their_variant(request_id: str, variant: str | None) -> None:
    assert variant_of_request(request_id) == variant


def test_request_ids_are_unique_and_carry_the_impression_time() -> None:
    a, b = new_request_id("stable", 1_700_000_000_123), new_request_id("stable", 1_700_000_000_123)
    assert a != b
    assert traffic.served_ms_of(a) == 1_700_000_000_123


def test_events_validate_and_name_the_field() -> None:
    rid = new_request_id("canary", 1_000)
    events = parse_events({"events": [{"requestId": rid, "itemId": 5, "type": "click"}]}, 1000)
    assert events[0].ts_ms == 1000
    assert events[0].user_id is None
    one = parse_events(
        {"requestId": rid, "itemId": 5, "type": "purchase", "userId": 3, "timestamp": 7}, 1000
    )
    assert (one[0].type, one[0].user_id, one[0].ts_ms) == ("purchase", 3, 7)
    cases = [
        ([], "no events"),
        ([{"requestId": "x", "itemId": 1, "type": "click"}], "events[0].requestId"),
        ([{"requestId": rid, "itemId": "1", "type": "click"}], "events[0].itemId"),
        ([{"requestId": rid, "itemId": 1, "type": "like"}], "events[0].type"),
        ([{"requestId": rid, "itemId": 1, "type": "click", "userId": True}], "events[0].userId"),
        ([{"requestId": rid, "itemId": 1, "type": "click", "timestamp": -1}], "timestamp"),
        ([{"requestId": rid, "itemId": 1, "type": "click"}, 5], "events[1]: must be an object"),
    ]
    for body, named in cases:
        with pytest.raises(BadInputError, match="events") as err:
            parse_events(body, 1000)
        assert named in str(err.value)


def test_breaker_opens_after_failures_and_probes_after_cooldown() -> None:
    now = [0.0]
    b = Breaker(threshold=3, cooldown=2.0, clock=lambda: now[0])
    for _ in range(3):
        assert b.allow()
        b.failure()
    assert not b.allow()
    now[0] = 2.5
    assert b.allow()  # one probe
    assert not b.allow()  # and only one
    b.failure()
    assert not b.allow()
    now[0] = 5.0
    assert b.allow()
    b.success()
    assert b.allow()
    assert b.allow()


def test_triton_request_bodies() -> None:
    body = user_tower_request(7, {"age": 30})
    assert body["inputs"][0] == {
        "name": "user_id",
        "shape": [1, 1],
        "datatype": "INT64",
        "data": [7],
    }
    assert body["inputs"][1]["data"] == ['{"age":30}']
    assert user_tower_request(7, None)["inputs"][1]["data"] == ["null"]
    assert len(body["inputs"]) == 2  # no history: the optional input is left out
    with_history = user_tower_request(7, None, (5, 3))["inputs"][2]
    assert with_history == {"name": "history", "shape": [1, 2], "datatype": "INT64", "data": (5, 3)}
    ranked = ranker_request(7, None, [3, 4, 5])
    assert ranked["inputs"][2]["shape"] == [1, 3]
    assert ranked["outputs"] == [{"name": "scores"}]


def flat_index(version: str, n: int, seed: int, uri: str | None = None) -> LoadedIndex:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(1000 * seed, 1000 * seed + n, dtype=np.int64)
    index = ann_index.build_index(vectors, ids, ann_index.IndexParams(kind="flat"))
    popular = Candidates(ids[:1], np.array([5.0], dtype=np.float32))
    return LoadedIndex(uri or f"mem://{version}", version, index, n, popular)


async def test_pool_keeps_the_old_index_until_the_new_one_is_live() -> None:
    gate = threading.Event()
    events: list[tuple[str, str]] = []

    def loader(uri: str) -> LoadedIndex:
        if uri == "mem://b":
            gate.wait(5)
        if uri == "mem://bad":
            raise ValueError("corrupt index")
        return flat_index(uri[6:], 50, 1 if uri == "mem://a" else 2)

    pool = IndexPool(loader, lambda e, u: events.append((e, u)))
    pool.want({"mem://a"})
    await pool.loading["mem://a"]
    pool.want({"mem://b"})
    await asyncio.sleep(0.05)
    assert pool.get("mem://a") is not None  # still serving while b loads
    assert "mem://b" in pool.loading
    query = np.ones(8, dtype=np.float32) / np.sqrt(8)
    found = pool.get("mem://a").search(query, 5)  # type: ignore[union-attr]
    assert len(found) == 5
    assert ((found.ids >= 1000) & (found.ids < 2000)).all()
    assert (np.diff(found.scores) <= 1e-6).all()
    gate.set()
    await pool.loading["mem://b"]
    pool.want({"mem://b"})
    assert pool.get("mem://a") is None  # dropped once b is live
    found = pool.get("mem://b").search(query, 500)  # type: ignore[union-attr]
    assert len(found) == 50  # k above the item count is capped
    assert ((found.ids >= 2000) & (found.ids < 3000)).all()
    pool.want({"mem://b", "mem://bad"})
    await pool.loading["mem://bad"]
    assert ("load_failed", "mem://bad") in events
    assert pool.get("mem://b") is not None  # a bad index never takes the good one away
    pool.want({"mem://b", "mem://bad"})
    assert "mem://bad" not in pool.loading  # not retried at once
    await pool.close()


async def test_a_variant_keeps_its_index_until_the_aliased_one_is_loaded() -> None:
    """The alias moves at once; requests keep the index they had until the new one is live,
    but never query an index of another model version."""
    gate = threading.Event()

    def loader(uri: str) -> LoadedIndex:
        if uri == "mem://b":
            gate.wait(5)
        version = {"mem://a": "m-v1", "mem://b": "m-v1", "mem://c": "m-v2"}[uri]
        return flat_index(version, 20, {"mem://a": 1, "mem://b": 2, "mem://c": 3}[uri], uri)

    cfg = parse_gateway_config(
        {
            "recommender": "ns.rec",
            "routing": {"stable": {"modelVersion": "m-v1", "triton": "t:1", "index": "mem://a"}},
            "redisUrl": "redis://127.0.0.1:1/0",
        }
    )
    pool = IndexPool(loader, lambda e, u: None)
    client = redis.asyncio.Redis()
    service = RecommendationService(
        cfg,
        GatewayStore(client, GatewayKeys.of("ns.rec"), [], [], 1.0),
        TritonClient(KeepAlivePool()),
        pool,
        GatewayMetrics(),
        StreamWriter(client, "s", 1000, lambda r, n: None),
    )
    with pytest.raises(NotReady):
        service.resolve(1)
    pool.want(wanted_indexes(service.routing))
    await pool.loading["mem://a"]
    assert service.resolve(1).index.uri == "mem://a"
    service.routing = Routing(cfg.routing, "redis", IndexAlias("mem://b", "m-v1"))
    pool.want(wanted_indexes(service.routing))
    assert service.resolve(1).index.uri == "mem://a"  # b is loading: no 503
    gate.set()
    await pool.loading["mem://b"]
    assert service.resolve(1).index.uri == "mem://b"
    promoted = parse_routing(
        {"stable": {"modelVersion": "m-v2", "triton": "t:1", "index": "mem://c"}}
    )
    service.routing = Routing(promoted, "redis", IndexAlias("mem://b", "m-v1"))
    with pytest.raises(NotReady):  # m-v2's tower must not query m-v1's index
        service.resolve(1)
    pool.want(wanted_indexes(service.routing))
    await pool.loading["mem://c"]
    assert service.resolve(1).index.version == "m-v2"
    await pool.close()
    await client.aclose()
