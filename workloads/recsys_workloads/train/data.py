"""Loading the offline parquet layout and checking it before any training time is spent.

The layout (written by ``recsys_workloads.datasets``; the log join's rows are read by
``train.logged``)::

    interactions: user_id int64, item_id int64, rating float (optional), event_timestamp timestamp
                  (the names are the config's ``interactionColumns``; these are the defaults)
    users:        user_id int64, event_timestamp timestamp, <user features...>
    items:        item_id int64, event_timestamp timestamp, <item features...>

Entity tables may hold several rows per entity (a feature that changed over time); training
joins each interaction to the latest row at or before the interaction's time, never a later
one, so a model cannot learn from the future. Every problem here is bad input: the message
names the table, the column and what was expected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from recsys_contract.train import InteractionColumns
from recsys_workloads.artifact_store import Store, store_errors
from recsys_workloads.runtime import BadInputError

USER_KEY = "user_id"
ITEM_KEY = "item_id"
EVENT_TIME = "event_timestamp"
RATING = "rating"
#: the interactions' columns when the config names none
DEFAULT_COLUMNS = InteractionColumns()

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


def read_table(store: Store, uri: str, what: str, columns: Sequence[str] | None = None) -> pa.Table:
    """Read a parquet file or directory of files; only ``columns`` when given and present."""
    fs, path = store.fs_and_path(uri)
    with store_errors(uri, f"read {what}"):
        try:
            dataset = pads.dataset(path, filesystem=fs, format="parquet")
            wanted = None
            if columns is not None:
                wanted = [c for c in columns if c in dataset.schema.names]
            return dataset.to_table(columns=wanted)
        except pa.ArrowInvalid as exc:
            raise BadInputError(f"{what}: {uri} is not readable parquet ({exc})") from exc


def _require_columns(table: pa.Table, what: str, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in table.schema.names]
    if missing:
        raise BadInputError(
            f"{what}: missing column(s) {', '.join(repr(c) for c in missing)}; "
            f"found {table.schema.names}. The offline layout needs {list(columns)}"
        )


def _require_integer(table: pa.Table, what: str, column: str) -> None:
    dtype = table.schema.field(column).type
    if not pa.types.is_integer(dtype):
        raise BadInputError(
            f"{what}: column {column!r} must be an integer type (int64), found {dtype}"
        )


def _require_timestamp(table: pa.Table, what: str, column: str) -> None:
    dtype = table.schema.field(column).type
    if not pa.types.is_timestamp(dtype):
        raise BadInputError(
            f"{what}: column {column!r} must be a timestamp (timestamp[us, tz=UTC]), found {dtype}"
        )


def _require_no_nulls(table: pa.Table, what: str, columns: Sequence[str]) -> None:
    for column in columns:
        nulls = table.column(column).null_count
        if nulls:
            raise BadInputError(f"{what}: column {column!r} has {nulls} null value(s); drop them")


def timestamps_us(column: pa.ChunkedArray) -> IntArray:
    """Microseconds since the epoch (UTC; naive timestamps are taken as UTC)."""
    as_us = pc.cast(column, pa.timestamp("us", tz=column.type.tz))
    return np.asarray(pc.cast(as_us, pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)


@dataclass(frozen=True)
class Interactions:
    """Interactions as parallel numpy arrays, sorted by time (ties by user, then item)."""

    user_ids: IntArray
    item_ids: IntArray
    ratings: FloatArray
    times_us: IntArray

    def __len__(self) -> int:
        return int(self.user_ids.size)

    def take(self, mask: npt.NDArray[np.bool_]) -> Interactions:
        return Interactions(
            self.user_ids[mask], self.item_ids[mask], self.ratings[mask], self.times_us[mask]
        )

    def concat(self, other: Interactions) -> Interactions:
        """Both sets, sorted again (by time, ties by user, then item)."""
        users = np.concatenate([self.user_ids, other.user_ids])
        items = np.concatenate([self.item_ids, other.item_ids])
        ratings = np.concatenate([self.ratings, other.ratings]).astype(np.float32)
        times = np.concatenate([self.times_us, other.times_us])
        order = np.lexsort((items, users, times))
        return Interactions(users[order], items[order], ratings[order], times[order])


def interaction_columns(columns: InteractionColumns) -> list[str]:
    """The columns of the interactions table to read: its ids, time and label (when any)."""
    return [columns.user_id, columns.item_id, columns.label or RATING, columns.timestamp]


def validate_interactions(
    table: pa.Table, columns: InteractionColumns = DEFAULT_COLUMNS
) -> Interactions:
    """Check the interactions table, its columns named by ``columns`` (``interactionColumns``
    of the config, the Recommender's ``spec.interactions``)."""
    what = "interactions"
    user, item, time = columns.user_id, columns.item_id, columns.timestamp
    _require_columns(table, what, [user, item, time, *([columns.label] if columns.label else [])])
    _require_integer(table, what, user)
    _require_integer(table, what, item)
    _require_timestamp(table, what, time)
    if table.num_rows == 0:
        raise BadInputError(
            "interactions: the table has no rows; training needs at least one interaction "
            "(check interactionsUri and that the source was written)"
        )
    _require_no_nulls(table, what, [user, item, time])
    label = columns.label or RATING
    if label in table.schema.names:
        rtype = table.schema.field(label).type
        if not (pa.types.is_floating(rtype) or pa.types.is_integer(rtype)):
            raise BadInputError(
                f"interactions: column {label!r} must be numeric (float32), found {rtype}"
            )
        ratings = pc.fill_null(pc.cast(table.column(label), pa.float32()), 1.0)
        rating_arr = np.asarray(ratings.to_numpy(zero_copy_only=False), dtype=np.float32)
    else:
        rating_arr = np.ones(table.num_rows, dtype=np.float32)
    users = np.asarray(table.column(user).to_numpy(), dtype=np.int64)
    items = np.asarray(table.column(item).to_numpy(), dtype=np.int64)
    times = timestamps_us(table.column(time))
    order = np.lexsort((items, users, times))
    return Interactions(users[order], items[order], rating_arr[order], times[order])


def validate_entity_table(
    table: pa.Table, entity: str, key: str, features: Sequence[str] | None
) -> tuple[pa.Table, list[str]]:
    """Check an entity table; returns it (key, time, features only) and the feature names."""
    what = f"{entity}s table"
    _require_columns(table, what, [key, EVENT_TIME])
    _require_integer(table, what, key)
    _require_timestamp(table, what, EVENT_TIME)
    if table.num_rows == 0:
        raise BadInputError(
            f"{what}: the table has no rows; give a {entity}s source with rows or leave its URI out"
        )
    _require_no_nulls(table, what, [key, EVENT_TIME])
    available = [c for c in table.schema.names if c not in (key, EVENT_TIME)]
    if features is None:
        names = available
    else:
        unknown = [f for f in features if f not in available]
        if unknown:
            raise BadInputError(
                f"features.{entity}: {unknown} are not columns of the {entity}s table "
                f"(columns: {available})"
            )
        names = list(features)
    return table.select([key, EVENT_TIME, *names]), names


@dataclass(frozen=True)
class TimeSplit:
    train: Interactions
    test: Interactions
    cutoff_us: int


def time_split(interactions: Interactions, holdout_fraction: float) -> TimeSplit:
    """Everything before the cutoff trains, everything at or after it tests.

    The cutoff is the time below which ``1 - holdout_fraction`` of interactions fall: a global
    cut, as in production where the model only ever knows the past.
    """
    times = interactions.times_us
    cutoff = int(np.quantile(times, 1.0 - holdout_fraction, method="lower"))
    if cutoff == int(times.min()):
        # many equal timestamps at the start: fall back to the first later time
        later = times[times > cutoff]
        cutoff = int(later.min()) if later.size else cutoff
    train_mask = times < cutoff
    split = TimeSplit(interactions.take(train_mask), interactions.take(~train_mask), cutoff)
    if len(split.train) == 0 or len(split.test) == 0:
        raise BadInputError(
            f"evaluation.holdoutFraction={holdout_fraction}: the time split leaves "
            f"{len(split.train)} training and {len(split.test)} test interactions; the "
            "interactions need at least two distinct timestamps"
        )
    return split


def per_user_split(interactions: Interactions, holdout_fraction: float) -> TimeSplit:
    """Each user's last interactions test, everything before them trains (leave-last-out).

    A user with n interactions holds out their last max(1, round(holdout_fraction * n)),
    always keeping at least one to train on; a user with a single interaction only trains.
    Every user with two or more interactions is then evaluated (the global cut evaluates only
    those active on both sides of one moment), at the price of training on other users'
    later interactions. ``cutoff_us`` is just after the last training interaction: entity
    rows and encoders are taken as of then.
    """
    n = len(interactions)
    users, times = interactions.user_ids, interactions.times_us
    order = np.lexsort((np.arange(n), times, users))
    sorted_users = users[order]
    starts = np.r_[0, np.flatnonzero(sorted_users[1:] != sorted_users[:-1]) + 1]
    counts = np.diff(np.r_[starts, n])
    held = np.minimum(counts - 1, np.maximum(1, np.round(holdout_fraction * counts))).astype(
        np.int64
    )
    rank_from_end = np.repeat(starts + counts, counts) - np.arange(n) - 1
    test_sorted = rank_from_end < np.repeat(held, counts)
    test_mask = np.zeros(n, dtype=bool)
    test_mask[order] = test_sorted
    if not test_mask.any() or test_mask.all():
        raise BadInputError(
            f"evaluation.holdoutFraction={holdout_fraction} with the per-user split holds out "
            f"{int(test_mask.sum())} of {n} interactions; it needs users with two or more "
            "interactions: use split time, or more data"
        )
    train = interactions.take(~test_mask)
    return TimeSplit(train, interactions.take(test_mask), int(train.times_us.max()) + 1)


def asof_rows(
    entity_keys: IntArray, entity_times: IntArray, keys: IntArray, times: IntArray
) -> IntArray:
    """For each (key, time), the entity row valid then: latest row with row time <= time.

    Returns -1 where the entity has no row yet (its features are then "missing").
    """
    if keys.size == 0:
        return np.zeros(0, dtype=np.int64)
    if entity_keys.size == 0:
        return np.full(keys.size, -1, dtype=np.int64)
    left = pd.DataFrame({"k": keys, "t": times, "q": np.arange(keys.size)}).sort_values("t")
    right = pd.DataFrame(
        {"k": entity_keys, "t": entity_times, "row": np.arange(entity_keys.size)}
    ).sort_values(["t", "row"])
    joined = pd.merge_asof(left, right, on="t", by="k", direction="backward")
    out = np.full(keys.size, -1, dtype=np.int64)
    rows = joined["row"].to_numpy()
    found = ~np.isnan(rows.astype(np.float64))
    out[joined["q"].to_numpy()[found]] = rows[found].astype(np.int64)
    return out


def latest_rows(entity_keys: IntArray, entity_times: IntArray, as_of_us: int | None) -> IntArray:
    """Row index of each entity's latest row at or before ``as_of_us`` (all rows if None)."""
    mask = np.ones(entity_keys.size, dtype=bool)
    if as_of_us is not None:
        mask = entity_times <= as_of_us
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return idx.astype(np.int64)
    order = idx[np.lexsort((idx, entity_times[idx], entity_keys[idx]))]
    keys_sorted = entity_keys[order]
    last = np.r_[keys_sorted[1:] != keys_sorted[:-1], True]
    return np.asarray(order[last], dtype=np.int64)
