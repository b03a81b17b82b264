"""Logged rows as training data: the log join's partitions (``recsys_workloads.logjoin``).

Every clicked or purchased served item becomes one more interaction (rating 1 for a click, 2
for a purchase, at the outcome's time); rows without an outcome are not interactions (the
two-tower learns from positives; its negatives come from the batch). Where training has a
users table, the features the gateway served to that user at that moment become a row of it,
stamped with the serving time, so the as-of join gives the interaction exactly the features
serving saw (no skew between training and serving). A served feature that does not fit the
users table's column type leaves the batch features in place for every logged row, and the
lineage says so.

Rows are read when served at or after ``since`` and joined before ``until``: a row joined
later (the log join runs after the serving, by its wait) is not read by a run whose
``until`` passed, so a retry of the same ModelVersion reads the same rows. No partitions (no
log join has run yet, or serving has not started) is no logged data, not an error.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from recsys_contract.logjoin import PART_PREFIX, PART_SUFFIX, PARTITION_KEY
from recsys_contract.train import LoggedLineage, timestamp
from recsys_workloads.artifact_store import Store, store_errors
from recsys_workloads.runtime import BadInputError
from recsys_workloads.train.data import (
    EVENT_TIME,
    USER_KEY,
    IntArray,
    Interactions,
    timestamps_us,
)

log = logging.getLogger("recsys_workloads.train.logged")

COLUMNS = [
    "user_id",
    "item_id",
    "event_timestamp",
    "clicked",
    "purchased",
    "outcome_timestamp",
    "user_features",
    "joined_at",
]
CLICK_RATING, PURCHASE_RATING = 1.0, 2.0


@dataclass(frozen=True)
class LoggedData:
    """The positives of the logged rows in range, and what was read."""

    interactions: Interactions
    #: per interaction: the user's served features (JSON, None without) and the serving time
    served_features: list[str | None] = field(default_factory=list)
    served_us: IntArray = field(default_factory=lambda: np.zeros(0, np.int64))
    lineage: LoggedLineage | None = None


def _empty() -> Interactions:
    z = np.zeros(0, np.int64)
    return Interactions(z, z.copy(), np.zeros(0, np.float32), z.copy())


def _day(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).date().isoformat() if value else None


def _iso_us(us: int) -> str:
    return timestamp(dt.datetime.fromtimestamp(us / 1e6, dt.UTC))


def read_logged(
    store: Store, uri: str, since: dt.datetime | None, until: dt.datetime | None
) -> LoggedData:
    fs, path = store.fs_and_path(uri)
    with store_errors(uri, "list logged rows"):
        found = sorted(fs.glob(f"{path.rstrip('/')}/{PARTITION_KEY}=*/{PART_PREFIX}*{PART_SUFFIX}"))
    low, high = _day(since), _day(until)
    files: list[str] = []
    for f in found:
        day = f.rsplit("/", 2)[-2].removeprefix(f"{PARTITION_KEY}=")
        # a row joined before ``until`` was served before it too: later days hold none
        if (low is None or day >= low) and (high is None or day <= high):
            files.append(f)
    lineage = LoggedLineage(
        uri=uri,
        since=timestamp(since) if since else None,
        until=timestamp(until) if until else None,
        files=len(files),
    )
    if not files:
        log.info("no logged rows under %s in range", uri)
        return LoggedData(_empty(), lineage=lineage)
    tables, days = [], set()
    for f in files:
        with store_errors(uri, "read logged rows"):
            try:
                part = pads.dataset(f, filesystem=fs, format="parquet").to_table(columns=COLUMNS)
            except pa.ArrowInvalid as exc:
                raise BadInputError(f"logged rows: {f} is not readable parquet ({exc})") from exc
        keep = np.ones(part.num_rows, dtype=bool)
        if since is not None:
            keep &= timestamps_us(part.column("event_timestamp")) >= int(since.timestamp() * 1e6)
        if until is not None:
            keep &= timestamps_us(part.column("joined_at")) < int(until.timestamp() * 1e6)
        if keep.any():
            tables.append(part.filter(pa.array(keep)))
            days.add(f.rsplit("/", 2)[-2])
    if not tables:
        return LoggedData(_empty(), lineage=lineage)
    table = pa.concat_tables(tables)
    served = timestamps_us(table.column("event_timestamp"))
    positive = np.asarray(table.column("clicked").to_numpy(zero_copy_only=False), dtype=bool)
    pos = table.filter(pa.array(positive))
    outcome = pc.coalesce(pos.column("outcome_timestamp"), pos.column("event_timestamp"))
    purchased = np.asarray(pos.column("purchased").to_numpy(zero_copy_only=False), dtype=bool)
    users = np.asarray(pos.column("user_id").to_numpy(), dtype=np.int64)
    items = np.asarray(pos.column("item_id").to_numpy(), dtype=np.int64)
    ratings = np.where(purchased, PURCHASE_RATING, CLICK_RATING).astype(np.float32)
    interactions = Interactions(users, items, ratings, timestamps_us(outcome))
    lineage = lineage.model_copy(
        update={
            "partitions": sorted(days),
            "rows": table.num_rows,
            "interactions": len(interactions),
            "first_served": _iso_us(int(served.min())) if served.size else None,
            "last_served": _iso_us(int(served.max())) if served.size else None,
        }
    )
    return LoggedData(
        interactions,
        served_features=pos.column("user_features").to_pylist(),
        served_us=served[positive],
        lineage=lineage,
    )


def with_served_features(users: pa.Table, logged: LoggedData) -> tuple[pa.Table, bool]:
    """The users table plus one row per logged interaction with served features: the user's
    features as served, at the serving time. Unchanged (and False) when there are none or
    they do not fit the table's columns."""
    rows = [i for i, f in enumerate(logged.served_features) if f]
    if not rows or USER_KEY not in users.schema.names or EVENT_TIME not in users.schema.names:
        return users, False
    decoded = [json.loads(logged.served_features[i] or "{}") for i in rows]
    columns: dict[str, pa.Array] = {}
    try:
        for f in users.schema:
            if f.name == USER_KEY:
                values: list[object] = [int(logged.interactions.user_ids[i]) for i in rows]
            elif f.name == EVENT_TIME:
                values = [int(logged.served_us[i]) for i in rows]
                columns[f.name] = pa.array(values, pa.int64()).cast(f.type)
                continue
            else:
                values = [d.get(f.name) if isinstance(d, dict) else None for d in decoded]
            columns[f.name] = pa.array(values, f.type)
        extra = pa.table(columns, schema=users.schema)
        return pa.concat_tables([users, extra]), True
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        log.warning("served user features do not fit the users table (%s): batch features", exc)
        return users, False
