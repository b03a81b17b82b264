"""FeatureView → Redis materialization against a real redis-server.

Point-in-time correctness, TTL, blue/green switching (observed by a concurrent reader),
incremental runs, reclaiming a killed run's layer, and every bad-input path: each one must
leave the live version exactly as it was.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
import redis.asyncio

from recsys_contract.keyspace import FeatureViewKeys
from recsys_workloads import materialize
from recsys_workloads.featurestore.reader import aread_online_features, read_online_features
from recsys_workloads.runtime import EXIT_BAD_INPUT, EXIT_OK, EXIT_TRANSIENT
from testbed.redis_server import start_redis

pytestmark = pytest.mark.redis

T0 = datetime(2024, 5, 1, tzinfo=UTC)
VIEW = "shop.users"
HOUR = timedelta(hours=1)
SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("event_timestamp", pa.timestamp("us", tz="UTC")),
        ("age", pa.int32()),
        ("city", pa.string()),
        ("score", pa.float32()),
        ("tags", pa.list_(pa.string())),
        ("embedding", pa.list_(pa.float32())),
        ("active", pa.bool_()),
    ]
)
FEATURES = [
    {"name": "age", "type": "int32"},
    {"name": "city", "type": "string"},
    {"name": "score", "type": "float32"},
    {"name": "tags", "type": "string_list"},
    {"name": "embedding", "type": "float_list"},
    {"name": "active", "type": "bool"},
]


def row(user: int, at: datetime, age: int, city: str | None = "Lisbon") -> dict[str, Any]:
    return {
        "user_id": user,
        "event_timestamp": at,
        "age": age,
        "city": city,
        "score": age / 4,
        "tags": [city or "", "x"] if city else [],
        "embedding": [float(age), 0.5],
        "active": age % 2 == 0,
    }


def write_rows(path: Path, rows: list[dict[str, Any]], schema: pa.Schema = SCHEMA) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return str(path)


def write_ages(path: Path, entities: int, age: int) -> Path:
    """``entities`` users (ids 0..n-1), each with ``age``, an hour before T0: a view big enough
    for a run to be caught mid-write."""
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(range(entities), pa.int64()),
                "event_timestamp": pa.array([T0 - HOUR] * entities, pa.timestamp("us", tz="UTC")),
                "age": pa.array([age] * entities, pa.int32()),
            }
        ),
        path,
    )
    return path


def make_config(source: str, redis_url: str, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "featureView": VIEW,
        "joinKey": "user_id",
        "source": {"uri": source, "eventTimestampColumn": "event_timestamp"},
        "features": FEATURES,
        "ttlSeconds": 86_400,
        "onlineStore": {"redisUrl": redis_url},
        "asOf": T0.isoformat(),
        "graceSeconds": 60,
    }
    config.update(overrides)
    return config


def run(config: dict[str, Any], tmp_path: Path) -> tuple[int, dict[str, Any]]:
    """Run the real entry point; return its exit code and termination message."""
    config_path = tmp_path / f"config-{time.monotonic_ns()}.json"
    config_path.write_text(json.dumps(config))
    message = tmp_path / "termination-log"
    code = materialize.main(["--config", str(config_path), "--termination-log", str(message)])
    return code, json.loads(message.read_text())


@pytest.fixture(autouse=True)
def _no_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_PASSWORD", raising=False)


def features(client: redis.Redis, ids: list[int]) -> list[dict[str, Any] | None]:
    return read_online_features(client, FeatureViewKeys.of(VIEW), ids).rows


def test_point_in_time_value_and_ttl(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    source = write_rows(
        tmp_path / "users.parquet",
        [
            row(1, T0 - 3 * HOUR, 30),
            row(1, T0 - HOUR, 31),
            row(1, T0 + HOUR, 99),  # after asOf: must never be served
            row(2, T0 - timedelta(days=10), 40),  # older than the TTL at asOf
            row(3, T0, 50, city=None),  # exactly at asOf counts; a null feature stays null
            row(4, T0 + 2 * HOUR, 60),  # only known in the future: unknown now
        ],
    )
    code, summary = run(make_config(source, redis_url), tmp_path)
    assert code == EXIT_OK, summary
    assert summary["status"] == "Succeeded"
    assert (summary["mode"], summary["rowsRead"], summary["entitiesWritten"]) == ("full", 3, 2)
    one, two, three, four = features(redis_client, [1, 2, 3, 4])
    assert one == {
        "age": 31, "city": "Lisbon", "score": 7.75, "tags": ["Lisbon", "x"],
        "embedding": [31.0, 0.5], "active": False,
    }  # fmt: skip
    assert two is None
    assert three is not None
    assert (three["age"], three["city"], three["tags"], three["active"]) == (50, None, [], True)
    assert four is None
    # The key lives as long as its value's TTL window: written at T0-1h, ttl 24h -> 23h left.
    key = FeatureViewKeys.of(VIEW).layer(summary["version"]) + "1"
    ttl_ms = redis_client.pttl(key)
    assert 23 * 3600_000 - 120_000 < ttl_ms <= 23 * 3600_000


def test_string_join_keys_and_no_ttl(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    schema = pa.schema([("sku", pa.string()), ("ts", pa.timestamp("ms")), ("price", pa.float64())])
    source = write_rows(
        tmp_path / "items.parquet",
        [
            {"sku": "A-1", "ts": datetime(2020, 1, 1), "price": 1.5},
            {"sku": "A-1", "ts": datetime(2021, 1, 1), "price": 2.5},
            {"sku": "B:2", "ts": datetime(2019, 1, 1), "price": 9.0},
        ],
        schema,
    )
    config = {
        **make_config(
            source,
            redis_url,
            featureView="shop.items",
            joinKey="sku",
            ttlSeconds=0,
            features=[{"name": "price", "type": "float64"}],
        ),
        "source": {"uri": source, "eventTimestampColumn": "ts"},
    }
    code, summary = run(config, tmp_path)
    assert code == EXIT_OK, summary
    got = read_online_features(redis_client, FeatureViewKeys.of("shop.items"), ["A-1", "B:2", "C"])
    assert got.rows == [{"price": 2.5}, {"price": 9.0}, None]
    assert redis_client.pttl(FeatureViewKeys.of("shop.items").layer(got.version or 0) + "A-1") == -1


def test_rows_with_the_same_event_time_are_told_apart_by_the_created_time(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    schema = SCHEMA.append(pa.field("created", pa.timestamp("ms", tz="UTC")))
    at = T0 - HOUR
    source = write_rows(
        tmp_path / "users.parquet",
        [
            {**row(1, at, 31), "created": T0 - timedelta(minutes=10)},  # the correction
            {**row(1, at, 30), "created": T0 - timedelta(minutes=50)},  # the first write
            {**row(1, T0 - 2 * HOUR, 29), "created": T0},  # older event, written last
            {**row(2, at, 41), "created": T0 - 2 * HOUR},
            {**row(2, at, 40), "created": None},  # no created time: earliest
        ],
        schema,
    )
    config = make_config(source, redis_url)
    code, summary = run(config, tmp_path)
    assert code == EXIT_OK, summary
    assert [f and f["age"] for f in features(redis_client, [1, 2])] == [30, 40], "read last wins"
    config["source"] = {**config["source"], "createdTimestampColumn": "created"}
    code, summary = run(config, tmp_path)
    assert code == EXIT_OK, summary
    assert summary["mode"] == "full", "a new tie-break is not an increment of the old one"
    assert [f and f["age"] for f in features(redis_client, [1, 2])] == [31, 41]


def test_readers_see_the_old_or_the_new_version_never_a_mix(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    entities = 60_000
    sample = list(range(0, entities, 997))
    schema = pa.schema(
        [
            ("user_id", pa.int64()),
            ("event_timestamp", pa.timestamp("us", tz="UTC")),
            ("generation", pa.int64()),
        ]
    )

    def generation(n: int, at: datetime) -> str:
        table = pa.table(
            {
                "user_id": pa.array(range(entities), pa.int64()),
                "event_timestamp": pa.array([at] * entities, schema.field(1).type),
                "generation": pa.array([n] * entities, pa.int64()),
            }
        )
        path = tmp_path / f"gen{n}.parquet"
        pq.write_table(table, path)
        return str(path)

    fv = [{"name": "generation", "type": "int64"}]
    code, first = run(make_config(generation(1, T0 - HOUR), redis_url, features=fv), tmp_path)
    assert code == EXIT_OK, first
    config = make_config(generation(2, T0 - HOUR / 2), redis_url, features=fv, batchRows=1000)
    outcome: dict[str, Any] = {}
    runner = threading.Thread(
        target=lambda: outcome.update(zip(("code", "summary"), run(config, tmp_path), strict=True))
    )
    seen: set[int] = set()
    mid_run_reads = 0
    new_layer_key = FeatureViewKeys.of(VIEW).layer(first["version"] + 1) + str(sample[0])
    runner.start()
    while runner.is_alive():
        new_layer_started = redis_client.exists(new_layer_key)
        rows = features(redis_client, sample)
        values = {r["generation"] for r in rows if r is not None}
        assert None not in rows, "an entity vanished during the switch"
        assert len(values) == 1, f"a reader saw a mix: {values}"
        seen |= values
        if new_layer_started and values == {1}:
            mid_run_reads += 1  # the new layer was being written and readers still saw the old one
    runner.join()
    assert outcome["code"] == EXIT_OK, outcome
    assert mid_run_reads > 0, "no read happened while the new version was half-written"
    assert {r["generation"] for r in features(redis_client, sample) if r} == {2}
    assert outcome["summary"]["retiredLayers"] == [first["version"]]
    # The replaced version stays readable for the grace period (60 s), then expires.
    old_key = FeatureViewKeys.of(VIEW).layer(first["version"]) + str(sample[0])
    assert 0 < redis_client.pttl(old_key) <= 60_000


def test_incremental_runs_write_only_changed_entities_then_compact(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    folder = tmp_path / "users"
    write_rows(folder / "part-0.parquet", [row(u, T0 - HOUR, 20 + u) for u in range(1, 101)])
    config = make_config(str(folder), redis_url, maxLayers=2)
    code, first = run(config, tmp_path)
    assert (code, first["mode"], first["entitiesWritten"]) == (EXIT_OK, "full", 100)

    write_rows(
        folder / "part-1.parquet",
        [row(u, T0 + HOUR / 2, 70 + u) for u in range(1, 11)] + [row(50, T0 + 2 * HOUR, 0)],
    )
    code, second = run({**config, "asOf": (T0 + HOUR).isoformat()}, tmp_path)
    assert code == EXIT_OK, second
    assert (second["mode"], second["rowsRead"], second["entitiesWritten"]) == (
        "incremental",
        10,
        10,
    )
    assert second["layers"] == [first["version"] + 1, first["version"]]
    got = features(redis_client, [1, 10, 11, 50, 100])
    assert [r["age"] if r else None for r in got] == [71, 80, 31, 70, 120]

    code, third = run({**config, "asOf": (T0 + 3 * HOUR).isoformat()}, tmp_path)
    assert code == EXIT_OK, third
    assert third["mode"] == "full"
    assert "compacting" in third["modeReason"]
    assert third["layers"] == [third["version"]]
    assert sorted(third["retiredLayers"]) == sorted(second["layers"])
    got = features(redis_client, [1, 11, 50])
    assert [r["age"] if r else None for r in got] == [71, 31, 0]


def _live_state(client: redis.Redis) -> tuple[bytes | str | None, int]:
    return client.get(FeatureViewKeys.of(VIEW).live), client.dbsize()


Change = Callable[[dict[str, Any]], dict[str, Any]]
BAD_INPUTS: dict[str, tuple[Change, str]] = {
    "missing feature column": (
        lambda c: {**c, "features": [*FEATURES, {"name": "income", "type": "float32"}]},
        "feature column 'income' is missing",
    ),
    "wrong feature type": (
        lambda c: {**c, "features": [{"name": "city", "type": "int64"}]},
        "feature column 'city' has type string, which cannot hold a int64 feature",
    ),
    "missing join key": (
        lambda c: {**c, "joinKey": "customer_id"},
        "join key column 'customer_id' is missing",
    ),
    "event time not a timestamp": (
        lambda c: {**c, "source": {**c["source"], "eventTimestampColumn": "big"}},
        "event timestamp column 'big' has type int64",
    ),
    "created time not a timestamp": (
        lambda c: {**c, "source": {**c["source"], "createdTimestampColumn": "big"}},
        "created timestamp column 'big' has type int64",
    ),
    "missing created time column": (
        lambda c: {**c, "source": {**c["source"], "createdTimestampColumn": "written_at"}},
        "created timestamp column 'written_at' is missing",
    ),
    "value beyond the declared type": (
        lambda c: {**c, "features": [{"name": "big", "type": "int32"}]},
        "feature column 'big' holds values from",
    ),
    "nothing at or before asOf": (
        lambda c: {**c, "asOf": (T0 - timedelta(days=400)).isoformat()},
        "has no rows",
    ),
    "unknown config field": (lambda c: {**c, "ttl": 5}, "ttl: unknown field"),
    "password in the URL": (
        lambda c: {
            **c,
            "onlineStore": {"redisUrl": c["onlineStore"]["redisUrl"].replace("//", "//:hunter2@")},
        },
        "must not contain a password; put it in $REDIS_PASSWORD",
    ),
    "missing source": (
        lambda c: {**c, "source": {"uri": c["source"]["uri"] + ".nope"}},
        "does not exist",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_fails_clearly_and_leaves_the_live_version(
    case: str, tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    schema = SCHEMA.append(pa.field("big", pa.int64()))
    rows = [{**row(u, T0 - HOUR, 30), "big": u * 2**40} for u in range(1, 6)]
    source = write_rows(tmp_path / "users.parquet", rows, schema)
    good = make_config(source, redis_url)
    assert run(good, tmp_path)[0] == EXIT_OK
    before = _live_state(redis_client)
    change, expected = BAD_INPUTS[case]
    code, summary = run(change(good), tmp_path)
    assert code == EXIT_BAD_INPUT, summary
    assert (summary["status"], summary["reason"]) == ("Failed", "BadInput")
    assert expected in summary["message"]
    assert _live_state(redis_client) == before
    assert features(redis_client, [1])[0] is not None


def test_empty_source_is_bad_input(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    source = write_rows(tmp_path / "users.parquet", [row(1, T0 - HOUR, 30)])
    assert run(make_config(source, redis_url), tmp_path)[0] == EXIT_OK
    before = _live_state(redis_client)
    empty = write_rows(tmp_path / "empty.parquet", [])
    code, summary = run(make_config(empty, redis_url), tmp_path)
    assert code == EXIT_BAD_INPUT
    assert "empty.parquet is empty (0 rows)" in summary["message"]
    assert _live_state(redis_client) == before


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_redis_is_transient_and_the_live_version_stays(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    source = write_rows(tmp_path / "users.parquet", [row(1, T0 - HOUR, 30)])
    assert run(make_config(source, redis_url), tmp_path)[0] == EXIT_OK
    before = _live_state(redis_client)
    nowhere = f"redis://127.0.0.1:{_closed_port()}/0"
    code, summary = run(make_config(source, nowhere), tmp_path)
    assert code == EXIT_TRANSIENT
    assert summary["reason"] == "Transient"
    assert "unreachable" in summary["message"]
    assert _live_state(redis_client) == before


def test_wrong_password_is_bad_input(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = write_rows(tmp_path / "users.parquet", [row(1, T0 - HOUR, 30)])
    monkeypatch.setenv("REDIS_PASSWORD", "not-the-password")
    code, summary = run(make_config(source, redis_url), tmp_path)
    # The test server has no password: Redis refuses AUTH, which no retry can fix.
    assert code == EXIT_BAD_INPUT, summary
    assert "REDIS_PASSWORD" in summary["message"]


def test_a_second_run_while_one_holds_the_lock_is_transient(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    source = write_rows(tmp_path / "users.parquet", [row(1, T0 - HOUR, 30)])
    redis_client.set(FeatureViewKeys.of(VIEW).lock, "someone-else", px=60_000)
    code, summary = run(make_config(source, redis_url), tmp_path)
    assert code == EXIT_TRANSIENT
    assert "another materialization of shop.users" in summary["message"]
    assert redis_client.get(FeatureViewKeys.of(VIEW).live) is None


def test_a_killed_run_leaves_the_live_version_and_is_reclaimed(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    source = write_rows(tmp_path / "users.parquet", [row(1, T0 - HOUR, 30)])
    config = make_config(source, redis_url, lockLeaseSeconds=2)
    code, first = run(config, tmp_path)
    assert code == EXIT_OK
    before = redis_client.get(FeatureViewKeys.of(VIEW).live)
    big = write_ages(tmp_path / "big.parquet", 400_000, age=1)
    config_path = tmp_path / "big.json"
    config_path.write_text(
        json.dumps(
            make_config(
                str(big),
                redis_url,
                lockLeaseSeconds=2,
                batchRows=500,
                features=[{"name": "age", "type": "int32"}],
            )
        )
    )
    orphan = first["version"] + 1
    probe = FeatureViewKeys.of(VIEW).layer(orphan) + "0"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "recsys_workloads.materialize",
            "--config",
            str(config_path),
            "--termination-log",
            str(tmp_path / "killed-log"),
        ],
        env={**os.environ},
    )
    try:
        deadline = time.monotonic() + 60
        while not redis_client.exists(probe):
            assert proc.poll() is None, "the run ended before it could be killed mid-write"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert redis_client.get(FeatureViewKeys.of(VIEW).live) == before
    assert features(redis_client, [1])[0] == first_age(30)
    time.sleep(2.5)  # the killed run's lock lease runs out
    code, again = run(config, tmp_path)
    assert code == EXIT_OK, again
    assert again["reclaimedLayers"] == [orphan]
    assert not list(
        redis_client.scan_iter(match=FeatureViewKeys.of(VIEW).layer(orphan) + "*", count=10_000)
    )


@pytest.mark.chaos
@pytest.mark.parametrize("over_a_live_version", [False, True], ids=["first run", "second run"])
def test_redis_restarted_mid_run_never_leaves_a_half_written_version_live(
    over_a_live_version: bool, tmp_path: Path
) -> None:
    """Chaos: the Redis a run writes to is killed mid-write and started again on its port
    (empty: it keeps nothing across a restart). The run must not go on writing into the new
    server and switch the view to a keyspace that holds part of the entities: it fails as
    transient, or ends with every entity live. The retry then makes every entity live."""
    entities = 300_000
    big = write_ages(tmp_path / "big.parquet", entities, age=7)
    server = start_redis(databases=1)
    back = None
    try:
        client = redis.Redis.from_url(server.url)
        if over_a_live_version:
            source = write_rows(tmp_path / "one.parquet", [row(1, T0 - HOUR, 30)])
            code, _ = run(make_config(source, server.url), tmp_path)
            assert code == EXIT_OK
        config = make_config(
            str(big), server.url, batchRows=500, features=[{"name": "age", "type": "int32"}]
        )
        outcome: dict[str, Any] = {}
        runner = threading.Thread(
            target=lambda: outcome.update(
                zip(("code", "summary"), run(config, tmp_path), strict=True)
            )
        )
        runner.start()
        deadline = time.monotonic() + 60
        while client.dbsize() < 1000:  # the new layer is being written
            assert runner.is_alive(), f"the run ended before Redis could be killed: {outcome}"
            assert time.monotonic() < deadline
            time.sleep(0.01)
        server.stop()
        time.sleep(0.3)
        back = start_redis(databases=1, port=server.port)
        runner.join(120)
        assert not runner.is_alive()
        client = redis.Redis.from_url(back.url)
        keys = FeatureViewKeys.of(VIEW)
        live = client.get(keys.live)
        print(f"\nchaos: Redis restarted mid-run: exit {outcome['code']}, live {live!r}")
        if outcome["code"] == EXIT_OK:
            assert live is not None
        else:
            assert outcome["code"] == EXIT_TRANSIENT, outcome
            assert "Redis" in outcome["summary"]["message"], outcome
        if live is not None:  # whatever is live is whole
            rows = features(client, list(range(0, entities, 997)))
            assert all(r == {"age": 7} for r in rows), "a half-written version is live"
        code, again = run(config, tmp_path)
        assert code == EXIT_OK, again
        rows = features(client, list(range(0, entities, 997)))
        assert all(r == {"age": 7} for r in rows)
    finally:
        server.stop()
        if back is not None:
            back.stop()


def first_age(age: int) -> dict[str, Any]:
    """The features that ``row(1, ..., age)`` stores."""
    expected = row(1, T0, age)
    return {f["name"]: expected[f["name"]] for f in FEATURES}


def test_replaced_version_expires_and_leftovers_are_reclaimed(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    all_five = write_rows(
        tmp_path / "all.parquet", [row(u, T0 - HOUR, 30 + u) for u in range(1, 6)]
    )
    four = write_rows(tmp_path / "four.parquet", [row(u, T0 - HOUR, 40 + u) for u in range(1, 5)])
    config = make_config(all_five, redis_url, ttlSeconds=0, graceSeconds=1, mode="full")
    code, first = run(config, tmp_path)
    assert code == EXIT_OK
    code, second = run({**config, "source": {"uri": four}}, tmp_path)
    assert code == EXIT_OK
    assert second["retiredLayers"] == [first["version"]]
    old = FeatureViewKeys.of(VIEW).layer(first["version"])
    assert 0 < redis_client.pttl(old + "1") <= 1000  # still served entity: grace period
    assert redis_client.pttl(old + "5") == -1  # dropped entity: left for the next run
    assert features(redis_client, [1, 5]) == [first_age(41), None]
    time.sleep(1.2)
    code, third = run(config, tmp_path)
    assert code == EXIT_OK
    assert third["reclaimedLayers"] == [first["version"]]
    assert not redis_client.exists(old + "5")
    assert redis_client.hlen(FeatureViewKeys.of(VIEW).layers) == 1  # only the layer third retired


async def test_fsspec_source_and_the_async_reader(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    fs = fsspec.filesystem("memory")
    with fs.open("/fv-source/users.parquet", "wb") as handle:
        pq.write_table(pa.Table.from_pylist([row(7, T0 - HOUR, 33)], schema=SCHEMA), handle)
    try:
        code, summary = run(make_config("memory://fv-source/users.parquet", redis_url), tmp_path)
    finally:
        fs.rm("/fv-source", recursive=True)
    assert code == EXIT_OK, summary
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        rows = (await aread_online_features(client, FeatureViewKeys.of(VIEW), [7, 8])).rows
    finally:
        await client.aclose()
    assert rows[1] is None
    assert rows[0] is not None
    assert rows[0]["age"] == 33
    assert rows == features(redis_client, [7, 8])
