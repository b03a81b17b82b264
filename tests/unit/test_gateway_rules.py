"""Filtering and ordering rules on item features."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from recsys_contract.gateway import Diversity, MatchExpression, Ordering
from recsys_workloads.gateway import rules
from recsys_workloads.gateway.rules import Scored, matches, order, top_k

ROWS: dict[int, Any] = {
    1: {"genres": ["Drama", "War"], "year": 1995, "in_stock": True},
    2: {"genres": ["Comedy"], "year": 2001, "in_stock": False},
    3: {"genres": ["Drama"], "year": 1980, "in_stock": True},
    4: {"genres": [], "year": None},
    5: None,
}


def expr(key: str, op: str, *values: str) -> MatchExpression:
    return MatchExpression(key=key, operator=op, values=list(values) or None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("e", "expected"),
    [
        (expr("genres", "In", "Drama"), {1, 3}),
        (expr("genres", "NotIn", "Drama"), {2, 4, 5}),
        (expr("genres", "Exists"), {1, 2, 3}),
        (expr("genres", "DoesNotExist"), {4, 5}),
        (expr("year", "Gt", "1990"), {1, 2}),
        (expr("year", "Lt", "1990.5"), {3}),
        (expr("in_stock", "In", "true"), {1, 3}),
        (expr("year", "In", "1995"), {1}),
    ],
)
def test_match_expressions(e: MatchExpression, expected: set[int]) -> None:
    assert {i for i, row in ROWS.items() if matches(e, row)} == expected


def scored(*pairs: tuple[int, float]) -> list[Scored]:
    return [Scored(i, s) for i, s in pairs]


def test_order_sorts_dedupes_and_cuts() -> None:
    items = scored((1, 0.1), (2, 0.9), (3, 0.5), (2, 0.3), (4, 0.7))
    out = order(items, Ordering(), ROWS, 3)
    assert [(s.item_id, s.score) for s in out] == [(2, 0.9), (4, 0.7), (3, 0.5)]


def test_boosts_compound_and_promote_negative_scores_too() -> None:
    ordering = Ordering.model_validate(
        {
            "boosts": [
                {"name": "drama", "matchExpressions": [{"key": "genres", "operator": "In",
                                                         "values": ["Drama"]}], "factor": 2.0},
                {"name": "old", "matchExpressions": [{"key": "year", "operator": "Lt",
                                                       "values": ["1990"]}], "factor": 3.0},
            ]
        }
    )  # fmt: skip
    out = order(scored((1, 1.0), (2, 1.5), (3, 0.3), (4, -1.0)), ordering, ROWS, 4)
    assert [(s.item_id, round(s.score, 6)) for s in out] == [
        (1, 2.0), (3, 1.8), (2, 1.5), (4, -1.0)
    ]  # fmt: skip
    neg = order(scored((1, -1.0), (2, -0.6)), ordering, ROWS, 2)
    assert [s.item_id for s in neg] == [1, 2]  # -1.0 / 2 = -0.5 beats -0.6


def test_diversity_caps_each_value_and_may_shorten_the_list() -> None:
    rows = {i: {"genres": ["Drama"] if i % 2 else ["Comedy", "Drama"]} for i in range(1, 9)}
    ordering = Ordering(diversity=Diversity(key="genres", max_per_value=2))
    out = order(scored(*[(i, 10.0 - i) for i in range(1, 9)]), ordering, rows, 5)
    assert [s.item_id for s in out] == [1, 2]  # Drama twice; every later item is Drama too
    mixed = {1: {"g": "a"}, 2: {"g": "a"}, 3: {"g": "b"}, 4: {"g": "a"}, 5: {"g": None}}
    out = order(
        scored(*[(i, 10.0 - i) for i in range(1, 6)]),
        Ordering(diversity=Diversity(key="g", max_per_value=1)),
        mixed,
        10,
    )
    assert [s.item_id for s in out] == [1, 3, 5]  # an item without the value is not capped


def test_top_k_on_arrays_agrees_with_order() -> None:
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 40, 60).astype(np.int64)  # with duplicates
    scores = np.round(rng.standard_normal(60), 1).astype(np.float32)  # with ties
    fast = top_k(ids, scores, 15)
    slow = order([Scored(int(i), float(x)) for i, x in zip(ids, scores, strict=True)],
                 Ordering(), {}, 15)  # fmt: skip
    assert fast == slow
    assert len({s.item_id for s in fast}) == 15
    assert top_k(ids[:0], scores[:0], 5) == []


def test_final_list_is_top_k_without_rules_and_order_with_them() -> None:
    ids = np.array([3, 1, 2, 1], dtype=np.int64)
    scores = np.array([0.5, 0.9, -0.2, 0.1])
    plain = Ordering()
    assert not rules.needs_rows(plain)
    assert rules.final_list(ids, scores, plain, {}, 2) == rules.top_k(ids, scores, 2)
    boosted = Ordering.model_validate(
        {
            "boosts": [
                {
                    "name": "new",
                    "matchExpressions": [{"key": "new", "operator": "Exists"}],
                    "factor": 4.0,
                }
            ]
        }
    )
    rows = {2: {"new": True}}
    assert rules.needs_rows(boosted)
    got = rules.final_list(ids, scores, boosted, rows, 3)
    listed = [rules.Scored(int(i), float(x)) for i, x in zip(ids, scores, strict=True)]
    assert got == rules.order(listed, boosted, rows, 3)
    assert [s.item_id for s in got] == [1, 3, 2], "a negative score boosted is divided"
