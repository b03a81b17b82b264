"""Served-log records and the join of responses with their outcomes into training rows."""

from __future__ import annotations

import dataclasses

from recsys_workloads.gateway.served_log import EventRecord, ServedRecord
from recsys_workloads.logjoin import LOGGED_SCHEMA, Served, join_rows, partition_files


def served(request_id: str, user: int, items: list[int], ts: int = 1_000) -> ServedRecord:
    return ServedRecord(
        request_id=request_id,
        ts_ms=ts,
        user_id=user,
        variant="canary" if request_id.endswith("-c") else "stable",
        model_version="m-v2" if request_id.endswith("-c") else "m-v1",
        index="file:///ix",
        fallback=None,
        items=[(i, 1.0 / 2**n) for n, i in enumerate(items)],  # exact in the 6 logged decimals
        candidates=[*items, 99],
        features={"age": 30, "genres": ["Drama"]},
        context={"page": "home"},
        history=[9, 8],
    )


def as_stream(fields: dict[str, str]) -> dict[bytes, bytes]:
    return {k.encode(): v.encode() for k, v in fields.items()}


def test_records_survive_the_stream_encoding() -> None:
    rec = served("a-s", 7, [3, 1, 2])
    back = ServedRecord.from_fields(as_stream(rec.to_fields()))
    assert back == rec
    stored = dataclasses.replace(rec, source="precomputed")
    assert ServedRecord.from_fields(as_stream(stored.to_fields())).source == "precomputed"
    # entries written before the field existed read as live
    older = {k: v for k, v in rec.to_fields().items() if k != "source"}
    assert ServedRecord.from_fields(as_stream(older)).source == "live"
    event = EventRecord("a-s", 2_000, "click", 3, 7)
    assert EventRecord.from_fields(as_stream(event.to_fields())) == event
    anonymous = EventRecord("a-s", 2_000, "click", 3)
    assert EventRecord.from_fields(as_stream(anonymous.to_fields())).user_id is None


def test_outcomes_join_their_impressions() -> None:
    responses = [served("a-s", 7, [3, 1, 2], ts=1_000), served("b-c", 8, [5, 3], ts=1_500)]
    events = [
        EventRecord("a-s", 3_000, "click", 1, 7),
        EventRecord("a-s", 4_000, "purchase", 1, 7),
        EventRecord("b-c", 2_500, "click", 3, 8),
        EventRecord("b-c", 2_600, "click", 4, 8),  # not served in b-c
        EventRecord("zzz-s", 2_600, "click", 3, 8),  # unknown request
    ]
    table, unmatched = join_rows(
        [Served(f"{n}-0", r) for n, r in enumerate(responses, 1)], events, 9_000
    )
    assert unmatched == 2
    assert table.schema == LOGGED_SCHEMA
    rows = table.to_pylist()
    assert [(r["request_id"], r["item_id"], r["position"]) for r in rows] == [
        ("a-s", 3, 0), ("a-s", 1, 1), ("a-s", 2, 2), ("b-c", 5, 0), ("b-c", 3, 1)
    ]  # fmt: skip
    assert [r["clicked"] for r in rows] == [False, True, False, False, True]
    assert [r["purchased"] for r in rows] == [False, True, False, False, False]
    assert rows[1]["outcome_timestamp"].timestamp() == 3.0
    assert rows[0]["outcome_timestamp"] is None
    assert rows[3]["variant"] == "canary"
    assert rows[3]["model_version"] == "m-v2"
    assert rows[0]["user_features"] == '{"age":30,"genres":["Drama"]}'
    assert rows[0]["user_history"] == [9, 8]
    assert rows[0]["context"] == '{"page":"home"}'
    assert [r["served_id"] for r in rows] == ["1-0"] * 3 + ["2-0"] * 2
    assert {r["joined_at"].timestamp() for r in rows} == {9.0}


def test_nothing_served_gives_empty_tables_with_the_schema() -> None:
    table, unmatched = join_rows([], [EventRecord("a-s", 1, "click", 1)], 0)
    assert table.num_rows == 0
    assert table.schema == LOGGED_SCHEMA
    assert unmatched == 1


DAY_MS = 86_400_000


def test_partitions_are_dated_and_named_by_their_ids() -> None:
    """One file per serving date (UTC), named by its first and last stream id: the same batch
    always gives the same names, so a replay overwrites instead of duplicating."""
    batch = [
        Served("10-0", served("a-s", 1, [1], ts=DAY_MS - 1)),
        Served("10-1", served("b-s", 1, [1], ts=DAY_MS)),
        Served("11-0", served("c-s", 1, [1], ts=DAY_MS - 2)),  # another gateway's clock
        Served("12-0", served("d-s", 1, [1], ts=DAY_MS + 5)),
    ]
    files = partition_files(batch)
    assert {name: [s.id for s in group] for name, group in files.items()} == {
        "date=1970-01-01/part-10-0-11-0.parquet": ["10-0", "11-0"],
        "date=1970-01-02/part-10-1-12-0.parquet": ["10-1", "12-0"],
    }
    assert partition_files(list(batch)) == files
