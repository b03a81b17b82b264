"""Writing the layout's parquet files through fsspec, in bounded row groups.

Local paths get pyarrow's native writer and an atomic rename (a reader never opens a
half-written file); other URIs are streamed through the fsspec filesystem, where object stores
make the upload visible only once it completes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from recsys_workloads.artifact_store import local_path, store_errors
from recsys_workloads.datasets.layout import ROW_GROUP_SIZE, conform


class TableSink:
    """Appends batches that are conformed to one schema to one parquet file."""

    def __init__(self, writer: pq.ParquetWriter, schema: pa.Schema) -> None:
        self._writer = writer
        self.schema = schema
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        table = conform(table, self.schema)
        self._writer.write_table(table, row_group_size=ROW_GROUP_SIZE)
        self.rows += table.num_rows


@contextlib.contextmanager
def parquet_sink(
    uri: str, schema: pa.Schema, storage_options: dict[str, Any] | None = None
) -> Iterator[TableSink]:
    """Open ``uri`` for writing; the file appears complete or not at all (locally)."""
    local = local_path(uri)
    if local is not None:
        os.makedirs(os.path.dirname(local) or ".", exist_ok=True)
        tmp = f"{local}.tmp-{os.getpid()}"
        try:
            with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
                yield TableSink(writer, schema)
            os.replace(tmp, local)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    import fsspec

    with store_errors(uri, "write dataset"):
        # no makedirs: an object store has no folders, and s3fs's would create a missing
        # bucket (see artifact_store.Store.write_bytes)
        fs, path = fsspec.core.url_to_fs(uri, **(storage_options or {}))
        with (
            fs.open(path, "wb") as handle,
            pq.ParquetWriter(handle, schema, compression="zstd") as writer,
        ):
            yield TableSink(writer, schema)


def write_table(
    uri: str, table: pa.Table, schema: pa.Schema, storage_options: dict[str, Any] | None = None
) -> int:
    with parquet_sink(uri, schema, storage_options) as sink:
        sink.write(table)
        return sink.rows
