"""Encoding one request's raw feature values into embedding indices, without Arrow.

Training encodes whole parquet columns with ``train.features.FeatureSpec.encode`` (pyarrow
compute: fast per column, slow per call). A serving request carries one user and a handful
of values, where a pyarrow call per feature would cost more than the model itself, so the
same mapping is done here with dictionaries and ``searchsorted``. It must agree with the
training encoder index for index (a unit test compares them on awkward values); the rules:

- numeric: ``searchsorted(boundaries, value, side="right") + 1``; missing, non-numeric or
  non-finite values are 0.
- categorical: position in the vocabulary + 1 of the value as a string (booleans as
  ``"true"``/``"false"``, as Arrow casts them); missing or unknown values are 0.
- multi-hot: each list element's categorical index at its own position, up to ``max_len``;
  an unknown element keeps its slot as 0 (Arrow's encoder does the same).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from recsys_workloads.train.features import EntityEncoder, FeatureSpec

IntArray = npt.NDArray[np.int64]
Row = Mapping[str, Any] | None


def _as_category(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _as_number(value: Any) -> float:
    if value is None or isinstance(value, bool | str | bytes):
        return math.nan
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number


@dataclass(frozen=True)
class FeatureLookup:
    """One feature's encoder in serving form."""

    spec: FeatureSpec
    positions: Mapping[str, int]
    boundaries: npt.NDArray[np.float64]

    @classmethod
    def of(cls, spec: FeatureSpec) -> FeatureLookup:
        positions = {v: i + 1 for i, v in enumerate(spec.vocabulary)}
        return cls(spec, positions, np.asarray(spec.boundaries, dtype=np.float64))

    def encode(self, values: Sequence[Any]) -> IntArray:
        kind = self.spec.kind
        if kind == "numeric":
            numbers = np.array([_as_number(v) for v in values], dtype=np.float64)
            out = np.searchsorted(self.boundaries, numbers, side="right") + 1
            out[~np.isfinite(numbers)] = 0
            return np.asarray(out, dtype=np.int64)
        if kind == "categorical":
            return np.array(
                [0 if v is None else self.positions.get(_as_category(v), 0) for v in values],
                dtype=np.int64,
            )
        width = self.spec.max_len
        out = np.zeros((len(values), width), dtype=np.int64)
        for row, items in enumerate(values):
            if items is None:
                continue
            if isinstance(items, str | bytes):
                items = [items]
            for pos, item in enumerate(items):
                if pos >= width:
                    break
                if item is not None:
                    out[row, pos] = self.positions.get(_as_category(item), 0)
        return out


@dataclass(frozen=True)
class RequestEncoder:
    """An entity's id vocabulary and feature encoders, for request-sized batches."""

    encoder: EntityEncoder
    lookups: tuple[FeatureLookup, ...]

    @classmethod
    def of(cls, encoder: EntityEncoder) -> RequestEncoder:
        return cls(encoder, tuple(FeatureLookup.of(f) for f in encoder.features))

    @property
    def feature_names(self) -> list[str]:
        return [f.spec.name for f in self.lookups]

    def encode_ids(self, ids: Sequence[int] | IntArray) -> IntArray:
        return self.encoder.ids.encode(np.asarray(ids, dtype=np.int64))

    def encode_rows(self, rows: Sequence[Row]) -> dict[str, IntArray]:
        """Each feature's indices for every row; a ``None`` row or absent name is missing."""
        return {
            f.spec.name: f.encode([None if r is None else r.get(f.spec.name) for r in rows])
            for f in self.lookups
        }
