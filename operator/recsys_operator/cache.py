"""The operator's view of the cluster: a store fed by kopf's watches, as client-go's informers.

A reconcile reads the object and its children from here instead of asking the API server, so
a pass over an unchanged object costs no request at all, and a reconcile's requests are its
writes. The store holds what the watches delivered last, plus what the operator's own writes
returned (write-through): without that a pass that runs before the watch event of its previous
write arrives would see the old object and write again.

kopf's index handlers feed the store, because kopf holds every other handler back until each
indexed kind's initial listing is done: no reconcile starts from a half-filled store, which
would, for example, count the ModelVersions of a Recommender wrong and plan a new one.
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
        by_ns = self._objects.setdefault(kind, {})
        by_ns.setdefault(str(meta.get("namespace") or ""), {})[str(meta["name"])] = _trim(body)

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


def _has_labels(obj: Mapping[str, Any], labels: Mapping[str, str] | None) -> bool:
    if not labels:
        return True
    have = (obj.get("metadata") or {}).get("labels") or {}
    return all(have.get(k) == v for k, v in labels.items())
