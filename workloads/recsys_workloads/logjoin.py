"""``python -m recsys_workloads.logjoin --config PATH``: the "wait" half of log and wait.

The gateways append every response to the ``served`` stream and every posted outcome to the
``events`` stream (``gateway.served_log``). One run of the log join (the Recommender's
log-join CronJob, config ``recsys_contract.logjoin.LogJoinConfig``) takes the responses after
its cursor that are at least ``waitSeconds`` old (their late outcomes have landed), joins them
with their outcomes by request id and item, and writes one row per served item to dated
parquet partitions under ``outputUri``::

    <outputUri>/date=YYYY-MM-DD/part-<first served id>-<last served id>.parquet

Each row (``LOGGED_SCHEMA``) holds the ``served`` stream id, the request id, when it was
served, the user, the item, its position (0 = top) and score, the variant and model version
that served it, the index, the fallback reason, the labels (``clicked``, ``purchased``, the
first outcome's time), the request context, and the features exactly as served: the raw user
features the models saw (JSON) and the recent items they saw. Rows without an outcome are the
negatives a ranker learns from; training reads the clicked ones as interactions, with the
served features (``train.logged``), so what serving saw is what the next model learns from.
``joined_at`` is the run's time: training reads the rows joined before its ModelVersion was
created, so a retry reads the same rows.

Exactly once. The cursor (``GatewayKeys.logjoin_cursor``, the last ``served`` id written)
lives in Redis beside the streams. A run first records its batch as pending
(``GatewayKeys.logjoin_pending``: the cursor it starts from, its last id, its join time and
file names), then writes the files (each whole or not at all: a temporary name renamed into
place, or one object PUT), and only then advances the cursor and drops the pending batch in
one transaction. A run killed anywhere before that leaves the cursor where it was and the
batch pending; the next run replays exactly that batch (same entries, same join time, same
deterministic file names), so it overwrites what the killed run wrote instead of adding to
it, and removes a pending file it no longer writes. No row is written twice, none is lost.

Trimming. Entries are removed from the streams (``XTRIM MINID``) only once they are behind
the cursor, hence written, and older than ``retainSeconds`` (the drift check samples the
served stream too); events only once no later response can still match them. The gateway's
own length cap (``maxLen`` of its writer) is the backstop against a log join that never runs.

An event whose request is not in the batch, or whose item that response did not serve, is
counted (``unmatchedEvents``) and dropped.

Test-only: ``RECSYS_LOGJOIN_CRASH_AT`` (``pending``, ``file`` or ``written``) makes the run
kill itself with SIGKILL at that point (after the pending batch is recorded, after its first
file, after all files), the way a node loss or an OOM kill would; the crash tests use it.
Nothing else reads it, and nothing sets it outside tests.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import signal
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import redis

from recsys_contract.formats import join_uri
from recsys_contract.keyspace import GatewayKeys
from recsys_contract.logjoin import (
    PART_PREFIX,
    PART_SUFFIX,
    PARTITION_KEY,
    LogJoinConfig,
    LogJoinSummary,
)
from recsys_workloads.artifact_store import Store
from recsys_workloads.datasets.layout import TIMESTAMP
from recsys_workloads.gateway.served_log import EventRecord, ServedRecord
from recsys_workloads.redis_client import SyncRedis, redis_client
from recsys_workloads.runtime import TransientError, parse_config, run_entrypoint

log = logging.getLogger("recsys_workloads.logjoin")

PAGE = 1000
#: Events are read from this long before the first response (clocks of gateways and Redis).
CLOCK_SLACK_MS = 60_000
#: The test-only crash hook (see the module doc).
CRASH_ENV = "RECSYS_LOGJOIN_CRASH_AT"
CRASH_POINTS = ("pending", "file", "written")

LOGGED_SCHEMA = pa.schema(
    [
        pa.field("served_id", pa.string(), nullable=False),
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("event_timestamp", TIMESTAMP, nullable=False),
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
        pa.field("variant", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("index", pa.string()),
        pa.field("fallback", pa.string()),
        pa.field("clicked", pa.bool_(), nullable=False),
        pa.field("purchased", pa.bool_(), nullable=False),
        pa.field("outcome_timestamp", TIMESTAMP),
        pa.field("context", pa.string()),
        pa.field("user_features", pa.string()),
        pa.field("user_history", pa.list_(pa.int64())),
        pa.field("joined_at", TIMESTAMP, nullable=False),
    ]
)


@dataclass(frozen=True)
class Served:
    """One ``served`` entry: its stream id and the response."""

    id: str
    record: ServedRecord


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def join_rows(
    served: Sequence[Served], events: Iterable[EventRecord], joined_at_ms: int
) -> tuple[pa.Table, int]:
    """(one row per served item, unmatched events) for the given responses and events."""
    outcomes: dict[tuple[str, int], dict[str, int]] = {}
    wanted = {(s.record.request_id, item) for s in served for item, _ in s.record.items}
    unmatched = 0
    for e in events:
        key = (e.request_id, e.item_id)
        if key not in wanted:
            unmatched += 1
            continue
        seen = outcomes.setdefault(key, {})
        seen[e.type] = min(seen.get(e.type, e.ts_ms), e.ts_ms)
    cols: dict[str, list[Any]] = {name: [] for name in LOGGED_SCHEMA.names}
    for entry in served:
        s = entry.record
        features = _compact(s.features) if s.features else None
        context = _compact(dict(s.context)) if s.context else None
        for position, (item, score) in enumerate(s.items):
            got = outcomes.get((s.request_id, item), {})
            first = min(got.values()) if got else None
            cols["served_id"].append(entry.id)
            cols["request_id"].append(s.request_id)
            cols["event_timestamp"].append(s.ts_ms * 1000)
            cols["user_id"].append(s.user_id)
            cols["item_id"].append(item)
            cols["position"].append(position)
            cols["score"].append(score)
            cols["variant"].append(s.variant)
            cols["model_version"].append(s.model_version)
            cols["index"].append(s.index or None)
            cols["fallback"].append(s.fallback)
            cols["clicked"].append("click" in got or "purchase" in got)
            cols["purchased"].append("purchase" in got)
            cols["outcome_timestamp"].append(first * 1000 if first is not None else None)
            cols["context"].append(context)
            cols["user_features"].append(features)
            cols["user_history"].append(s.history)
            cols["joined_at"].append(joined_at_ms * 1000)
    table = pa.table(
        {name: pa.array(values, LOGGED_SCHEMA.field(name).type) for name, values in cols.items()},
        schema=LOGGED_SCHEMA,
    )
    return table, unmatched


# --- stream ids ---------------------------------------------------------------------------------


def parse_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _after(entry_id: str) -> str:
    """The smallest id above ``entry_id``: ``XTRIM MINID`` of it removes ``entry_id`` too."""
    ms, seq = parse_id(entry_id)
    return f"{ms}-{seq + 1}"


def _date(ts_ms: int) -> str:
    return dt.datetime.fromtimestamp(ts_ms / 1000, dt.UTC).date().isoformat()


def partition_files(served: Sequence[Served]) -> dict[str, list[Served]]:
    """The batch's responses by file (relative to ``outputUri``), in stream order: one file per
    serving date, named by the first and last id it holds, so the same batch always gives the
    same names."""
    by_date: dict[str, list[Served]] = {}
    for s in served:
        by_date.setdefault(_date(s.record.ts_ms), []).append(s)
    return {
        f"{PARTITION_KEY}={day}/{PART_PREFIX}{group[0].id}-{group[-1].id}{PART_SUFFIX}": group
        for day, group in sorted(by_date.items())
    }


# --- reading the streams ------------------------------------------------------------------------


def _xrange(
    client: SyncRedis, key: str, low: str, high: str, count: int = PAGE
) -> list[tuple[str, dict[bytes, bytes]]]:
    page: Any = client.xrange(key, min=low, max=high, count=count)
    return [(entry_id.decode(), fields) for entry_id, fields in page]


def read_served(
    client: SyncRedis, keys: GatewayKeys, after: str, high: str, max_rows: int | None = None
) -> tuple[list[Served], bool]:
    """Served responses with ids in (after, high], at most ``max_rows`` served items (at least
    one response); and whether the limit left some out."""
    out: list[Served] = []
    rows = 0
    last = after
    while True:
        page = _xrange(client, keys.served, f"({last}", high)
        for entry_id, fields in page:
            record = ServedRecord.from_fields(fields)
            if max_rows is not None and out and rows + len(record.items) > max_rows:
                return out, True
            out.append(Served(entry_id, record))
            rows += len(record.items)
            last = entry_id
        if len(page) < PAGE:
            return out, False


def read_events(client: SyncRedis, keys: GatewayKeys, from_ms: int) -> list[EventRecord]:
    events: list[EventRecord] = []
    low = str(from_ms)
    while True:
        page = _xrange(client, keys.events, low, "+")
        events.extend(EventRecord.from_fields(fields) for _, fields in page)
        if len(page) < PAGE:
            return events
        low = f"({page[-1][0]}"


def redis_now_ms(client: SyncRedis) -> int:
    """Redis' clock: the one stream ids are stamped with."""
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


# --- one run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pending:
    """The batch a run writes: replayed as it is by the next run when this one dies."""

    after: str
    last: str
    joined_at_ms: int
    files: list[str]

    def to_json(self) -> str:
        return _compact(
            {
                "after": self.after,
                "last": self.last,
                "joinedAtMs": self.joined_at_ms,
                "files": self.files,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> Pending:
        data = json.loads(raw)
        return cls(
            str(data["after"]), str(data["last"]), int(data["joinedAtMs"]), list(data["files"])
        )


def _crash_point(point: str) -> None:
    if os.environ.get(CRASH_ENV) == point:
        log.warning("%s=%s: killing this run (a test's crash)", CRASH_ENV, point)
        os.kill(os.getpid(), signal.SIGKILL)


def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


#: Cursor ``ARGV[1]`` -> ``ARGV[2]`` and the pending batch gone, only if the cursor is still
#: ``ARGV[1]``: one atomic step.
_ADVANCE = """
local now = redis.call('GET', KEYS[1]) or '0-0'
if now ~= ARGV[1] then return now end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[2])
return false
"""


def _advance(client: SyncRedis, keys: GatewayKeys, previous: str, cursor: str) -> None:
    """Cursor ``previous`` -> ``cursor`` and the pending batch gone, as one step; refused when
    another run moved the cursor meanwhile (the CronJob forbids overlap: this is the proof)."""
    moved: Any = client.eval(
        _ADVANCE, 2, keys.logjoin_cursor, keys.logjoin_pending, previous, cursor
    )
    if moved is not None:
        raise TransientError(
            f"the log join cursor moved from {previous} to {moved!r} during this run: "
            "another run overlapped; this one's files are replayed by the next run"
        )


def _trim(
    client: SyncRedis, keys: GatewayKeys, cursor: str, now_ms: int, retain_ms: int
) -> tuple[int, int]:
    """Remove what is written (at or below ``cursor``) and older than the retention."""
    if cursor == "0-0":
        return 0, 0
    kept_from = (now_ms - retain_ms, 0)
    written = parse_id(_after(cursor))
    served_min = min(written, kept_from)
    # an event can still match a response after the cursor as long as it is within the slack
    events_min = min((parse_id(cursor)[0] - 2 * CLOCK_SLACK_MS, 0), kept_from)
    trimmed = []
    for key, (ms, seq) in ((keys.served, served_min), (keys.events, events_min)):
        trimmed.append(int(client.xtrim(key, minid=f"{ms}-{seq}")) if ms > 0 else 0)
    return trimmed[0], trimmed[1]


def run_join(
    client: SyncRedis, keys: GatewayKeys, store: Store, cfg: LogJoinConfig
) -> LogJoinSummary:
    raw_cursor = client.get(keys.logjoin_cursor)
    cursor = raw_cursor.decode() if isinstance(raw_cursor, bytes) else "0-0"
    raw_pending = client.get(keys.logjoin_pending)
    pending = Pending.from_json(raw_pending) if isinstance(raw_pending, bytes) else None
    now_ms = redis_now_ms(client)
    if pending is not None and pending.after != cursor:
        log.warning("dropping a pending batch from %s: the cursor is at %s", pending.after, cursor)
        pending = None
    replayed = pending is not None
    if pending is not None:
        log.info("replaying the batch a killed run began: (%s, %s]", pending.after, pending.last)
        served, more = read_served(client, keys, cursor, pending.last)
        joined_at_ms = pending.joined_at_ms
    else:
        high = str(now_ms - int(cfg.wait_seconds * 1000))
        served, more = read_served(client, keys, cursor, high, cfg.max_rows)
        joined_at_ms = now_ms
    written: list[str] = []
    rows = positives = events_read = unmatched = 0
    new_cursor = cursor
    if served or pending is not None:
        first_ms = min((s.record.ts_ms for s in served), default=now_ms)
        events = read_events(client, keys, max(first_ms - CLOCK_SLACK_MS, 0)) if served else []
        events_read = len(events)
        files = partition_files(served)
        last = pending.last if pending is not None else served[-1].id
        client.set(keys.logjoin_pending, Pending(cursor, last, joined_at_ms, list(files)).to_json())
        _crash_point("pending")
        tables = {}
        all_served = [s for group in files.values() for s in group]
        table, unmatched = join_rows(all_served, events, joined_at_ms)
        offset = 0
        for name, group in files.items():
            count = sum(len(s.record.items) for s in group)
            tables[name] = table.slice(offset, count)
            offset += count
        for name, part in tables.items():
            store.write_bytes(join_uri(cfg.output_uri, name), _parquet(part), "write logged rows")
            written.append(name)
            _crash_point("file")
        _crash_point("written")
        for stale in pending.files if pending is not None else []:
            if stale not in tables:  # entries the killed run saw are gone (the gateway's cap)
                store.remove(join_uri(cfg.output_uri, stale), "remove a stale logged file")
        rows = table.num_rows
        positives = int(sum(table.column("clicked").to_pylist()))
        _advance(client, keys, cursor, last)
        new_cursor = last
    trimmed_served, trimmed_events = _trim(
        client, keys, new_cursor, now_ms, int(cfg.retain_seconds * 1000)
    )
    return LogJoinSummary(
        responses=len(served),
        rows=rows,
        positives=positives,
        partitions=written,
        previous_cursor=cursor,
        cursor=new_cursor,
        replayed=replayed,
        events=events_read,
        unmatched_events=unmatched,
        trimmed_served=trimmed_served,
        trimmed_events=trimmed_events,
        more=more,
    )


def work(raw: dict[str, Any]) -> dict[str, Any]:
    cfg = parse_config(LogJoinConfig, raw, "log join config")
    online = cfg.online_store
    client = redis_client(
        online.redis_url, online.connect_timeout_seconds, cluster=online.redis_cluster
    )
    keys = GatewayKeys.of(cfg.recommender, online.key_prefix)
    try:
        return run_join(client, keys, Store(cfg.storage_options), cfg).to_wire()
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise TransientError(f"onlineStore.redisUrl: cannot reach Redis: {exc}") from exc
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    return run_entrypoint("logjoin", work, argv)


if __name__ == "__main__":
    sys.exit(main())
