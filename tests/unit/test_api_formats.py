"""The shared string formats: what they accept, what they refuse, and their parsers."""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal

import pytest
from croniter import croniter

from recsys_operator.api import formats


@pytest.mark.parametrize(
    "schedule",
    ["*/30 * * * *", "0 3 * * 0", "15 0-6 1,15 JAN-MAR MON-FRI", "0 */2 * * *", "@hourly",
     "59 23 31 12 6", "0 0 1 1 SUN"],
)  # fmt: skip
def test_cron_accepts_schedules_croniter_can_run(schedule: str) -> None:
    assert re.fullmatch(formats.CRON, schedule)
    assert croniter.is_valid(schedule)
    croniter(schedule, datetime(2024, 1, 1)).get_next(datetime)


@pytest.mark.parametrize(
    "schedule",
    ["* * * *", "60 * * * *", "0 24 * * *", "0 0 0 * *", "0 0 32 * *", "0 0 * 13 *",
     "0 0 * * 7", "*/0 * * * *", "@every 5m", "TZ=UTC 0 * * * *", "0 0 * * * *"],
)  # fmt: skip
def test_cron_refuses_out_of_range_fields(schedule: str) -> None:
    assert not re.fullmatch(formats.CRON, schedule)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), ("1.5h", 5400)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert formats.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["1d", "5 m", "m", "-1s", "1h-5m", ""])
def test_parse_duration_refuses_what_go_would_not_read(text: str) -> None:
    with pytest.raises(ValueError, match="is not a duration"):
        formats.parse_duration(text)


@pytest.mark.parametrize(
    ("value", "number"),
    [(2, Decimal(2)), ("500m", Decimal("0.5")), ("2Gi", Decimal(2 * 2**30)), ("1e3", Decimal(1000)),
     ("1.5", Decimal("1.5")), ("100k", Decimal(100000)), ("+.5Mi", Decimal(2**19)),
     # an exponent past Python's default decimal range, which the apiserver accepts
     ("0E1000000", Decimal(0)), ("5E-1", Decimal("0.5")), (".2E0.", Decimal("0.2")),
     (".0E.0", Decimal(0)), ("1E.5", Decimal(10) ** Decimal("0.5"))],
)  # fmt: skip
def test_parse_quantity(value: int | str, number: Decimal) -> None:
    assert formats.parse_quantity(value) == number


@pytest.mark.parametrize("value", ["lots", "1.5 Gi", "2GB", "1ki", ""])
def test_parse_quantity_refuses(value: str) -> None:
    with pytest.raises(ValueError, match="is not a quantity"):
        formats.parse_quantity(value)


def test_parse_timestamp() -> None:
    parsed = formats.parse_timestamp("2024-06-01T10:00:00.123456789+02:00")
    assert parsed.utcoffset() is not None
    assert parsed.hour == 10
    for bad in [
        "2024-06-01",
        "2024-06-01 10:00:00Z",
        "2024-02-30T00:00:00Z",
        "2024-06-01T10:00:00",
    ]:
        with pytest.raises(ValueError, match="RFC 3339"):
            formats.parse_timestamp(bad)


@pytest.mark.parametrize(
    ("pattern", "good", "bad"),
    [
        (formats.DNS1123_LABEL, ["movies", "a", "movies-v12"], ["Movies", "-a", "a-", "a_b"]),
        (formats.STORAGE_URI,
         ["s3://b/p", "file:///data/x.parquet", "pvc://claim/dir", "pvc://my.claim-1",
          "pvc://c/"],
         ["/data/x", "data/x", "s3://b/with space", "ftp://h/x", "s3://b/caf\u00e9",
          "gs://b/p", "az://c/p", "hdfs://nn/p", "https://h/x.parquet", "s3a://b/p",
          "pvc:///dir", "pvc://Claim/dir", "pvc://-claim/dir"]),
        (formats.REDIS_URL, ["redis://redis:6379/0", "rediss://r.ns.svc:6380", "redis://r"],
         ["http://redis:6379", "redis://r:6379/db", "redis://r/0 "]),
        (formats.IMAGE, ["ghcr.io/org/trainer:1.2.3", "trainer", "localhost:5000/t@sha256:"
         + "a" * 64], ["Trainer:1", "org/trainer:", ""]),
        (formats.TIME_ZONE, ["Etc/UTC", "Europe/Berlin", "America/Argentina/Buenos_Aires"],
         ["Europe Berlin", "/UTC", "UTC/"]),
    ],
)  # fmt: skip
def test_patterns(pattern: str, good: list[str], bad: list[str]) -> None:
    for text in good:
        assert re.fullmatch(pattern, text), text
    for text in bad:
        assert not re.fullmatch(pattern, text), text
