"""Encoders: what serving will rely on to encode features exactly as training did."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from recsys_workloads.runtime import BadInputError
from recsys_workloads.train.features import (
    EntityEncoder,
    FeatureSpec,
    IdVocabulary,
    fit_entity_encoder,
    infer_kind,
)
from recsys_workloads.train.profile import bin_counts, bin_labels


def fit(values: pa.Array, kind: str, **kw: int) -> FeatureSpec:
    opts = {"numeric_buckets": 4, "min_count": 1, "max_multi_hot": 3} | kw
    return FeatureSpec.fit("f", pa.chunked_array([values]), kind, **opts)  # type: ignore[arg-type]


def test_categorical_vocabulary_is_frequency_ordered_with_zero_for_unknown_and_null() -> None:
    spec = fit(pa.array(["b", "a", "b", "c", "b", "a", None]), "categorical")
    assert spec.vocabulary == ("b", "a", "c")
    encoded = spec.encode(pa.array(["a", "b", "zzz", None, "c"]))
    assert encoded.tolist() == [2, 1, 0, 0, 3]
    assert spec.cardinality == 4


def test_min_count_drops_rare_categories_to_unknown() -> None:
    spec = fit(pa.array(["x", "x", "y"]), "categorical", min_count=2)
    assert spec.vocabulary == ("x",)
    assert spec.encode(pa.array(["y"])).tolist() == [0]


def test_numeric_buckets_at_quantiles_and_missing_is_zero() -> None:
    spec = fit(pa.array(np.arange(100, dtype=np.float64)), "numeric")
    assert len(spec.boundaries) == 3
    encoded = spec.encode(pa.array([-5.0, 0.0, 30.0, 60.0, 99.0, 1e9, None, float("nan")]))
    assert encoded.tolist() == [1, 1, 2, 3, 4, 4, 0, 0]
    assert spec.cardinality == 5
    assert encoded.max() < spec.cardinality


def test_multi_hot_pads_truncates_and_skips_unknown_values() -> None:
    spec = fit(
        pa.array([["a", "b"], ["a"], ["c", "a", "b", "a"]], pa.list_(pa.string())), "multi_hot"
    )
    assert spec.vocabulary == ("a", "b", "c")
    rows = pa.array([["b", "a"], None, [], ["c", "new", "a", "b", "a"]], pa.list_(pa.string()))
    encoded = spec.encode(rows)
    assert encoded.shape == (4, 3)
    assert encoded.tolist() == [[2, 1, 0], [0, 0, 0], [0, 0, 0], [3, 0, 1]]


def test_spec_json_round_trip_encodes_identically() -> None:
    for values, kind in (
        (pa.array(["u", "v", "u"]), "categorical"),
        (pa.array([1.5, 2.5, 9.0, 4.0]), "numeric"),
        (pa.array([["p"], ["q", "p"]], pa.list_(pa.string())), "multi_hot"),
    ):
        spec = fit(values, kind)
        again = FeatureSpec.from_json(spec.to_json())
        assert again == spec
        np.testing.assert_array_equal(again.encode(values), spec.encode(values))


def test_id_vocabulary_maps_unknown_ids_to_zero() -> None:
    vocab = IdVocabulary.fit(np.array([30, 10, 10, 20], dtype=np.int64), min_count=1)
    assert vocab.size == 4
    assert vocab.encode(np.array([10, 20, 30, 40, 5], dtype=np.int64)).tolist() == [1, 2, 3, 0, 0]
    assert IdVocabulary.fit(np.array([1, 1, 2], np.int64), 2).encode(np.array([1, 2])).tolist() == [
        1,
        0,
    ]


def test_entity_encoder_round_trip() -> None:
    table = pa.table(
        {
            "user_id": pa.array([1, 2], pa.int64()),
            "age": pa.array([20, 40], pa.int32()),
            "gender": ["F", "M"],
        }
    )
    enc = fit_entity_encoder(
        "user",
        "user_id",
        np.array([1, 2, 2], np.int64),
        table,
        ["age", "gender"],
        numeric_buckets=2,
        min_count=1,
        max_multi_hot=2,
    )
    again = EntityEncoder.from_json(enc.to_json())
    assert again.features == enc.features
    np.testing.assert_array_equal(again.ids.ids, enc.ids.ids)
    for name, arr in enc.encode_rows(table).items():
        np.testing.assert_array_equal(arr, again.encode_rows(table)[name])


@pytest.mark.parametrize(
    ("dtype", "kind"),
    [
        (pa.int32(), "numeric"),
        (pa.float32(), "numeric"),
        (pa.string(), "categorical"),
        (pa.bool_(), "categorical"),
        (pa.dictionary(pa.int8(), pa.string()), "categorical"),
        (pa.list_(pa.string()), "multi_hot"),
    ],
)
def test_kind_inferred_from_arrow_type(dtype: pa.DataType, kind: str) -> None:
    assert infer_kind("c", dtype, "users table") == kind


def test_unsupported_column_type_is_bad_input_naming_the_column() -> None:
    with pytest.raises(BadInputError, match=r"'location'.*struct"):
        infer_kind("location", pa.struct([("lat", pa.float64())]), "users table")


def test_profile_bins_follow_the_encoding() -> None:
    spec = fit(pa.array(["b", "a", "b"]), "categorical")
    assert bin_labels(spec) == ["missing", "b", "a"]
    counts = bin_counts(spec, spec.encode(pa.array(["a", "b", "b", "zzz"])))
    assert counts.tolist() == [1, 2, 1]
    multi = fit(pa.array([["x", "y"], ["x"]], pa.list_(pa.string())), "multi_hot")
    encoded = multi.encode(pa.array([["x", "y"], [], ["y"]], pa.list_(pa.string())))
    assert bin_counts(multi, encoded).tolist() == [1, 1, 2]
    weighted = bin_counts(multi, encoded, np.array([2.0, 1.0, 1.0]))
    assert weighted.tolist() == [1, 2, 3]
