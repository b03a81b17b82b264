"""Vocabularies and encoders that turn offline parquet columns into embedding indices.

They are fitted once on the training split and saved inside the artifact (``encoders.json``),
so the gateway encodes a user's Redis features exactly as training did: the same category
order, the same bucket boundaries, the same out-of-vocabulary index. Index 0 always means
"missing or unknown" for every feature, which is what a model sees for a value it never met.

Kinds are inferred from the Arrow type of the column: integers and floats are bucketed at
quantile boundaries (``numeric``), strings and booleans are ``categorical``, lists of strings
are ``multi_hot`` (padded to ``max_len`` with 0). Anything else is refused by name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from recsys_contract.index import FeatureSchema, SchemaFeature
from recsys_workloads.runtime import BadInputError

FeatureKind = Literal["categorical", "numeric", "multi_hot"]
IntArray = npt.NDArray[np.int64]

#: The artifact file holding both entities' encoders (``EntityEncoder.to_json``).
ENCODERS_FILE = "encoders.json"

#: Columns of an entity table that are never features.
EVENT_TIME = "event_timestamp"


def infer_kind(name: str, dtype: pa.DataType, table: str) -> FeatureKind:
    """The encoding a column gets, from its Arrow type; unsupported types name the fix."""
    if pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
        return "numeric"
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_boolean(dtype):
        return "categorical"
    if pa.types.is_dictionary(dtype) and (
        pa.types.is_string(dtype.value_type) or pa.types.is_large_string(dtype.value_type)
    ):
        return "categorical"
    if (pa.types.is_list(dtype) or pa.types.is_large_list(dtype)) and (
        pa.types.is_string(dtype.value_type) or pa.types.is_large_string(dtype.value_type)
    ):
        return "multi_hot"
    raise BadInputError(
        f"{table}: column {name!r} has type {dtype}, which no encoder supports; use an integer "
        "or float (bucketed), a string (categorical) or a list of strings (multi-hot), or leave "
        "it out of features"
    )


def _as_strings(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = pc.cast(arr, pa.string())
    return arr


def _index_in(values: pa.Array, vocabulary: Sequence[str]) -> IntArray:
    """Position in the vocabulary plus one; 0 for nulls and unknown values."""
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    if not vocabulary:
        return np.zeros(len(values), dtype=np.int64)
    idx = pc.index_in(values, value_set=pa.array(list(vocabulary), type=values.type))
    return np.array(pc.fill_null(pc.add(idx, 1), 0).to_numpy(zero_copy_only=False), np.int64)


def _frequency_vocabulary(values: pa.Array, min_count: int) -> tuple[str, ...]:
    """Most frequent first (ties by value) so small indices are the common categories."""
    counts = pc.value_counts(pc.drop_null(values))
    if len(counts) == 0:
        return ()
    vals = counts.field("values").to_pylist()
    cnts = counts.field("counts").to_pylist()
    ranked = sorted(
        ((str(v), int(c)) for v, c in zip(vals, cnts, strict=True) if c >= min_count),
        key=lambda vc: (-vc[1], vc[0]),
    )
    return tuple(v for v, _ in ranked)


@dataclass(frozen=True)
class FeatureSpec:
    """One fitted feature: how to map raw values to indices in ``[0, cardinality)``."""

    name: str
    kind: FeatureKind
    vocabulary: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()
    max_len: int = 0

    @property
    def cardinality(self) -> int:
        if self.kind == "numeric":
            return len(self.boundaries) + 2
        return len(self.vocabulary) + 1

    @classmethod
    def fit(
        cls,
        name: str,
        column: pa.ChunkedArray,
        kind: FeatureKind,
        *,
        numeric_buckets: int,
        min_count: int,
        max_multi_hot: int,
    ) -> FeatureSpec:
        if kind == "numeric":
            values = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
            values = values[np.isfinite(values)]
            if values.size == 0:
                return cls(name, kind, boundaries=())
            qs = np.quantile(values, np.arange(1, numeric_buckets) / numeric_buckets)
            return cls(name, kind, boundaries=tuple(float(b) for b in np.unique(qs)))
        if kind == "categorical":
            return cls(name, kind, vocabulary=_frequency_vocabulary(_as_strings(column), min_count))
        flat = pc.list_flatten(column.combine_chunks())
        return cls(
            name,
            kind,
            vocabulary=_frequency_vocabulary(_as_strings(flat), min_count),
            max_len=max_multi_hot,
        )

    def encode(self, column: pa.ChunkedArray | pa.Array) -> IntArray:
        """Indices for every row: shape (n,) or (n, max_len) for multi-hot."""
        if self.kind == "numeric":
            values = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
            out = np.searchsorted(np.asarray(self.boundaries), values, side="right") + 1
            out[~np.isfinite(values)] = 0
            return np.asarray(out, dtype=np.int64)
        if self.kind == "categorical":
            return _index_in(_as_strings(column), self.vocabulary)
        arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        n = len(arr)
        out = np.zeros((n, self.max_len), dtype=np.int64)
        if n == 0:
            return out
        flat = pc.list_flatten(arr)
        parents = np.asarray(pc.list_parent_indices(arr).to_numpy(zero_copy_only=False), np.int64)
        idx = _index_in(_as_strings(flat), self.vocabulary)
        # position of each element inside its own list: element number minus the list's start
        starts = np.searchsorted(parents, np.arange(n), side="left")
        pos = np.arange(parents.size) - starts[parents]
        keep = (pos < self.max_len) & (idx > 0)
        out[parents[keep], pos[keep]] = idx[keep]
        return out

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == "numeric":
            out["boundaries"] = list(self.boundaries)
        else:
            out["vocabulary"] = list(self.vocabulary)
        if self.kind == "multi_hot":
            out["maxLen"] = self.max_len
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> FeatureSpec:
        return cls(
            name=raw["name"],
            kind=raw["kind"],
            vocabulary=tuple(raw.get("vocabulary", ())),
            boundaries=tuple(float(b) for b in raw.get("boundaries", ())),
            max_len=int(raw.get("maxLen", 0)),
        )


@dataclass(frozen=True)
class IdVocabulary:
    """Entity ids seen in training, sorted; index = position + 1, unknown ids map to 0."""

    ids: IntArray

    @property
    def size(self) -> int:
        """Rows of the id embedding table, including index 0."""
        return int(self.ids.size) + 1

    @classmethod
    def fit(cls, ids: IntArray, min_count: int) -> IdVocabulary:
        uniq, counts = np.unique(ids, return_counts=True)
        return cls(uniq[counts >= min_count].astype(np.int64))

    def encode(self, ids: IntArray) -> IntArray:
        if self.ids.size == 0:
            return np.zeros(ids.shape, dtype=np.int64)
        pos = np.searchsorted(self.ids, ids)
        pos_c = np.minimum(pos, self.ids.size - 1)
        hit = self.ids[pos_c] == ids
        return np.where(hit, pos_c + 1, 0).astype(np.int64)


@dataclass(frozen=True)
class EntityEncoder:
    """The id vocabulary and feature encoders of one entity (user or item)."""

    entity: str
    key: str
    ids: IdVocabulary
    features: tuple[FeatureSpec, ...] = field(default=())

    def encode_rows(self, table: pa.Table) -> dict[str, IntArray]:
        """Encoded feature arrays for each row of an entity table (ids are encoded separately)."""
        return {f.name: f.encode(table.column(f.name)) for f in self.features}

    def to_json(self) -> dict[str, Any]:
        return {
            "entity": self.entity,
            "key": self.key,
            "ids": self.ids.ids.tolist(),
            "features": [f.to_json() for f in self.features],
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> EntityEncoder:
        return cls(
            entity=raw["entity"],
            key=raw["key"],
            ids=IdVocabulary(np.asarray(raw["ids"], dtype=np.int64)),
            features=tuple(FeatureSpec.from_json(f) for f in raw["features"]),
        )


def feature_schema(user: EntityEncoder, item: EntityEncoder) -> FeatureSchema:
    """What serving must supply for a model with these encoders (names and kinds)."""
    return FeatureSchema(
        user=[SchemaFeature(name=f.name, kind=f.kind) for f in user.features],
        item=[SchemaFeature(name=f.name, kind=f.kind) for f in item.features],
    )


def fit_entity_encoder(
    entity: str,
    key: str,
    interaction_ids: IntArray,
    table: pa.Table | None,
    feature_names: Sequence[str],
    *,
    numeric_buckets: int,
    min_count: int,
    max_multi_hot: int,
) -> EntityEncoder:
    """Fit the id vocabulary on training interactions and each feature on the entity rows."""
    features: list[FeatureSpec] = []
    if table is not None:
        for name in feature_names:
            kind = infer_kind(name, table.schema.field(name).type, f"{entity}s table")
            features.append(
                FeatureSpec.fit(
                    name,
                    table.column(name),
                    kind,
                    numeric_buckets=numeric_buckets,
                    min_count=min_count,
                    max_multi_hot=max_multi_hot,
                )
            )
    return EntityEncoder(entity, key, IdVocabulary.fit(interaction_ids, min_count), tuple(features))


def extend_encoder(base: EntityEncoder, interaction_ids: IntArray, min_count: int) -> EntityEncoder:
    """A warm start's encoder: the checkpoint's feature encoders unchanged (every feature
    embedding row, and every hashed cross, keeps the meaning it was trained with) and its id
    vocabulary grown by the ids of the new interactions. Ids are kept sorted, so an id's index
    may move; ``warm.carried_state`` moves its embedding row with it."""
    window = IdVocabulary.fit(interaction_ids, min_count)
    ids = IdVocabulary(np.union1d(base.ids.ids, window.ids).astype(np.int64))
    return EntityEncoder(base.entity, base.key, ids, base.features)
