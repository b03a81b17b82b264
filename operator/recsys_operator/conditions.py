"""Status conditions in the shape of ``metav1.Condition``, updated without needless churn.

``lastTransitionTime`` moves only when a condition's status flips, as API conventions ask, so
a reconcile that decides the same thing again produces an identical status and writes nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, Literal

Status = Literal["True", "False", "Unknown"]

#: Every condition type the operator sets, named once: the standard three (``kubectl wait`` and
#: Argo CD read them) and the kind-specific ones (``Materialized`` and ``Stale`` on a FeatureView; a
#: ModelVersion's stages). mypy refuses any other name at every ``set_condition`` call.
ConditionName = Literal[
    "Ready",
    "Progressing",
    "Degraded",
    "Drifted",
    "Materialized",
    "Stale",
    "Trained",
    "Evaluated",
    "Indexed",
]


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def set_condition(
    conditions: Sequence[Mapping[str, Any]],
    type_: ConditionName,
    status: Status,
    reason: str,
    message: str,
    generation: int,
    now: str | None = None,
) -> list[dict[str, Any]]:
    """Return ``conditions`` with ``type_`` set; the input is not modified."""
    result: list[dict[str, Any]] = []
    found = False
    for cond in conditions:
        if cond.get("type") != type_:
            result.append(dict(cond))
            continue
        found = True
        transition = cond.get("lastTransitionTime") or now or now_rfc3339()
        if cond.get("status") != status:
            transition = now or now_rfc3339()
        result.append(
            {
                "type": type_,
                "status": status,
                "reason": reason,
                "message": message,
                "observedGeneration": generation,
                "lastTransitionTime": transition,
            }
        )
    if not found:
        result.append(
            {
                "type": type_,
                "status": status,
                "reason": reason,
                "message": message,
                "observedGeneration": generation,
                "lastTransitionTime": now or now_rfc3339(),
            }
        )
    return result


def get_condition(conditions: Sequence[Mapping[str, Any]], type_: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions if c.get("type") == type_), None)


def is_true(conditions: Sequence[Mapping[str, Any]], type_: str) -> bool:
    cond = get_condition(conditions, type_)
    return cond is not None and cond.get("status") == "True"
