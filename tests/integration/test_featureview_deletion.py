"""Deleting a FeatureView deletes its Redis keyspace: real materializer runs write the keys, the
operator's finalizer holds the FeatureView until every one of them is gone, and a Redis that is
down keeps it (with a Warning Event saying why) until Redis is back.

The materializer runs in the test process with the config the operator rendered into the
FeatureView's ConfigMap (its CronJob's pod would mount that file); the run the operator sees is
a Job made from its CronJob, ended by ``materialize`` as in the other operator tests.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from fixtures.kube import Testbed
from fixtures.operator import OperatorProcess, eventually, get, materialize
from recsys_contract.keyspace import FeatureViewKeys
from recsys_operator.planning.finalizers import KEYSPACE_FINALIZER
from recsys_workloads import materialize as materializer
from testbed.redis_server import RedisServer, start_redis

pytestmark = [pytest.mark.testbed, pytest.mark.redis]

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def feature_view(source: Path, redis_url: str) -> dict[str, Any]:
    return {
        "apiVersion": "recsys.dev/v1alpha1",
        "kind": "FeatureView",
        "metadata": {"name": "users"},
        "spec": {
            "entity": {"name": "user", "joinKeys": ["user_id"]},
            "source": {"path": source.as_uri(), "timestampField": "event_timestamp"},
            "features": [{"name": "age", "dtype": "Int64"}],
            "ttl": "720h",
            "onlineStore": {"redis": {"url": redis_url}},
            "materialization": {"cronJob": {"schedule": "0 3 1 1 *"}},
        },
    }


def write_source(directory: Path, part: int, users: range, at: dt.datetime) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "user_id": pa.array(list(users), pa.int64()),
            "event_timestamp": pa.array([at] * len(users), pa.timestamp("us", tz="UTC")),
            "age": pa.array([20 + u % 50 for u in users], pa.int64()),
        }
    )
    pq.write_table(table, directory / f"part-{part}.parquet")


def run_materializer(testbed: Testbed, ns: str, tmp_path: Path, as_of: dt.datetime) -> None:
    """The real materializer, on the config the operator rendered for the CronJob."""
    cm = get(testbed, "configmap", "users-materialize", ns)
    assert cm is not None
    config = json.loads(cm["data"]["config.json"])
    config["asOf"] = as_of.isoformat()
    path = tmp_path / f"config-{as_of.timestamp():.0f}.json"
    path.write_text(json.dumps(config))
    log = tmp_path / "termination-log"
    code = materializer.main(["--config", str(path), "--termination-log", str(log)])
    assert code == 0, log.read_text()


def view_keys(client: redis.Redis, keys: FeatureViewKeys) -> list[bytes]:
    return sorted(client.scan_iter(match=f"{keys.base}:*", count=1000))


@pytest.fixture
def online(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, so it can be stopped and brought back on its port."""
    server = start_redis(databases=1)
    try:
        yield server
    finally:
        server.stop()


def fill_and_run(
    testbed: Testbed, ns: str, operator: OperatorProcess, tmp_path: Path, redis_url: str
) -> None:
    """Apply the FeatureView, run it (a Job the operator sees), and write its keyspace with the
    real materializer: a full run, then an incremental one (a second layer)."""
    source = tmp_path / "users"
    write_source(source, 0, range(200), NOW - dt.timedelta(hours=3))
    obj = feature_view(source, redis_url)
    testbed.kubectl("apply", "--server-side", "-n", ns, "-f", "-", input=json.dumps(obj))
    eventually(lambda: get(testbed, "configmap", "users-materialize", ns), 60,
               "the rendered config", operator=operator)  # fmt: skip
    materialize(testbed, ns)
    eventually(
        lambda: KEYSPACE_FINALIZER
        in ((get(testbed, "featureview", "users", ns) or {}).get("metadata", {}).get("finalizers")
            or []),
        60, "the finalizer once a run exists", operator=operator,
    )  # fmt: skip
    run_materializer(testbed, ns, tmp_path, NOW - dt.timedelta(hours=2))
    write_source(source, 1, range(150, 260), NOW - dt.timedelta(hours=1))
    run_materializer(testbed, ns, tmp_path, NOW)


def events(testbed: Testbed, ns: str, reason: str) -> list[str]:
    out = json.loads(testbed.kubectl("get", "events", "-n", ns, "-o", "json").stdout)
    return [e["message"] for e in out["items"] if e["reason"] == reason]


def test_deleting_a_feature_view_leaves_no_key_behind(
    testbed: Testbed,
    namespace: str,
    operator: OperatorProcess,
    online: RedisServer,
    tmp_path: Path,
) -> None:
    client = redis.Redis.from_url(online.url)
    keys = FeatureViewKeys.of(f"{namespace}.users")
    # Neighbours that must stay: a view whose name starts the same, and the same name in
    # another namespace and under another prefix.
    neighbours = [f"fv:{namespace}.users2:live", "fv:other.users:live", f"team:{namespace}"
                  ".users:live"]  # fmt: skip
    for key in neighbours:
        client.set(key, "x")
    fill_and_run(testbed, namespace, operator, tmp_path, online.url)
    written = view_keys(client, keys)
    assert keys.live.encode() in written
    assert keys.seq.encode() in written
    assert any(k.startswith(keys.layer(1).encode()) for k in written)
    assert any(k.startswith(keys.layer(2).encode()) for k in written)
    assert len(written) > 300  # 200 + 110 entities, the pointer and the books

    testbed.kubectl("delete", "featureview", "users", "-n", namespace, "--wait=false")
    eventually(lambda: get(testbed, "featureview", "users", namespace) is None, 60,
               "the FeatureView gone", operator=operator)  # fmt: skip
    assert view_keys(client, keys) == []
    assert sorted(client.keys("*")) == sorted(k.encode() for k in neighbours)
    (deleted,) = events(testbed, namespace, "KeyspaceDeleted")
    assert deleted == f"deleted {len(written)} keys of {keys.base}:*"
    # Its runs went before the keys did; the CronJob too.
    assert (
        json.loads(testbed.kubectl("get", "jobs", "-n", namespace, "-o", "json").stdout)["items"]
        == []
    )
    assert get(testbed, "cronjob", "users-materialize", namespace) is None


def test_a_feature_view_that_never_ran_gets_no_finalizer(
    testbed: Testbed, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    """Nothing in Redis yet: no finalizer, so it deletes at once even with no Redis at all."""
    obj = feature_view(tmp_path / "users", "redis://127.0.0.1:1/0")
    testbed.kubectl("apply", "--server-side", "-n", namespace, "-f", "-", input=json.dumps(obj))
    eventually(lambda: get(testbed, "cronjob", "users-materialize", namespace), 60,
               "the CronJob", operator=operator)  # fmt: skip
    assert not get(testbed, "featureview", "users", namespace)["metadata"].get(  # type: ignore[index]
        "finalizers"
    )
    testbed.kubectl("delete", "featureview", "users", "-n", namespace, "--timeout=30s")
    assert get(testbed, "featureview", "users", namespace) is None


def test_a_redis_that_is_down_keeps_the_feature_view_until_it_is_back(
    testbed: Testbed,
    namespace: str,
    operator: OperatorProcess,
    online: RedisServer,
    tmp_path: Path,
) -> None:
    fill_and_run(testbed, namespace, operator, tmp_path, online.url)
    port = online.port
    online.stop()  # no persistence: its keys go with it; written again below
    testbed.kubectl("delete", "featureview", "users", "-n", namespace, "--wait=false")
    message = eventually(
        lambda: next(iter(events(testbed, namespace, "KeyspaceNotDeleted")), None),
        60,
        "a Warning Event saying why the deletion waits",
        operator=operator,
    )
    assert f"127.0.0.1:{port}" in message
    assert KEYSPACE_FINALIZER in message
    held = get(testbed, "featureview", "users", namespace)
    assert held is not None
    assert held["metadata"]["deletionTimestamp"]
    assert held["metadata"]["finalizers"] == [KEYSPACE_FINALIZER]

    back = start_redis(databases=1, port=port)
    try:
        client = redis.Redis.from_url(back.url)
        keys = FeatureViewKeys.of(f"{namespace}.users")
        # What a persistent Redis would still hold: a pointer and a layer's entities.
        client.set(keys.live, "{}")
        client.mset({keys.entity(1, u): "x" for u in range(50)})
        eventually(lambda: get(testbed, "featureview", "users", namespace) is None, 120,
                   "the FeatureView gone once Redis is back", operator=operator)  # fmt: skip
        assert view_keys(client, keys) == []
    finally:
        back.stop()
