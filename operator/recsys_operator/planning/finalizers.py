"""Finalizers that hold an object until the state it left outside Kubernetes is cleaned, and
the first step of every such deletion: stopping the writers of that state.

Only two objects carry one, and only once they have written something outside the cluster: a
FeatureView (its Redis keyspace) and a Recommender (its gateway keyspace and, with
``retentionPolicy: Delete``, its artifacts). The names are the operator's own, not kopf's
(``recsys.dev/finalizer``), which kopf would remove by itself. The operator adds and removes
its entry with a server-side apply of ``metadata.finalizers`` alone, so the spec and other
controllers' finalizers stay their owners'.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Keeps a FeatureView until its Redis keyspace is gone.
KEYSPACE_FINALIZER = "recsys.dev/online-keyspace"
#: Keeps a Recommender until its gateway keyspace (and, with Delete, its artifacts) are gone.
CLEANUP_FINALIZER = "recsys.dev/cleanup"


def has_finalizer(obj: Mapping[str, Any], finalizer: str) -> bool:
    return finalizer in ((obj.get("metadata") or {}).get("finalizers") or [])


def needs_finalizer(obj: Mapping[str, Any], finalizer: str, wrote: bool) -> bool:
    """Whether the finalizer must be added now: the object is not being deleted (a finalizer
    may not be added then) and it has ``wrote`` state outside the cluster (or a workload that
    may write it exists). Before that there is nothing to clean, so an object whose store
    never existed deletes at once."""
    if (obj.get("metadata") or {}).get("deletionTimestamp") or has_finalizer(obj, finalizer):
        return False
    return wrote


def finalizer_apply(obj: Mapping[str, Any], finalizer: str, keep: bool) -> dict[str, Any]:
    """A server-side apply of the operator's finalizer alone (added or, with ``keep`` false,
    removed)."""
    meta = obj["metadata"]
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "metadata": {
            "name": meta["name"],
            "namespace": meta.get("namespace"),
            "finalizers": [finalizer] if keep else [],
        },
    }


@dataclass(frozen=True)
class Teardown:
    """The writers' part of a deletion: they are stopped (deleted in the foreground, so each
    is gone only once its pods are) before the state they wrote is touched."""

    #: (apiVersion, kind, name) of writers to delete now.
    delete: tuple[tuple[str, str, str], ...] = ()
    #: Writers are still there (or going): look again before touching the state.
    wait: bool = False
    #: No writer is left: clean the state, then remove the finalizer.
    clean: bool = False


def teardown(
    obj: Mapping[str, Any], finalizer: str, writers: Sequence[Mapping[str, Any]]
) -> Teardown | None:
    """The next deletion step of an object with ``deletionTimestamp``; None when it holds no
    ``finalizer`` (the API server deletes it by itself)."""
    if not has_finalizer(obj, finalizer):
        return None
    if not writers:
        return Teardown(clean=True)
    delete = tuple(
        (str(w["apiVersion"]), str(w["kind"]), str(w["metadata"]["name"]))
        for w in writers
        if not w["metadata"].get("deletionTimestamp")
    )
    return Teardown(delete=delete, wait=True)
