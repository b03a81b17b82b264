"""The pure parts of the online store: codec, key pointer, point-in-time selection, RESP bytes,
mode planning and config validation."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from recsys_contract.keyspace import FeatureSchema, LivePointer
from recsys_workloads.featurestore import codec
from recsys_workloads.featurestore.point_in_time import (
    NO_CREATED_US,
    latest_rows,
    window_bounds_us,
)
from recsys_workloads.featurestore.resp import hset_commands, key_commands
from recsys_workloads.materialize import parse_config, plan_mode
from recsys_workloads.runtime import BadInputError

CASES: list[tuple[str, pa.Array]] = [
    ("int32", pa.array([1, None, -3], pa.int16())),
    ("int64", pa.array([2**40, 0, None], pa.int64())),
    ("float32", pa.array([1.5, None, -2.25], pa.float32())),
    ("float64", pa.array([0.1, 2, None], pa.float64())),
    ("bool", pa.array([True, False, None])),
    ("string", pa.array(["a", "", None]).dictionary_encode()),
    ("string_list", pa.array([["a", "b"], [], None])),
    ("float_list", pa.array([[1.0, 2.0], None, [3.0], [4.0, 5.0]]).slice(1, 3)),
]


@pytest.mark.parametrize(("declared", "values"), CASES, ids=[c[0] for c in CASES])
def test_codec_round_trips(declared: str, values: pa.Array) -> None:
    assert codec.type_mismatch(declared, values.type) is None
    encoded = codec.encode(values, declared)
    decoded = [codec.decode(v, declared) for v in encoded.to_pylist()]
    expected = (
        values.cast(values.type.value_type).to_pylist()
        if declared == "string"
        else values.to_pylist()
    )
    assert decoded == expected


def test_codec_refuses_what_it_cannot_store() -> None:
    assert (
        codec.type_mismatch("int64", pa.string())
        == "has type string, which cannot hold a int64 feature"
    )
    assert codec.type_mismatch("string_list", pa.list_(pa.int64())) is not None
    assert codec.type_mismatch("bool", pa.int8()) is not None
    assert "beyond int32" in (codec.value_problem(pa.array([2**31]), "int32") or "")
    assert "null elements" in (codec.value_problem(pa.array([[1.0, None]]), "float_list") or "")


def test_latest_rows_picks_the_newest_row_per_entity_last_on_ties() -> None:
    keys = pa.array(["a", "b", "a", "c", "a", "b"])
    times = np.array([10, 5, 30, 7, 30, 1], dtype=np.int64)
    assert latest_rows(keys, times).tolist() == [1, 3, 4]
    assert latest_rows(pa.array([], pa.int64()), np.array([], np.int64)).tolist() == []


def test_created_time_breaks_event_time_ties_as_in_feast() -> None:
    keys = pa.array(["a", "a", "a", "b", "b", "c", "c"])
    times = np.array([30, 30, 10, 5, 5, 7, 7], dtype=np.int64)
    created = np.array([200, 100, 900, NO_CREATED_US, 50, 60, 60], dtype=np.int64)
    # a: of the two rows at 30 the one created at 200 (not the later-read one, nor the row
    # created last at the older event time 10); b: a created time beats none; c: equal created
    # times fall back to the row read last
    assert latest_rows(keys, times, created).tolist() == [0, 4, 6]
    assert latest_rows(keys, times).tolist() == [1, 4, 6]


def test_window_is_bounded_by_ttl_and_watermark() -> None:
    assert window_bounds_us(100_000_000, 0, None) == (None, 100_000_000)
    assert window_bounds_us(100_000_000, 10, None) == (90_000_000, 100_000_000)
    assert window_bounds_us(100_000_000, 10, 95_000_000) == (95_000_000, 100_000_000)
    assert window_bounds_us(100_000_000, 10, 50_000_000) == (90_000_000, 100_000_000)


def _parse_resp(data: bytes) -> list[list[bytes]]:
    commands, pos = [], 0
    while pos < len(data):
        assert data[pos : pos + 1] == b"*"
        end = data.index(b"\r\n", pos)
        count, pos = int(data[pos + 1 : end]), end + 2
        args = []
        for _ in range(count):
            end = data.index(b"\r\n", pos)
            length = int(data[pos + 1 : end])
            args.append(data[end + 2 : end + 2 + length])
            pos = end + 2 + length + 2
        commands.append(args)
    return commands


def test_hset_commands_are_valid_resp_and_skip_null_fields() -> None:
    keys = pa.array([b"fv:v:v1:1", b"fv:v:v1:2"])
    payload, replies = hset_commands(
        keys,
        pa.array([11, 22], pa.int64()),
        [pa.array([b"x\r\ny", None]), pa.array([b"7", b"8"])],
        pa.array([1000, 2000], pa.int64()),
    )
    assert replies == 4
    # Each entity's HSET is followed by its PEXPIREAT.
    assert _parse_resp(bytes(payload)) == [
        [b"HSET", b"fv:v:v1:1", b"t", b"11", b"0", b"x\r\ny", b"1", b"7"],
        [b"PEXPIREAT", b"fv:v:v1:1", b"1000"],
        [b"HSET", b"fv:v:v1:2", b"t", b"22", b"1", b"8"],
        [b"PEXPIREAT", b"fv:v:v1:2", b"2000"],
    ]
    sliced = key_commands(b"PEXPIRE", pa.array([b"a", b"bb", b"c"]).slice(1), (b"5", b"LT"))
    assert _parse_resp(bytes(sliced)) == [
        [b"PEXPIRE", b"bb", b"5", b"LT"],
        [b"PEXPIRE", b"c", b"5", b"LT"],
    ]


def _pointer(**changes: Any) -> LivePointer:
    base: dict[str, Any] = {
        "layers": [3, 1], "features": [FeatureSchema("age", "int32")], "join_key": "user_id",
        "ttl_seconds": 60, "source_uri": "s3://b/users", "event_timestamp_column": "ts",
        "watermark_us": 1_000, "switched_at_us": 1_000,
    }  # fmt: skip
    return LivePointer(**{**base, **changes})


def test_pointer_round_trips_through_json() -> None:
    pointer = _pointer(run={"rows": 3})
    assert LivePointer.from_json(pointer.to_json()) == pointer
    assert pointer.version == 3
    assert b"created" not in pointer.to_json(), "unchanged for views without a created column"
    with_created = _pointer(created_timestamp_column="created_at")
    assert LivePointer.from_json(with_created.to_json()) == with_created


def test_plan_mode_is_incremental_only_when_it_equals_a_full_run() -> None:
    live, same = _pointer(), _pointer(layers=[])
    assert plan_mode("auto", live, same, 2_000, 8)[0] == "incremental"
    assert plan_mode("full", live, same, 2_000, 8)[0] == "full"
    assert plan_mode("auto", None, same, 2_000, 8)[1] == "no live version yet"
    assert "changed" in plan_mode("auto", live, _pointer(ttl_seconds=5), 2_000, 8)[1]
    retied = _pointer(layers=[], created_timestamp_column="created_at")
    assert "changed" in plan_mode("auto", live, retied, 2_000, 8)[1]
    assert "backfill" in plan_mode("auto", live, same, 500, 8)[1]
    assert "compacting" in plan_mode("auto", live, same, 2_000, 2)[1]


GOOD = {
    "featureView": "movies.users",
    "joinKey": "user_id",
    "source": {"uri": "/data/users.parquet"},
    "features": [{"name": "age", "type": "int32"}],
    "onlineStore": {"redisUrl": "redis://redis:6379/0"},
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"featureView": "a:b"}, "featureView: Value error, must match"),
        ({"features": [{"name": "age", "type": "int"}]}, "features.0.type"),
        ({"features": []}, "features: List should have at least 1 item"),
        ({"features": [{"name": "user_id", "type": "int64"}]}, "'user_id' is the join key"),
        ({"asOf": "2024-05-01T00:00:00"}, "asOf: Value error, must carry a UTC offset"),
        ({"onlineStore": {"redisUrl": "http://x"}}, "onlineStore.redisUrl"),
        ({"onlineStore": {"redisUrl": "redis://u:pw@x:1/0"}}, "must not contain a password"),
        ({"ttlSeconds": -1}, "ttlSeconds"),
        (
            {"source": {"uri": "/d", "createdTimestampColumn": "age"}},
            "source.createdTimestampColumn: 'age' is a feature or the join key",
        ),
        (
            {"source": {"uri": "/d", "createdTimestampColumn": "event_timestamp"}},
            "must differ from eventTimestampColumn",
        ),
    ],
)
def test_config_errors_name_the_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(BadInputError, match="materialize config") as info:
        parse_config({**GOOD, **change})
    assert message in str(info.value)


def test_config_defaults() -> None:
    config = parse_config(GOOD)
    assert (config.mode, config.ttl_seconds, config.online_store.key_prefix) == ("auto", 0, "fv")
    assert config.source.event_timestamp_column == "event_timestamp"
