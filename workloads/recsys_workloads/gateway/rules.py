"""Filtering and ordering rules over item features (pure).

Match expressions follow Kubernetes label selectors. For a list-valued feature (``genres``)
``In`` holds when any element is among the values, ``NotIn`` when none is; ``Exists`` needs
a value (a non-empty list); ``Gt``/``Lt`` compare numbers and fail on anything non-numeric.
Values compare as strings, booleans as ``true``/``false`` (the way they are written in YAML).

Ordering, after scoring: boosts multiply the scores of matching items (in order, so two
matching boosts compound), items are sorted by the boosted score, duplicates are dropped
(the best-scored copy kept), and diversity walks down that list keeping an item only while
every value of its diversity key has been kept fewer than ``maxPerValue`` times. Diversity
is a cap, not a quota: when too few items pass it, the response is shorter rather than
breaking the cap.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from recsys_contract.gateway import Diversity, MatchExpression, Ordering

ItemRow = Mapping[str, Any] | None


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, float) and value.is_integer():
        return [str(int(value))]
    return [str(value)]


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def matches(expr: MatchExpression, row: ItemRow) -> bool:
    value = None if row is None else row.get(expr.key)
    present = _strings(value)
    if expr.operator == "Exists":
        return bool(present)
    if expr.operator == "DoesNotExist":
        return not present
    if expr.operator == "In":
        return any(v in (expr.values or ()) for v in present)
    if expr.operator == "NotIn":
        return not any(v in (expr.values or ()) for v in present)
    number = _number(value)
    if number is None:
        return False
    bound = float((expr.values or ["nan"])[0])
    return number > bound if expr.operator == "Gt" else number < bound


def matches_all(exprs: Sequence[MatchExpression], row: ItemRow) -> bool:
    return all(matches(e, row) for e in exprs)


@dataclass(frozen=True)
class Scored:
    item_id: int
    score: float


def dedupe(items: Sequence[Scored]) -> list[Scored]:
    seen: set[int] = set()
    out = []
    for it in items:
        if it.item_id not in seen:
            seen.add(it.item_id)
            out.append(it)
    return out


def boost(items: Sequence[Scored], ordering: Ordering, rows: Mapping[int, ItemRow]) -> list[Scored]:
    """Multiply matching items' scores. Scores of any sign: a factor above 1 always promotes
    (a negative logit is divided instead of multiplied)."""
    if not ordering.boosts:
        return list(items)
    out = []
    for it in items:
        score = it.score
        for b in ordering.boosts:
            if matches_all(b.match_expressions, rows.get(it.item_id)):
                score = score * b.factor if score >= 0 else score / b.factor
        out.append(Scored(it.item_id, score))
    return out


def diversify(
    items: Sequence[Scored], diversity: Diversity, rows: Mapping[int, ItemRow], k: int
) -> list[Scored]:
    counts: Counter[str] = Counter()
    out = []
    for it in items:
        row = rows.get(it.item_id)
        values = set(_strings(None if row is None else row.get(diversity.key)))
        if any(counts[v] >= diversity.max_per_value for v in values):
            continue
        counts.update(values)
        out.append(it)
        if len(out) == k:
            break
    return out


def top_k(ids: npt.NDArray[np.int64], scores: npt.NDArray[Any], k: int) -> list[Scored]:
    """``order`` without rules, on arrays: best first (ties keep their given order), each id
    once, at most ``k``."""
    ranked = np.argsort(-scores, kind="stable")
    ids_ranked = ids[ranked]
    _, first = np.unique(ids_ranked, return_index=True)
    keep = ranked[np.sort(first)][:k]
    return [Scored(int(i), float(x)) for i, x in zip(ids[keep], scores[keep], strict=True)]


def needs_rows(ordering: Ordering) -> bool:
    """Whether ``final_list`` reads item feature rows (boosts or diversity are set)."""
    return bool(ordering.boosts or ordering.diversity)


def final_list(
    ids: npt.NDArray[np.int64],
    scores: npt.NDArray[Any],
    ordering: Ordering,
    rows: Mapping[int, ItemRow],
    k: int,
) -> list[Scored]:
    """The served list from scored candidates: the one entry point the gateway and the
    offline evaluation both call, so what is measured is what is served. ``rows`` is read
    only when ``needs_rows``."""
    if not needs_rows(ordering):
        return top_k(ids, scores, k)
    listed = [Scored(int(i), float(x)) for i, x in zip(ids, scores, strict=True)]
    return order(listed, ordering, rows, k)


def order(
    items: Sequence[Scored], ordering: Ordering, rows: Mapping[int, ItemRow], k: int
) -> list[Scored]:
    """The final list: deduplicated, boosted, best first, diversity-capped, at most ``k``."""
    ranked = dedupe(sorted(boost(items, ordering, rows), key=lambda s: -s.score))
    if ordering.diversity:
        return diversify(ranked, ordering.diversity, rows, k)
    return ranked[:k]
