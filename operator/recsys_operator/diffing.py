"""Decide whether a child already looks as desired, so a quiet reconcile sends no write.

A server-side apply of unchanged content leaves etcd alone but is still a PATCH request; an
operator that re-applies everything on every pass floods the API server with writes (and its
audit log). The operator therefore compares what it would apply with what it observes and
applies only on a difference. The observed object carries server defaults and other managers'
fields, so the test is "desired is contained in observed", not equality.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: Metadata the server owns; never part of the comparison.
_SERVER_METADATA = frozenset(
    {"resourceVersion", "uid", "generation", "creationTimestamp", "managedFields", "selfLink"}
)


def contains(observed: Any, desired: Any) -> bool:
    """True when every field set in ``desired`` has the same value in ``observed``.

    Mappings compare key by key (extra observed keys are fine: defaults, other managers);
    lists compare element by element and must have the same length (a removed container or
    port is a change); scalars compare by value, with numbers and their string forms equal
    (the server answers ``"1"`` for a quantity the operator renders as ``1``).
    """
    if isinstance(desired, Mapping):
        if not isinstance(observed, Mapping):
            return False
        return all(k in observed and contains(observed[k], v) for k, v in desired.items())
    if isinstance(desired, list):
        if not isinstance(observed, list) or len(observed) != len(desired):
            return False
        return all(contains(o, d) for o, d in zip(observed, desired, strict=True))
    if desired == observed:
        return True
    if isinstance(desired, int | float) and not isinstance(desired, bool):
        return str(desired) == str(observed)
    return False


def needs_apply(desired: Mapping[str, Any], observed: Mapping[str, Any] | None) -> bool:
    """Whether ``desired`` must be sent: the object is missing or differs in a field we set."""
    if observed is None:
        return True
    meta = {k: v for k, v in desired.get("metadata", {}).items() if k not in _SERVER_METADATA}
    body = {k: v for k, v in desired.items() if k not in ("metadata", "status")}
    return not (
        contains(observed.get("metadata", {}), meta)
        and contains({k: v for k, v in observed.items() if k != "metadata"}, body)
    )
