"""Turn the served log and the outcome events into training rows (parquet): the "wait" half
of log and wait.

``python -m recsys_workloads.gateway.training_rows --config PATH`` with::

    {
      "redisUrl": "redis://redis.shop.svc:6379/0",
      "recommender": "shop.movies",
      "keyPrefix": "",
      "after": "0-0",                    # served-stream id to continue from (exclusive)
      "waitSeconds": 3600,               # only responses at least this old: late clicks land
      "impressionsUri": "s3://recsys/movies/logs/impressions-2024-05-01.parquet",
      "interactionsUri": "s3://recsys/movies/logs/interactions-2024-05-01.parquet",
      "storageOptions": {}
    }

It reads every ``served`` entry newer than ``after`` and older than ``waitSeconds``, every
``events`` entry from the first such response on, and joins them by request id and item:

- ``impressionsUri``: one row per served item: ``request_id``, ``event_timestamp`` (when it
  was served), ``user_id``, ``item_id``, ``position`` (0 = top), ``score``, ``variant``,
  ``model_version``, ``fallback`` (null or the reason), ``clicked``, ``purchased``,
  ``outcome_timestamp`` (the first outcome's time, null without one), ``user_features`` (the
  raw features the models saw, JSON) and ``user_history`` (the recent items they saw). Rows
  without outcomes are the negatives a ranker learns from; ``user_features`` keeps training
  on what serving saw (no skew).
- ``interactionsUri`` (optional): only the items with an outcome, in the offline dataset's
  interactions layout (``user_id``, ``item_id``, ``rating`` = 1 click / 2 purchase,
  ``event_timestamp`` = the outcome's time), so the next training run reads it like any other
  interactions file.

The summary (the termination message) carries ``lastId``: pass it as ``after`` next time and
no response is turned into rows twice. An event whose request is not in the window, or whose
item was not served in that response, is counted (``unmatchedEvents``) and dropped.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import redis
from pydantic import Field

from recsys_contract.base import ConfigSection
from recsys_contract.formats import REDIS_PASSWORD_ENV
from recsys_contract.keyspace import GatewayKeys
from recsys_workloads.artifact_store import Store
from recsys_workloads.datasets.layout import INTERACTIONS_SCHEMA, TIMESTAMP
from recsys_workloads.gateway.served_log import EventRecord, ServedRecord
from recsys_workloads.runtime import TransientError, parse_config, run_entrypoint

PAGE = 1000
OUTCOME_RATING = {"click": 1.0, "purchase": 2.0}

IMPRESSIONS_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("event_timestamp", TIMESTAMP, nullable=False),
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),
        pa.field("score", pa.float32(), nullable=False),
        pa.field("variant", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("fallback", pa.string()),
        pa.field("clicked", pa.bool_(), nullable=False),
        pa.field("purchased", pa.bool_(), nullable=False),
        pa.field("outcome_timestamp", TIMESTAMP),
        pa.field("user_features", pa.string()),
        pa.field("user_history", pa.list_(pa.int64())),
    ]
)


def join_rows(
    served: Sequence[ServedRecord], events: Iterable[EventRecord]
) -> tuple[pa.Table, pa.Table, int]:
    """(impressions, interactions, unmatched events) for the given responses and events."""
    outcomes: dict[tuple[str, int], dict[str, int]] = {}
    wanted = {(s.request_id, item) for s in served for item, _ in s.items}
    unmatched = 0
    for e in events:
        key = (e.request_id, e.item_id)
        if key not in wanted:
            unmatched += 1
            continue
        seen = outcomes.setdefault(key, {})
        seen[e.type] = min(seen.get(e.type, e.ts_ms), e.ts_ms)
    cols: dict[str, list[Any]] = {name: [] for name in IMPRESSIONS_SCHEMA.names}
    inter: dict[str, list[Any]] = {name: [] for name in INTERACTIONS_SCHEMA.names}
    for s in served:
        features = json.dumps(s.features, separators=(",", ":")) if s.features else None
        for position, (item, score) in enumerate(s.items):
            got = outcomes.get((s.request_id, item), {})
            first = min(got.values()) if got else None
            cols["request_id"].append(s.request_id)
            cols["event_timestamp"].append(s.ts_ms * 1000)
            cols["user_id"].append(s.user_id)
            cols["item_id"].append(item)
            cols["position"].append(position)
            cols["score"].append(score)
            cols["variant"].append(s.variant)
            cols["model_version"].append(s.model_version)
            cols["fallback"].append(s.fallback)
            cols["clicked"].append("click" in got or "purchase" in got)
            cols["purchased"].append("purchase" in got)
            cols["outcome_timestamp"].append(first * 1000 if first is not None else None)
            cols["user_features"].append(features)
            cols["user_history"].append(s.history)
            if got:
                inter["user_id"].append(s.user_id)
                inter["item_id"].append(item)
                inter["rating"].append(max(OUTCOME_RATING[t] for t in got))
                inter["event_timestamp"].append(first * 1000 if first is not None else 0)
    impressions = pa.table(
        {
            name: pa.array(values, IMPRESSIONS_SCHEMA.field(name).type)
            for name, values in cols.items()
        },
        schema=IMPRESSIONS_SCHEMA,
    )
    interactions = pa.table(
        {
            name: pa.array(values, INTERACTIONS_SCHEMA.field(name).type)
            for name, values in inter.items()
        },
        schema=INTERACTIONS_SCHEMA,
    )
    return impressions, interactions, unmatched


#: Events are read from this long before the first response (clocks of gateways and Redis).
CLOCK_SLACK_MS = 60_000


def _xrange(
    client: redis.Redis, key: str, low: str, high: str
) -> list[tuple[str, dict[bytes, bytes]]]:
    page: Any = client.xrange(key, min=low, max=high, count=PAGE)
    return [(entry_id.decode(), fields) for entry_id, fields in page]


def read_served(
    client: redis.Redis, keys: GatewayKeys, after: str, before_ms: int
) -> tuple[list[ServedRecord], str]:
    """Served responses with ids in (after, before_ms], and the last id read."""
    records: list[ServedRecord] = []
    last = after
    while True:
        page = _xrange(client, keys.served, f"({last}", str(before_ms))
        for entry_id, fields in page:
            records.append(ServedRecord.from_fields(fields))
            last = entry_id
        if len(page) < PAGE:
            return records, last


def read_events(client: redis.Redis, keys: GatewayKeys, from_ms: int) -> list[EventRecord]:
    events: list[EventRecord] = []
    low = str(from_ms)
    while True:
        page = _xrange(client, keys.events, low, "+")
        events.extend(EventRecord.from_fields(fields) for _, fields in page)
        if len(page) < PAGE:
            return events
        low = f"({page[-1][0]}"


def read_training_rows(
    client: redis.Redis, keys: GatewayKeys, *, after: str = "0-0", wait_s: float = 0.0
) -> tuple[pa.Table, pa.Table, dict[str, Any]]:
    before_ms = int((time.time() - wait_s) * 1000)
    served, last = read_served(client, keys, after, before_ms)
    first_ms = min((s.ts_ms for s in served), default=0)
    events = read_events(client, keys, max(first_ms - CLOCK_SLACK_MS, 0)) if served else []
    impressions, interactions, unmatched = join_rows(served, events)
    summary = {
        "lastId": last,
        "responses": len(served),
        "impressions": impressions.num_rows,
        "interactions": interactions.num_rows,
        "events": len(events),
        "unmatchedEvents": unmatched,
    }
    return impressions, interactions, summary


class TrainingRowsConfig(ConfigSection):
    redis_url: str = Field(min_length=1)
    recommender: str = Field(min_length=1)
    key_prefix: str = ""
    after: str = Field(default="0-0", pattern=r"^\d+-\d+$")
    wait_seconds: float = Field(default=3600.0, ge=0)
    impressions_uri: str = Field(min_length=1)
    interactions_uri: str | None = None
    storage_options: dict[str, Any] = Field(default_factory=dict)


def _write(store: Store, uri: str, table: pa.Table) -> None:
    fs, path = store.fs_and_path(uri)
    parent = path.rsplit("/", 1)[0]
    if parent and parent != path:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as handle:
        pq.write_table(table, handle)


def work(raw: dict[str, Any]) -> dict[str, Any]:
    cfg = parse_config(TrainingRowsConfig, raw, "training rows config")
    client = redis.Redis.from_url(
        cfg.redis_url, password=os.environ.get(REDIS_PASSWORD_ENV) or None
    )
    keys = GatewayKeys.of(cfg.recommender, cfg.key_prefix)
    try:
        impressions, interactions, summary = read_training_rows(
            client, keys, after=cfg.after, wait_s=cfg.wait_seconds
        )
    except redis.exceptions.ConnectionError as exc:
        raise TransientError(f"redisUrl: cannot reach Redis: {exc}") from exc
    finally:
        client.close()
    store = Store(cfg.storage_options)
    _write(store, cfg.impressions_uri, impressions)
    if cfg.interactions_uri:
        _write(store, cfg.interactions_uri, interactions)
    return summary


def main(argv: list[str] | None = None) -> int:
    return run_entrypoint("training-rows", work, argv)


if __name__ == "__main__":
    sys.exit(main())
