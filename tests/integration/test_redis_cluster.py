"""The online store on a real Redis Cluster (three primaries, a replica each): the
materializer's full and incremental runs spread a view's keys over the primaries and switch the
pointer, the gateway's store reads through the asyncio cluster client, the history Job and the
log join run against the cluster, and the operator publishes routing and deletes a keyspace
from every primary. Tests share the cluster and isolate by key prefix (it has only db 0)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pyarrow.parquet as pq
import pytest
import redis
import redis.asyncio.cluster
import redis.cluster
from test_feature_key_prefix import OWNER, _example
from test_history_seed import T0 as HISTORY_T0
from test_history_seed import write_interactions
from test_logjoin_workload import RECOMMENDER, record, run_join
from test_materialize import HOUR, T0, VIEW, make_config, row, run, write_rows

from recsys_contract.gateway import FeatureViewRef, RoutingTable, Variant
from recsys_contract.keyspace import FeatureViewKeys, GatewayKeys, IndexAlias, PrecomputedList
from recsys_contract.online_client import AsyncRedis, async_redis
from recsys_operator.api.recommender import Recommender
from recsys_operator.api.stores import RedisStore
from recsys_operator.online import OnlineStore, delete_keyspace, publish_routing
from recsys_operator.planning.rollout import Routing
from recsys_operator.planning.serving import GATEWAY_CONFIG_FILE, gateway_objects, routing_table
from recsys_workloads.featurestore.reader import read_online_features
from recsys_workloads.gateway.app import Gateway
from recsys_workloads.gateway.config import parse_gateway_config
from recsys_workloads.gateway.control import block_items, mark_seen
from recsys_workloads.gateway.served_log import EventRecord
from recsys_workloads.gateway.store import GatewayStore
from recsys_workloads.history import seed
from recsys_workloads.runtime import EXIT_OK
from testbed.redis_server import RedisCluster

pytestmark = pytest.mark.redis

USERS = 200


@pytest.fixture(autouse=True)
def _no_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_PASSWORD", raising=False)


@pytest.fixture
def cluster_client(redis_cluster: RedisCluster) -> Iterator[redis.cluster.RedisCluster]:
    client = redis.cluster.RedisCluster.from_url(redis_cluster.url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
async def async_cluster(redis_cluster: RedisCluster) -> AsyncIterator[AsyncRedis]:
    client = async_redis(redis_cluster.url, cluster=True)
    try:
        yield client
    finally:
        await client.aclose()


def keys_per_primary(cluster: RedisCluster, pattern: str) -> list[int]:
    """How many keys matching ``pattern`` each primary holds (each asked on its own)."""
    counts = []
    for client in cluster.primary_clients():
        with client:
            counts.append(sum(1 for _ in client.scan_iter(match=pattern, count=1000)))
    return counts


def cluster_config(source: str, cluster: RedisCluster, prefix: str, **extra: Any) -> dict[str, Any]:
    online = {"redisUrl": cluster.url, "redisCluster": True, "keyPrefix": prefix}
    return make_config(source, cluster.url, onlineStore=online, **extra)


def test_full_then_incremental_runs_spread_keys_and_switch_the_pointer(
    tmp_path: Path,
    redis_cluster: RedisCluster,
    cluster_client: redis.cluster.RedisCluster,
    cluster_prefix: str,
) -> None:
    keys = FeatureViewKeys.of(VIEW, cluster_prefix)
    rows = [row(user, T0 - 2 * HOUR, 20 + user % 50) for user in range(USERS)]
    source = write_rows(tmp_path / "users.parquet", rows)
    code, full = run(
        cluster_config(source, redis_cluster, cluster_prefix, graceSeconds=0), tmp_path
    )
    assert code == EXIT_OK, full
    assert (full["mode"], full["entitiesWritten"]) == ("full", USERS)
    spread = keys_per_primary(redis_cluster, keys.layer(full["version"]) + "*")
    assert sum(spread) == USERS
    assert sum(1 for n in spread if n) > 1, spread  # not all on one node
    assert json.loads(cluster_client.get(keys.live))["layers"] == [full["version"]]  # type: ignore[arg-type]
    got = read_online_features(cluster_client, keys, [0, 7, USERS + 1]).rows
    assert [r["age"] if r else None for r in got] == [20, 27, None]

    changed = [row(user, T0 + HOUR, 90) for user in (3, 150)]
    source = write_rows(tmp_path / "users.parquet", rows + changed)  # the same source
    later = (T0 + 2 * HOUR).isoformat()
    inc_cfg = cluster_config(source, redis_cluster, cluster_prefix, asOf=later, graceSeconds=0)
    code, inc = run(inc_cfg, tmp_path)
    assert code == EXIT_OK, inc
    assert (inc["mode"], inc["entitiesWritten"]) == ("incremental", 2)
    pointer = json.loads(cluster_client.get(keys.live))  # type: ignore[arg-type]
    assert pointer["layers"] == [inc["version"], full["version"]]
    got = read_online_features(cluster_client, keys, [3, 150, 4]).rows
    assert [r["age"] if r else None for r in got] == [90, 90, 24]

    # a full run retires both layers; the next one unlinks what is left of them on every node
    full_cfg = cluster_config(
        source, redis_cluster, cluster_prefix, asOf=later, mode="full", graceSeconds=0
    )
    assert run(full_cfg, tmp_path)[0] == EXIT_OK
    code, last = run(full_cfg, tmp_path)
    assert code == EXIT_OK, last
    assert set(last["reclaimedLayers"]) >= {full["version"], inc["version"]}
    assert sum(keys_per_primary(redis_cluster, keys.layer(full["version"]) + "*")) == 0
    assert sum(keys_per_primary(redis_cluster, keys.layer(last["version"]) + "*")) == USERS


async def test_the_gateway_store_reads_through_the_cluster_client(
    tmp_path: Path,
    redis_cluster: RedisCluster,
    cluster_client: redis.cluster.RedisCluster,
    async_cluster: AsyncRedis,
    cluster_prefix: str,
) -> None:
    rows = [row(user, T0 - HOUR, 30 + user) for user in range(20)]
    source = write_rows(tmp_path / "users.parquet", rows)
    code, summary = run(cluster_config(source, redis_cluster, cluster_prefix), tmp_path)
    assert code == EXIT_OK, summary
    gw = GatewayKeys.of(RECOMMENDER, cluster_prefix + ":")
    mark_seen(cluster_client, gw, 5, [11], at_ms=1_000)
    mark_seen(cluster_client, gw, 5, [12], at_ms=2_000)
    block_items(cluster_client, gw, [40])
    block_items(cluster_client, gw, [41], user_id=5)
    stored = PrecomputedList("v1", 2_000, (7, 8), (0.9, 0.5))
    cluster_client.set(gw.precomputed("v1", 5), stored.to_json())
    view = FeatureViewRef(name=VIEW, key_prefix=cluster_prefix, features=["age", "city"])
    store = GatewayStore(async_cluster, gw, [view], [], 60.0)
    features, sets = await store.request_reads(
        5,
        seen=True,
        blocked=True,
        seen_since_ms=None,
        history=5,
        precomputed=gw.precomputed("v1", 5),
    )
    assert features == {"age": 35, "city": "Lisbon"}
    assert (sets.seen, sets.blocked) == (frozenset({11, 12}), frozenset({40, 41}))
    assert sets.history == (12, 11)  # most recent first
    assert sets.precomputed is not None
    assert PrecomputedList.from_json(sets.precomputed) == stored


async def test_the_gateway_the_operator_renders_for_a_cluster_reads_it(
    redis_cluster: RedisCluster, cluster_client: redis.cluster.RedisCluster, cluster_prefix: str
) -> None:
    raw = _example("Recommender", "movies")
    prefix = cluster_prefix + ":"
    raw["spec"]["stores"]["redis"] = {
        "url": redis_cluster.url,
        "mode": "Cluster",
        "keyPrefix": prefix,
    }
    rec = Recommender.model_validate(raw)
    table = routing_table(rec, Routing("m-v1"), {"m-v1": None})
    config_map = gateway_objects(rec, OWNER, table, "img", {})[0]
    gateway = Gateway(parse_gateway_config(json.loads(config_map["data"][GATEWAY_CONFIG_FILE])))
    try:
        assert isinstance(gateway.redis, redis.asyncio.cluster.RedisCluster)
        gw = gateway.keys
        assert gw == GatewayKeys.of("shop.movies", prefix)
        block_items(cluster_client, gw, [40, 42])
        mark_seen(cluster_client, gw, 9, [11], at_ms=1_000)
        sets = await gateway.store.item_filters(9, seen=True, blocked=True, seen_since_ms=None)
        assert (sets.seen, sets.blocked) == (frozenset({11}), frozenset({40, 42}))
    finally:
        await gateway.stop()


def test_the_history_job_seeds_every_users_set_on_the_cluster(
    tmp_path: Path,
    redis_cluster: RedisCluster,
    cluster_client: redis.cluster.RedisCluster,
    cluster_prefix: str,
) -> None:
    users = 60
    uri = write_interactions(tmp_path / "interactions", [(u, 100 + u, u) for u in range(users)])
    online = {
        "redisUrl": redis_cluster.url,
        "redisCluster": True,
        "keyPrefix": cluster_prefix + ":",
    }
    cfg = {"recommender": RECOMMENDER, "interactionsUri": uri, "onlineStore": online}
    assert seed(cfg) == {"users": users, "pairs": users, "interactions": users}
    gw = GatewayKeys.of(RECOMMENDER, cluster_prefix + ":")
    at_ms = (HISTORY_T0.timestamp() + 7) * 1000
    assert cluster_client.zrange(gw.seen(7), 0, -1, withscores=True) == [(b"107", at_ms)]
    spread = keys_per_primary(redis_cluster, gw.seen("*"))
    assert sum(spread) == users
    assert sum(1 for n in spread if n) > 1, spread


def test_the_log_join_advances_its_cursor_on_the_cluster(
    tmp_path: Path, cluster_client: redis.cluster.RedisCluster, redis_cluster: RedisCluster,
    cluster_prefix: str,
) -> None:  # fmt: skip
    gw = GatewayKeys.of(RECOMMENDER, cluster_prefix + ":")
    served = record(1, 20_000 * 86_400_000)
    cluster_client.xadd(gw.served, served.to_fields())  # type: ignore[arg-type]
    click = EventRecord(served.request_id, served.ts_ms + 50, "click", 12, served.user_id)
    cluster_client.xadd(gw.events, click.to_fields())  # type: ignore[arg-type]
    out = tmp_path / "logged"
    online = {
        "redisUrl": redis_cluster.url,
        "redisCluster": True,
        "keyPrefix": cluster_prefix + ":",
    }
    cfg = {"recommender": RECOMMENDER, "onlineStore": online, "outputUri": str(out),
           "waitSeconds": 0}  # fmt: skip
    _, summary = run_join(tmp_path, cfg)
    assert summary is not None
    assert (summary["responses"], summary["rows"], summary["positives"]) == (1, 3, 1)
    served_id = cluster_client.xrange(gw.served)[0][0].decode()  # type: ignore[index]
    assert cluster_client.get(gw.logjoin_cursor) == served_id.encode()
    assert cluster_client.get(gw.logjoin_pending) is None
    [part] = out.glob("date=*/part-*.parquet")
    assert [r["clicked"] for r in pq.read_table(part, partitioning=None).to_pylist()] == [
        False, True, False
    ]  # fmt: skip


async def test_the_operator_publishes_routing_and_deletes_keyspaces_on_every_primary(
    redis_cluster: RedisCluster, cluster_client: redis.cluster.RedisCluster, cluster_prefix: str
) -> None:
    online = OnlineStore(kube=cast(Any, None))
    store = RedisStore(url=redis_cluster.url, key_prefix=cluster_prefix + ":", mode="Cluster")
    client = await online.client(store, "shop")
    try:
        gw = GatewayKeys.of(RECOMMENDER, cluster_prefix + ":")
        table = RoutingTable(stable=Variant(model_version="v1", triton="triton:8000"))
        alias = IndexAlias("file:///ix/v1", "v1")
        assert await publish_routing(client, gw, table, alias)
        assert not await publish_routing(client, gw, table, alias)  # the same: not rewritten
        assert IndexAlias.from_json(cluster_client.get(gw.index_alias)) == alias  # type: ignore[arg-type]
        assert json.loads(cluster_client.get(gw.routing))["stable"]["modelVersion"] == "v1"  # type: ignore[arg-type]
        for user in range(50):
            mark_seen(cluster_client, gw, user, [1], at_ms=1)
        assert sum(1 for n in keys_per_primary(redis_cluster, gw.base + ":*") if n) > 1
        assert await delete_keyspace(client, gw.base) == 52
        assert keys_per_primary(redis_cluster, cluster_prefix + ":*") == [0, 0, 0]
    finally:
        await online.close()
