"""MovieLens-100k, converted from the copy the ``recbole`` wheel ships, into the offline layout.

The wheel carries the data set as package data (``recbole/dataset_example/ml-100k``: atomic
files in RecBole's tab-separated format with a typed header such as ``user_id:token``), so a
pod or a test converts it with no network access. Only ``recbole``'s data files are used; the
package is never imported (it would pull torch and friends).

MovieLens has no time for user and item attributes, so each entity's ``event_timestamp`` is its
first rating: the attribute is known from the moment the entity appears, which keeps
point-in-time joins honest (no user features before the user exists). Items nobody rated get
the data set's first timestamp.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from recsys_workloads.datasets.layout import (
    EVENT_TIMESTAMP,
    INTERACTIONS_SCHEMA,
    ITEM_ID,
    ITEMS_SCHEMA,
    TIMESTAMP,
    USER_ID,
    USERS_SCHEMA,
    DatasetPaths,
)
from recsys_workloads.datasets.parquet_io import write_table
from recsys_workloads.runtime import BadInputError

PACKAGE = "recbole"
SUBDIR = ("dataset_example", "ml-100k")
NAME = "ml-100k"


def source_dir() -> Path:
    """The folder of the installed wheel that holds ``ml-100k.{inter,user,item}``."""
    try:
        root = importlib.resources.files(PACKAGE)
    except ModuleNotFoundError as exc:
        raise BadInputError(
            "MovieLens-100k comes from the recbole wheel's package data, and recbole is not "
            "installed: pip install --no-deps recbole"
        ) from exc
    folder = Path(str(root.joinpath(*SUBDIR)))
    if not (folder / f"{NAME}.inter").is_file():
        raise BadInputError(f"{folder} has no {NAME}.inter: the recbole wheel is incomplete")
    return folder


def _read_atomic(path: Path) -> pa.Table:
    """Read one RecBole atomic file as strings; the header's ``:type`` suffixes are dropped."""
    with path.open(encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").split("\t")
    names = [column.split(":", 1)[0] for column in header]
    return pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=names, skip_rows=1),
        parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
        convert_options=pacsv.ConvertOptions(
            column_types={name: pa.string() for name in names}, strings_can_be_null=True
        ),
    )


def _seconds_to_timestamp(values: pa.Array) -> pa.Array:
    seconds = pc.cast(pc.cast(values, pa.float64()), pa.int64())
    return pc.cast(pc.multiply(seconds, 1_000_000), TIMESTAMP)


def _first_seen(ids: pa.Array, times: pa.Array, key: str) -> pa.Table:
    return (
        pa.table({key: ids, EVENT_TIMESTAMP: times})
        .group_by(key)
        .aggregate([(EVENT_TIMESTAMP, "min")])
        .rename_columns([key, EVENT_TIMESTAMP])
    )


def _attach_first_seen(table: pa.Table, first: pa.Table, key: str, default: Any) -> pa.Table:
    """Add each entity's first-seen time (``default`` when it never appears)."""
    position = pc.index_in(table[key], value_set=first[key])
    times = pc.fill_null(pc.take(first[EVENT_TIMESTAMP], position), pa.scalar(default, TIMESTAMP))
    return table.append_column(EVENT_TIMESTAMP, times)


def load(folder: Path | None = None) -> tuple[pa.Table, pa.Table, pa.Table]:
    """The three layout tables (interactions, users, items), sorted by key and time."""
    folder = folder or source_dir()
    inter = _read_atomic(folder / f"{NAME}.inter")
    interactions = pa.table(
        {
            USER_ID: pc.cast(inter["user_id"], pa.int64()),
            ITEM_ID: pc.cast(inter["item_id"], pa.int64()),
            "rating": pc.cast(pc.cast(inter["rating"], pa.float64()), pa.float32()),
            EVENT_TIMESTAMP: _seconds_to_timestamp(inter["timestamp"]),
        },
        schema=INTERACTIONS_SCHEMA,
    ).sort_by([(EVENT_TIMESTAMP, "ascending"), (USER_ID, "ascending"), (ITEM_ID, "ascending")])
    start = pc.min(interactions[EVENT_TIMESTAMP]).as_py()

    user = _read_atomic(folder / f"{NAME}.user")
    users = pa.table(
        {
            USER_ID: pc.cast(user["user_id"], pa.int64()),
            "age": pc.cast(user["age"], pa.int32()),
            "gender": user["gender"],
            "occupation": user["occupation"],
        }
    )
    users = _attach_first_seen(
        users,
        _first_seen(interactions[USER_ID], interactions[EVENT_TIMESTAMP], USER_ID),
        USER_ID,
        start,
    )

    item = _read_atomic(folder / f"{NAME}.item")
    # Two rows carry a placeholder ("unkonwn", "V") instead of a year: those become null.
    raw_years = item["release_year"]
    is_year = pc.fill_null(pc.match_substring_regex(raw_years, r"^[0-9]{4}$"), False)
    years = pc.if_else(is_year, raw_years, pa.scalar(None, pa.string()))
    genres = pc.split_pattern(pc.fill_null(item["class"], ""), " ")
    items = pa.table(
        {
            ITEM_ID: pc.cast(item["item_id"], pa.int64()),
            "genres": _drop_empty_strings(genres),
            "release_year": pc.cast(years, pa.int32()),
        }
    )
    items = _attach_first_seen(
        items,
        _first_seen(interactions[ITEM_ID], interactions[EVENT_TIMESTAMP], ITEM_ID),
        ITEM_ID,
        start,
    )
    return (
        interactions,
        users.select(USERS_SCHEMA.names).cast(USERS_SCHEMA).sort_by(USER_ID),
        items.select(ITEMS_SCHEMA.names).cast(ITEMS_SCHEMA).sort_by(ITEM_ID),
    )


def _drop_empty_strings(lists: pa.ChunkedArray | pa.Array) -> pa.Array:
    """``"".split(" ")`` yields ``[""]``: an item without genres gets an empty list instead."""
    values = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
    flat = values.flatten()
    keep = np.asarray(pc.not_equal(flat, "").to_numpy(zero_copy_only=False), dtype=bool)
    parent = np.asarray(pc.list_parent_indices(values).to_numpy())
    counts = np.bincount(parent[keep], minlength=len(values))
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), flat.filter(pa.array(keep)))


def write_dataset(
    out: str, *, storage_options: dict[str, Any] | None = None, source: Path | None = None
) -> DatasetPaths:
    """Convert MovieLens-100k into the layout under ``out`` (a path or fsspec URI)."""
    paths = DatasetPaths.under(out)
    interactions, users, items = load(source)
    write_table(paths.interactions, interactions, INTERACTIONS_SCHEMA, storage_options)
    write_table(paths.users, users, USERS_SCHEMA, storage_options)
    write_table(paths.items, items, ITEMS_SCHEMA, storage_options)
    return paths
