"""The offline source of a FeatureView: a parquet file or directory at a path or fsspec URI.

Checks everything a run depends on *before* anything is written to Redis (so a bad source can
never disturb the live version): the join key, the event-time column (and the created-time
column, when one is named) and every declared feature exist with usable types, and the source
is not empty. Each problem names the column.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.types as pat
from numpy.typing import NDArray

from recsys_contract.keyspace import FeatureSchema
from recsys_workloads.artifact_store import local_path, store_errors
from recsys_workloads.featurestore.codec import type_mismatch
from recsys_workloads.featurestore.point_in_time import NO_CREATED_US
from recsys_workloads.runtime import BadInputError


@dataclass
class OfflineSource:
    uri: str
    dataset: pads.Dataset
    join_key: str
    event_column: str
    features: list[FeatureSchema]
    #: the column saying when each row was written, which breaks event-time ties
    created_column: str | None = None

    @property
    def columns(self) -> list[str]:
        created = [self.created_column] if self.created_column else []
        return [self.join_key, self.event_column, *created, *(f.name for f in self.features)]

    def created_us(self, table: pa.Table) -> NDArray[np.int64] | None:
        """Each row's created time in µs (:data:`NO_CREATED_US` where null); None without a
        created column."""
        if self.created_column is None:
            return None
        return _micros(table[self.created_column], NO_CREATED_US)

    def _bound(self, micros: int) -> pa.Scalar:
        """A µs bound as a scalar of the column's own type (floored to coarser units)."""
        column_type = self.dataset.schema.field(self.event_column).type
        as_us = pa.scalar(micros, pa.int64()).cast(pa.timestamp("us", tz=column_type.tz))
        return pc.cast(as_us, column_type, safe=False)

    def read_window(
        self,
        lo_us: int | None,
        hi_us: int,
        keep: Callable[[pa.RecordBatch], pa.Array] | None = None,
    ) -> tuple[pa.Table, NDArray[np.int64]]:
        """Rows with ``lo < event time <= hi`` and their event times in µs since the epoch.

        ``keep`` (a batch -> boolean mask) filters each batch as it is read, so only the rows
        kept are ever held together: a shard of a split run holds its share, not the source.
        """
        column = pads.field(self.event_column)
        condition = column <= self._bound(hi_us)
        if lo_us is not None:
            condition = condition & (column > self._bound(lo_us))
        with store_errors(self.uri, "read FeatureView source"):
            if keep is None:
                table = self.dataset.to_table(columns=self.columns, filter=condition)
            else:
                scanner = self.dataset.scanner(columns=self.columns, filter=condition)
                table = pa.Table.from_batches(
                    [batch.filter(keep(batch)) for batch in scanner.to_batches()],
                    schema=scanner.projected_schema,
                )
        micros = _micros(table[self.event_column], None)
        if table[self.join_key].null_count:
            raise BadInputError(
                f"source {self.uri}: join key column {self.join_key!r} has "
                f"{table[self.join_key].null_count} null values; every row needs an entity id"
            )
        return table, micros


def _micros(column: pa.ChunkedArray, null: int | None) -> NDArray[np.int64]:
    """A timestamp column as µs since the epoch; nulls become ``null`` (when given)."""
    as_int = pc.cast(pc.cast(column, pa.timestamp("us", tz=column.type.tz)), pa.int64())
    if null is not None:
        as_int = pc.fill_null(as_int, null)
    return np.asarray(as_int.to_numpy(), dtype=np.int64)


def open_source(
    uri: str,
    join_key: str,
    event_column: str,
    features: list[FeatureSchema],
    storage_options: dict[str, Any] | None = None,
    created_column: str | None = None,
) -> OfflineSource:
    where = f"source {uri}"
    with store_errors(uri, "open FeatureView source"):
        local = local_path(uri)
        if local is not None:
            dataset = pads.dataset(local, format="parquet")
        else:
            import fsspec
            from pyarrow.fs import FSSpecHandler, PyFileSystem

            fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
            dataset = pads.dataset(
                path, format="parquet", filesystem=PyFileSystem(FSSpecHandler(fs))
            )
    schema = dataset.schema
    have = ", ".join(schema.names)

    def column_type(name: str, role: str) -> pa.DataType:
        index = schema.get_field_index(name)
        if index < 0:
            raise BadInputError(
                f"{where}: {role} column {name!r} is missing (columns: {have}); fix the "
                "FeatureView or the source"
            )
        return schema.field(index).type

    key_type = column_type(join_key, "join key")
    if not (pat.is_integer(key_type) or pat.is_string(key_type) or pat.is_large_string(key_type)):
        raise BadInputError(
            f"{where}: join key column {join_key!r} has type {key_type}; it must be an integer "
            "or a string"
        )
    for column, role in ((event_column, "event timestamp"), (created_column, "created timestamp")):
        if column is None:
            continue
        found = column_type(column, role)
        if not pat.is_timestamp(found):
            raise BadInputError(
                f"{where}: {role} column {column!r} has type {found}; it must be a timestamp "
                "(naive timestamps are read as UTC)"
            )
    for feature in features:
        problem = type_mismatch(feature.type, column_type(feature.name, "feature"))
        if problem:
            raise BadInputError(
                f"{where}: feature column {feature.name!r} {problem}; change the feature's type "
                "in the FeatureView or the column in the source"
            )
    with store_errors(uri, "count FeatureView source rows"):
        rows = dataset.count_rows()
    if rows == 0:
        raise BadInputError(f"{where} is empty (0 rows): nothing to materialize")
    return OfflineSource(uri, dataset, join_key, event_column, features, created_column)
