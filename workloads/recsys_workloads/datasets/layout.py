"""The offline dataset layout: one place that every producer and consumer of it agrees on.

A dataset is a directory (a local path or any fsspec URI) holding three parquet files. The
generators (MovieLens, synthetic) write it, the trainer and the FeatureView materializer read
it, so the schemas live here and nowhere else:

``interactions.parquet``
    ``user_id`` int64, ``item_id`` int64, ``rating`` float32,
    ``event_timestamp`` timestamp[us, tz=UTC] — one row per (implicit or explicit) event.
``users.parquet``
    ``user_id`` int64, ``event_timestamp`` timestamp[us, tz=UTC], ``age`` int32,
    ``gender`` string, ``occupation`` string — a user's attributes as of ``event_timestamp``
    (the moment they became known: for MovieLens, the user's first rating).
``items.parquet``
    ``item_id`` int64, ``event_timestamp`` timestamp[us, tz=UTC], ``genres`` list<string>,
    ``release_year`` int32 — likewise, as of the item's first appearance.

Users and items carry an event time so they can be FeatureView sources as they are: the
materializer picks, per entity, the latest row at or before its as-of time. A file may hold
several rows per entity (the synthetic generator's drift knob writes later versions).

Each file is written with row groups of bounded size, so readers can stream tens of millions
of rows with ``pyarrow.parquet.ParquetFile.iter_batches`` without holding them in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from recsys_contract.formats import join_uri
from recsys_workloads.runtime import BadInputError

TIMESTAMP = pa.timestamp("us", tz="UTC")

INTERACTIONS_FILE = "interactions.parquet"
USERS_FILE = "users.parquet"
ITEMS_FILE = "items.parquet"

#: The column every file's event time lives in (FeatureView ``eventTimestampColumn``).
EVENT_TIMESTAMP = "event_timestamp"
USER_ID = "user_id"
ITEM_ID = "item_id"

INTERACTIONS_SCHEMA = pa.schema(
    [
        pa.field(USER_ID, pa.int64(), nullable=False),
        pa.field(ITEM_ID, pa.int64(), nullable=False),
        pa.field("rating", pa.float32(), nullable=False),
        pa.field(EVENT_TIMESTAMP, TIMESTAMP, nullable=False),
    ]
)

USERS_SCHEMA = pa.schema(
    [
        pa.field(USER_ID, pa.int64(), nullable=False),
        pa.field(EVENT_TIMESTAMP, TIMESTAMP, nullable=False),
        pa.field("age", pa.int32()),
        pa.field("gender", pa.string()),
        pa.field("occupation", pa.string()),
    ]
)

ITEMS_SCHEMA = pa.schema(
    [
        pa.field(ITEM_ID, pa.int64(), nullable=False),
        pa.field(EVENT_TIMESTAMP, TIMESTAMP, nullable=False),
        pa.field("genres", pa.list_(pa.string())),
        pa.field("release_year", pa.int32()),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {
    INTERACTIONS_FILE: INTERACTIONS_SCHEMA,
    USERS_FILE: USERS_SCHEMA,
    ITEMS_FILE: ITEMS_SCHEMA,
}

#: Rows per parquet row group: big enough for fast scans, small enough to stream.
ROW_GROUP_SIZE = 1 << 20


@dataclass(frozen=True)
class DatasetPaths:
    """Where the three files of one dataset live (URIs, as given to the writer)."""

    root: str
    interactions: str
    users: str
    items: str

    @classmethod
    def under(cls, root: str) -> DatasetPaths:
        return cls(
            root=root,
            interactions=join_uri(root, INTERACTIONS_FILE),
            users=join_uri(root, USERS_FILE),
            items=join_uri(root, ITEMS_FILE),
        )


def check_schema(actual: pa.Schema, expected: pa.Schema, where: str) -> None:
    """Refuse a table whose columns are missing or of another type, naming the column.

    Extra columns are allowed (a richer source still satisfies the layout); nullability is not
    compared because parquet writers differ in what they record.
    """
    for field in expected:
        index = actual.get_field_index(field.name)
        if index < 0:
            raise BadInputError(
                f"{where}: column {field.name!r} is missing (have: {', '.join(actual.names)}); "
                f"the layout needs {field.name} of type {field.type}"
            )
        got = actual.field(index).type
        if not _same_type(got, field.type):
            raise BadInputError(
                f"{where}: column {field.name!r} has type {got}, the layout needs {field.type}"
            )


def _same_type(a: pa.DataType, b: pa.DataType) -> bool:
    """Type equality that ignores a list's child field name (parquet writes ``element``)."""
    if pa.types.is_list(a) and pa.types.is_list(b):
        return _same_type(a.value_type, b.value_type)
    return bool(a.equals(b))


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Select and order ``schema``'s columns and cast them exactly (what writers call last)."""
    return table.select(schema.names).cast(schema)
