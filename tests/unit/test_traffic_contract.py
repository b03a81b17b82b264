"""The traffic counters' contract (recsys_contract.traffic): what the gateways write and the
rollout's analysis reads back must agree on ids, buckets and fields."""

from __future__ import annotations

import pytest

from recsys_contract import traffic

LAST = len(traffic.LATENCY_BOUNDS_MS)


@pytest.mark.parametrize(
    ("ms", "field"),
    [(0.2, "lat:0"), (1, "lat:0"), (1.01, "lat:1"), (7.5, "lat:3"), (2500, f"lat:{LAST - 1}"),
     (2500.1, f"lat:{LAST}"), (1e9, f"lat:{LAST}")],
)  # fmt: skip
def test_latency_fields(ms: float, field: str) -> None:
    assert traffic.latency_field(ms) == field


def test_counts_add_hashes_as_hgetall_returns_them() -> None:
    counts = traffic.Counts.of(
        [
            {b"requests": b"10", b"errors": b"1", b"fallbacks": b"2", b"impressions": b"90",
             b"lat:0": b"4", b"lat:3": b"6", b"event:click": b"7", b"late:click": b"3"},
            {"requests": 5, "impressions": "40", "lat:3": 5, "event:click": 1,
             "event:purchase": 2, f"lat:{LAST + 1}": 9, "lat:-1": 9, "unknown": 1},
        ]
    )  # fmt: skip
    assert (counts.requests, counts.errors, counts.fallbacks, counts.impressions) == (15, 1, 2, 130)
    assert counts.latency[0] == 4
    assert counts.latency[3] == 11
    assert sum(counts.latency) == 15  # out-of-range histogram fields are ignored
    assert counts.events == {"click": 8, "purchase": 2}  # late ones are not outcomes


def histogram(**by_field: int) -> traffic.Counts:
    counts = traffic.Counts()
    counts.add({f"lat:{k[1:]}": n for k, n in by_field.items()})
    return counts


@pytest.mark.parametrize(
    ("counts", "q", "ms"),
    [
        (traffic.Counts(), 0.5, None),
        (histogram(i0=10), 0.99, 1),
        (histogram(i0=50, i4=50), 0.5, 1),
        (histogram(i0=50, i4=50), 0.51, 10),
        (histogram(i0=98, i12=2), 0.99, 100),
        (histogram(i0=1, **{f"i{LAST}": 99}), 0.5, 2 * traffic.LATENCY_BOUNDS_MS[-1]),
    ],
)
def test_latency_quantiles(counts: traffic.Counts, q: float, ms: float | None) -> None:
    assert counts.latency_quantile_ms(q) == ms


@pytest.mark.parametrize("served_ms", [0, 1, 35, 36, 1_700_000_000_123, 2**53])
@pytest.mark.parametrize("tag", ["s", "c"])
def test_request_ids_carry_the_served_time(served_ms: int, tag: str) -> None:
    rid = traffic.request_id("0f" * 16, served_ms, tag)
    assert rid.endswith(f"-{tag}")
    assert traffic.served_ms_of(rid) == served_ms


@pytest.mark.parametrize(
    "rid", ["0" * 32 + "-s", "abc.-s", ".-s", "abc.zz!-s", "abc.", "", "-s", "no-time-c"]
)
def test_ids_without_a_served_time(rid: str) -> None:
    assert traffic.served_ms_of(rid) is None


@pytest.mark.parametrize(
    ("start", "end", "buckets"),
    [
        (100, 130, [100, 110, 120]),
        (105, 130, [100, 110, 120]),
        (100, 130.5, [100, 110, 120, 130]),
        (100, 100, []),
        (109.9, 110, [100]),
        (110, 105, []),
    ],
)
def test_buckets_between(start: float, end: float, buckets: list[int]) -> None:
    assert traffic.buckets_between(start, end) == buckets
    assert all(b % traffic.BUCKET_SECONDS == 0 for b in buckets)


@pytest.mark.parametrize(
    ("bucket", "now", "window", "closed"),
    [
        (100, 110, 0, True),
        (100, 109.9, 0, False),
        (100, 139.9, 30, False),
        (100, 140, 30, True),
        (100, 2000, 1800, True),
    ],
)
def test_a_bucket_closes_once_its_events_had_their_window(
    bucket: int, now: float, window: float, closed: bool
) -> None:
    assert traffic.closed(bucket, now, window) is closed


def test_heartbeats_round_trip_and_go_stale() -> None:
    beat = traffic.Heartbeat(at=1000.0, loaded=("b", "a"), stable="m-v1", canary="m-v2",
                             canary_weight=20)  # fmt: skip
    back = traffic.Heartbeat.from_json(beat.to_json())
    assert back == traffic.Heartbeat(1000.0, ("a", "b"), "m-v1", "m-v2", 20)
    fresh = 1000.0 + traffic.HEARTBEAT_STALE_SECONDS
    assert traffic.live({"r": beat}, fresh) == {"r": beat}
    assert traffic.live({"r": beat}, fresh + 0.1) == {}
    with pytest.raises(ValueError, match="object"):
        traffic.Heartbeat.from_json("[]")
