"""The operator's view of the cluster: a store fed by kopf's watches, as client-go's informers.

A reconcile reads the object and its children from here instead of asking the API server, so
a pass over an unchanged object costs no request at all, and a reconcile's requests are its
writes. The store holds what the watches delivered last, plus what the operator's own writes
returned (write-through): without that a pass that runs before the watch event of its previous
write arrives would see the old object and write again.

Before the first reconcile the controller lists every kind once into the store, so no
reconcile starts from a half-filled one (which would, for example, count a Recommender's
ModelVersions wrong and plan a new one, or lose a finished Job from a status). It does not wait
for kopf's own initial listing (kopf's index handlers would give that barrier), because a kind
the operator may not list would then hold every reconcile back for good; a kind whose listing
fails is logged and filled by its watch when that starts working.

Watch events and write answers can arrive out of order (the answer to a write, then a listing
that began before it); an object older than the stored one, by resourceVersion, is ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

Body = dict[str, Any]
Predicate = Callable[[Mapping[str, Any]], bool]


def _trim(body: Mapping[str, Any]) -> Body:
    """The object without ``managedFields``: the largest part of most objects, never read."""
    out = dict(body)
    meta = dict(out.get("metadata") or {})
    meta.pop("managedFields", None)
    out["metadata"] = meta
    return out


class Store:
    """Objects by (apiVersion, kind), namespace and name. Callers must not mutate what they get:
    the same dicts are handed to every reader, as an informer's cache does."""

    def __init__(self) -> None:
        self._objects: dict[tuple[str, str], dict[str, dict[str, Body]]] = {}

    def upsert(self, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        kind = (str(body.get("apiVersion", "")), str(body.get("kind", "")))
        names = self._objects.setdefault(kind, {}).setdefault(str(meta.get("namespace") or ""), {})
        name = str(meta["name"])
        held = names.get(name)
        if held is not None and _older(meta, held["metadata"]):
            return
        names[name] = _trim(body)

    def remove(self, api_version: str, kind: str, name: str, namespace: str | None) -> None:
        by_ns = self._objects.get((api_version, kind), {})
        by_ns.get(namespace or "", {}).pop(name, None)

    def get(self, api_version: str, kind: str, name: str, namespace: str | None) -> Body | None:
        return self._objects.get((api_version, kind), {}).get(namespace or "", {}).get(name)

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        labels: Mapping[str, str] | None = None,
        where: Predicate | None = None,
    ) -> list[Body]:
        """Objects of one kind in one namespace whose labels include ``labels`` and for which
        ``where`` holds (the cache's equivalent of label and field selectors)."""
        return [
            obj
            for obj in self._objects.get((api_version, kind), {}).get(namespace or "", {}).values()
            if _has_labels(obj, labels) and (where is None or where(obj))
        ]

    def __len__(self) -> int:
        return sum(len(names) for by_ns in self._objects.values() for names in by_ns.values())

    def __iter__(self) -> Iterator[Body]:
        for by_ns in self._objects.values():
            for names in by_ns.values():
                yield from names.values()


def _older(incoming: Mapping[str, Any], held: Mapping[str, Any]) -> bool:
    """Whether ``incoming`` is an older state of the same object than ``held``.

    resourceVersions are opaque to clients in general; the API server's etcd storage makes them
    increasing integers, which is what this relies on, and anything else is taken as newer."""
    if incoming.get("uid") != held.get("uid"):
        return False  # deleted and made again: the newer object
    try:
        return int(incoming.get("resourceVersion", "")) < int(held.get("resourceVersion", ""))
    except ValueError:
        return False


def _has_labels(obj: Mapping[str, Any], labels: Mapping[str, str] | None) -> bool:
    if not labels:
        return True
    have = (obj.get("metadata") or {}).get("labels") or {}
    return all(have.get(k) == v for k, v in labels.items())
