"""The request-time encoder must give the indices the training encoder gives, value for value."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recsys_workloads.serving.encoding import FeatureLookup, RequestEncoder
from recsys_workloads.train.features import EntityEncoder, FeatureSpec, IdVocabulary

NUMERIC = FeatureSpec("age", "numeric", boundaries=(18.0, 25.5, 40.0))
CATEGORICAL = FeatureSpec("gender", "categorical", vocabulary=("M", "F"))
BOOLEAN = FeatureSpec("subscriber", "categorical", vocabulary=("true", "false"))
MULTI = FeatureSpec("genres", "multi_hot", vocabulary=("Drama", "Comedy", "Action"), max_len=3)


def train_encode(spec: FeatureSpec, values: list[Any], arrow_type: pa.DataType) -> np.ndarray:
    return spec.encode(pa.chunked_array([pa.array(values, arrow_type)]))


@given(st.lists(st.one_of(st.none(), st.integers(-5, 60), st.floats(0, 60)), max_size=20))
@settings(max_examples=60, deadline=None)
def test_numeric_matches_training(values: list[Any]) -> None:
    floats = [None if v is None else float(v) for v in values]
    expected = train_encode(NUMERIC, floats, pa.float64())
    np.testing.assert_array_equal(FeatureLookup.of(NUMERIC).encode(values), expected)


def test_numeric_edges_and_junk() -> None:
    lookup = FeatureLookup.of(NUMERIC)
    values = [18.0, 25.5, 40.0, 17.999, float("nan"), float("inf"), None]
    expected = train_encode(NUMERIC, values, pa.float64())
    np.testing.assert_array_equal(lookup.encode(values), expected)
    # values a store might hold that are no numbers at all are missing, not an error
    np.testing.assert_array_equal(lookup.encode(["old", True, b"1"]), [0, 0, 0])


@given(st.lists(st.one_of(st.none(), st.sampled_from(["M", "F", "X", "", "m"])), max_size=20))
@settings(max_examples=60, deadline=None)
def test_categorical_matches_training(values: list[str | None]) -> None:
    expected = train_encode(CATEGORICAL, values, pa.string())
    np.testing.assert_array_equal(FeatureLookup.of(CATEGORICAL).encode(values), expected)


def test_booleans_encode_as_arrow_casts_them() -> None:
    values = [True, False, None]
    expected = train_encode(BOOLEAN, values, pa.bool_())
    np.testing.assert_array_equal(FeatureLookup.of(BOOLEAN).encode(values), expected)
    assert expected.tolist() == [1, 2, 0]


@given(
    st.lists(
        st.one_of(
            st.none(),
            st.lists(st.sampled_from(["Drama", "Comedy", "Action", "Noir", "drama"]), max_size=6),
        ),
        max_size=12,
    )
)
@settings(max_examples=60, deadline=None)
def test_multi_hot_matches_training(values: list[list[str] | None]) -> None:
    expected = train_encode(MULTI, values, pa.list_(pa.string()))
    np.testing.assert_array_equal(FeatureLookup.of(MULTI).encode(values), expected)


def test_multi_hot_unknown_keeps_its_slot_and_long_lists_are_cut() -> None:
    out = FeatureLookup.of(MULTI).encode(
        [["Noir", "Drama"], ["Drama", "Comedy", "Action", "Drama"]]
    )
    assert out.tolist() == [[0, 1, 0], [1, 2, 3]]


def test_rows_with_missing_entities_and_names() -> None:
    encoder = EntityEncoder(
        "user", "user_id", IdVocabulary(np.array([3, 7, 9])), (NUMERIC, CATEGORICAL, MULTI)
    )
    enc = RequestEncoder.of(encoder)
    rows = [{"age": 30, "gender": "F", "genres": ["Action"]}, None, {"gender": "M"}]
    out = enc.encode_rows(rows)
    assert out["age"].tolist() == [3, 0, 0]
    assert out["gender"].tolist() == [2, 0, 1]
    assert out["genres"].tolist() == [[3, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert enc.encode_ids([7, 4, 9]).tolist() == [2, 0, 3]
    assert enc.feature_names == ["age", "gender", "genres"]


@pytest.mark.parametrize(("value", "expected"), [([], [0, 0, 0]), ("Drama", [1, 0, 0])])
def test_multi_hot_accepts_empty_and_scalar(value: Any, expected: list[int]) -> None:
    assert FeatureLookup.of(MULTI).encode([value]).tolist() == [expected]
