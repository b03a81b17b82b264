"""The log join against a real Redis, run as its pod runs it (a subprocess with a config file):
rows from served responses and their outcomes, a persisted cursor, exactly once through a
SIGKILL at every point between writing the files and advancing the cursor, and trimming only
of what is written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import redis

from recsys_contract.keyspace import GatewayKeys
from recsys_workloads.gateway.served_log import EventRecord, ServedRecord
from recsys_workloads.logjoin import CRASH_ENV, CRASH_POINTS, LOGGED_SCHEMA
from recsys_workloads.runtime import EXIT_OK

pytestmark = pytest.mark.redis

RECOMMENDER = "shop.movies"
KEYS = GatewayKeys.of(RECOMMENDER)
DAY_MS = 86_400_000
#: two serving dates, so a batch writes two files
T0 = 20_000 * DAY_MS - 60_000


def record(n: int, ts_ms: int, items: tuple[int, ...] = (11, 12, 13)) -> ServedRecord:
    return ServedRecord(
        request_id=f"r{n}-s",
        ts_ms=ts_ms,
        user_id=100 + n,
        variant="stable",
        model_version="movies-v1",
        index="file:///ix/movies-v1",
        fallback=None,
        items=[(i, 1.0 / (p + 1)) for p, i in enumerate(items)],
        candidates=list(items),
        features={"age": 20 + n, "occupation": "writer"},
        context={"page": "home"},
        history=[7, 8],
    )


def serve(client: redis.Redis, first: int, count: int, ts_ms: int, step_ms: int = 1000) -> None:
    """``count`` responses r<first>.. served from ``ts_ms`` on, each with a click on its second
    item (appended as the gateway does: one XADD per entry)."""
    for n in range(first, first + count):
        rec = record(n, ts_ms + (n - first) * step_ms)
        client.xadd(KEYS.served, rec.to_fields())  # type: ignore[arg-type]
        click = EventRecord(rec.request_id, rec.ts_ms + 50, "click", rec.items[1][0], rec.user_id)
        client.xadd(KEYS.events, click.to_fields())  # type: ignore[arg-type]


def config(redis_url: str, out: Path, **extra: Any) -> dict[str, Any]:
    return {
        "recommender": RECOMMENDER,
        "onlineStore": {"redisUrl": redis_url},
        "outputUri": str(out),
        "waitSeconds": 0,
        **extra,
    }


def run_join(
    tmp_path: Path, cfg: dict[str, Any], crash_at: str | None = None
) -> tuple[int, dict[str, Any] | None]:
    path, term = tmp_path / "logjoin.json", tmp_path / "termination-log"
    path.write_text(json.dumps(cfg))
    term.unlink(missing_ok=True)
    env = os.environ.copy()
    env.pop(CRASH_ENV, None)
    if crash_at:
        env[CRASH_ENV] = crash_at
    done = subprocess.run(
        [sys.executable, "-m", "recsys_workloads.logjoin", "--config", str(path),
         "--termination-log", str(term)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    summary = json.loads(term.read_text()) if term.exists() else None
    assert done.returncode == (-signal.SIGKILL if crash_at else EXIT_OK), done.stderr
    return done.returncode, summary


def logged(out: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for f in sorted(out.glob("date=*/part-*.parquet")):
        table = pq.read_table(f, partitioning=None)
        assert table.schema == LOGGED_SCHEMA
        rows.extend(table.to_pylist())
    return rows


def test_a_served_request_and_its_click_become_rows(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "logged"
    serve(redis_client, 1, 1, T0)
    redis_client.xadd(KEYS.events, EventRecord("r1-s", T0 + 90, "purchase", 11, 101).to_fields())  # type: ignore[arg-type]
    redis_client.xadd(KEYS.events, EventRecord("nope-s", T0, "click", 11).to_fields())  # type: ignore[arg-type]
    _, summary = run_join(tmp_path, config(redis_url, out))
    assert summary is not None
    assert summary["status"] == "Succeeded"
    assert (summary["responses"], summary["rows"], summary["positives"]) == (1, 3, 2)
    assert summary["unmatchedEvents"] == 1
    served_id = redis_client.xrange(KEYS.served)[0][0].decode()  # type: ignore[index]
    assert summary["cursor"] == served_id == redis_client.get(KEYS.logjoin_cursor).decode()  # type: ignore[union-attr]
    assert redis_client.get(KEYS.logjoin_pending) is None
    assert summary["partitions"] == [f"date=2024-10-03/part-{served_id}-{served_id}.parquet"]
    rows = logged(out)
    assert [(r["item_id"], r["position"], r["clicked"], r["purchased"]) for r in rows] == [
        (11, 0, True, True), (12, 1, True, False), (13, 2, False, False)
    ]  # fmt: skip
    first = rows[0]
    assert first["request_id"] == "r1-s"
    assert first["served_id"] == served_id
    assert first["user_id"] == 101
    assert (first["variant"], first["model_version"]) == ("stable", "movies-v1")
    assert first["event_timestamp"].timestamp() * 1000 == T0
    assert first["outcome_timestamp"].timestamp() * 1000 == T0 + 90
    assert json.loads(first["user_features"]) == {"age": 21, "occupation": "writer"}
    assert first["user_history"] == [7, 8]
    assert rows[1]["score"] == pytest.approx(0.5)

    # the cursor is persisted: a second run finds nothing new and writes nothing
    _, again = run_join(tmp_path, config(redis_url, out))
    assert again is not None
    assert (again["responses"], again["rows"], again["partitions"]) == (0, 0, [])
    assert again["previousCursor"] == again["cursor"] == served_id
    assert len(logged(out)) == 3


def test_responses_younger_than_the_wait_wait(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "logged"
    serve(redis_client, 1, 2, T0)
    _, summary = run_join(tmp_path, config(redis_url, out, waitSeconds=3600))
    assert summary is not None
    assert (summary["responses"], summary["cursor"]) == (0, "0-0")
    assert not out.exists() or logged(out) == []
    _, summary = run_join(tmp_path, config(redis_url, out, maxRows=3))
    assert summary is not None
    assert (summary["responses"], summary["rows"], summary["more"]) == (1, 3, True)
    _, summary = run_join(tmp_path, config(redis_url, out, maxRows=3))
    assert summary is not None
    assert (summary["responses"], summary["more"]) == (1, False)
    assert sorted(r["request_id"] for r in logged(out)) == ["r1-s"] * 3 + ["r2-s"] * 3


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_killed_anywhere_before_the_cursor_moves_every_row_lands_once(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path, point: str
) -> None:
    out = tmp_path / "logged"
    serve(redis_client, 1, 6, T0, step_ms=20_000)  # across midnight: two partitions
    _, crashed = run_join(tmp_path, config(redis_url, out, retainSeconds=0), crash_at=point)
    assert crashed is None  # SIGKILL: no termination message
    assert redis_client.get(KEYS.logjoin_cursor) is None
    assert redis_client.get(KEYS.logjoin_pending) is not None
    # nothing is trimmed before it is written and the cursor moved
    assert redis_client.xlen(KEYS.served) == 6
    written = len(list(out.glob("date=*/part-*.parquet"))) if out.exists() else 0
    assert written == {"pending": 0, "file": 1, "written": 2}[point]
    assert not list(out.glob("**/*.tmp-*")) if out.exists() else True
    # more traffic meanwhile: the replay must still write exactly the killed run's batch
    serve(redis_client, 7, 2, T0 + 200_000)

    _, replay = run_join(tmp_path, config(redis_url, out, retainSeconds=0))
    assert replay is not None
    assert replay["replayed"] is True
    assert (replay["responses"], replay["rows"]) == (6, 18)
    assert redis_client.get(KEYS.logjoin_pending) is None
    _, rest = run_join(tmp_path, config(redis_url, out, retainSeconds=0))
    assert rest is not None
    assert (rest["replayed"], rest["responses"]) == (False, 2)

    rows = logged(out)
    counts = Counter((r["request_id"], r["item_id"]) for r in rows)
    assert set(counts.values()) == {1}, [k for k, c in counts.items() if c > 1]
    assert len(counts) == 8 * 3
    assert sum(r["clicked"] for r in rows) == 8
    # written and behind the cursor, with no retention asked for: trimmed
    assert redis_client.xlen(KEYS.served) == 0


def test_a_replay_removes_a_file_whose_entries_are_gone(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """The gateway's length cap may drop entries of a killed run's batch before the replay:
    the replay's files then differ, and the killed run's file must not stay beside them."""
    out = tmp_path / "logged"
    serve(redis_client, 1, 3, T0)
    run_join(tmp_path, config(redis_url, out), crash_at="written")
    before = sorted(p.name for p in out.glob("date=*/*.parquet"))
    assert len(before) == 1
    first = redis_client.xrange(KEYS.served)[0][0]  # type: ignore[index]
    redis_client.xdel(KEYS.served, first)
    _, replay = run_join(tmp_path, config(redis_url, out))
    assert replay is not None
    assert replay["responses"] == 2
    after = sorted(p.name for p in out.glob("date=*/*.parquet"))
    assert len(after) == 1
    assert after != before
    assert sorted({r["request_id"] for r in logged(out)}) == ["r2-s", "r3-s"]


def test_trimming_keeps_what_is_unwritten_or_within_retention(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "logged"
    serve(redis_client, 1, 3, T0)
    _, summary = run_join(tmp_path, config(redis_url, out))  # default retention: a day
    assert summary is not None
    assert (summary["trimmedServed"], summary["trimmedEvents"]) == (0, 0)
    assert redis_client.xlen(KEYS.served) == 3
    _, summary = run_join(tmp_path, config(redis_url, out, retainSeconds=0, waitSeconds=3600))
    assert summary is not None
    assert summary["trimmedServed"] == 3  # written by the first run, nothing waits
    assert redis_client.xlen(KEYS.served) == 0
    serve(redis_client, 4, 2, T0 + 10_000)
    # not old enough to be joined: not written, so not trimmed however short the retention
    _, summary = run_join(tmp_path, config(redis_url, out, retainSeconds=0, waitSeconds=3600))
    assert summary is not None
    assert summary["trimmedServed"] == 0
    assert redis_client.xlen(KEYS.served) == 2
