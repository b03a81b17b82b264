"""Decide whether a child must be applied, so a quiet reconcile sends no write and a removal
still reaches the child.

Server-side apply removes a field only when the operator's field manager applies an intent
that leaves it out, so the operator must send its full intent whenever that intent may have
changed. Comparing "desired is contained in observed" cannot see a removal (the old field is
still in observed, and nothing desired is missing), so every applied child carries a hash of
the intent it was applied with: a different hash means the intent changed, removals included.
Containment is still checked, so a field someone else changed on a child (``kubectl edit``)
is put back. Only the hash annotation is the operator's own bookkeeping; both tests are local.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from recsys_operator import GROUP

#: The annotation that records the hash of the intent a child was last applied with.
INTENT_HASH = f"{GROUP}/intent-hash"

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


def intent_hash(desired: Mapping[str, Any]) -> str:
    """A stable digest of what the operator means a child to be (key order does not matter)."""
    canonical = json.dumps(desired, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def stamped(desired: Mapping[str, Any]) -> dict[str, Any]:
    """``desired`` with its intent hash in its annotations: what is sent to the server."""
    meta = dict(desired.get("metadata") or {})
    meta["annotations"] = {**(meta.get("annotations") or {}), INTENT_HASH: intent_hash(desired)}
    return {**desired, "metadata": meta}


def needs_apply(desired: Mapping[str, Any], observed: Mapping[str, Any] | None) -> bool:
    """Whether ``desired`` (as :func:`stamped` made it) must be sent: the object is missing, was
    applied with another intent, or differs in a field the operator sets."""
    if observed is None:
        return True
    want = (desired.get("metadata", {}).get("annotations") or {}).get(INTENT_HASH)
    have = (observed.get("metadata", {}).get("annotations") or {}).get(INTENT_HASH)
    if want != have:
        return True
    meta = {k: v for k, v in desired.get("metadata", {}).items() if k not in _SERVER_METADATA}
    body = {k: v for k, v in desired.items() if k not in ("metadata", "status")}
    return not (
        contains(observed.get("metadata", {}), meta)
        and contains({k: v for k, v in observed.items() if k != "metadata"}, body)
    )


def merge_patch(observed: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns ``observed`` into ``desired``: a key gone
    from ``desired`` is sent as null, so a status field the operator no longer reports (a
    finished canary, say) leaves the object instead of lingering as a stale truth."""
    patch: dict[str, Any] = {}
    for key, value in desired.items():
        old = observed.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            sub = merge_patch(old, value)
            if sub:
                patch[key] = sub
        elif old != value:
            patch[key] = value
    for key in observed:
        if key not in desired:
            patch[key] = None
    return patch
