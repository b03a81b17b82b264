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

Memory. The store holds every object the operator watches, so it is most of the operator's
memory at scale. An object is kept as its compact JSON, not as the parsed dicts: a parsed
Kubernetes object costs several times its JSON in Python objects (a dict per nested mapping,
a string per key), and only the few objects a reconcile reads are ever needed parsed at once.
``get`` and ``list`` decode what they return, so every reader gets its own copy (a reader's
change never reaches the store, nor another reader). What a lookup filters on is kept parsed
beside the JSON: the labels, and field indexes (controller-runtime's ``IndexField``) that a
kind registers, so a query never decodes the objects it does not return. Figures:
benchmarks/README.md ("operator at scale").

Lookups. Each label pair and each field-index value is also an inverted index (client-go's
``Indexer``) from the value to the names under it, per kind and namespace, so a query costs the
objects it returns, not every object of the kind: otherwise each reconcile's lookup of its own
children would scan them all, and a settle of N objects would grow as N squared.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

Body = dict[str, Any]
#: A field index: the value an object is found under (None: not in the index).
Indexer = Callable[[Mapping[str, Any]], str | None]
#: (apiVersion, kind) -> index name -> how to compute it.
Indexers = Mapping[tuple[str, str], Mapping[str, Indexer]]


@dataclass(frozen=True, slots=True)
class _Entry:
    uid: str | None
    resource_version: str
    labels: Mapping[str, str]
    indexed: Mapping[str, str | None]
    raw: bytes

    def body(self) -> Body:
        decoded: Body = orjson.loads(self.raw)
        return decoded


def _encode(body: Mapping[str, Any]) -> bytes:
    """The object's compact JSON, without ``managedFields`` (the largest part of most objects,
    never read). Copied into a bytes object of its own size: orjson hands back its growth
    buffer, which can be several times the JSON."""
    meta = dict(body.get("metadata") or {})
    meta.pop("managedFields", None)
    return bytes(memoryview(orjson.dumps({**body, "metadata": meta})))


#: (apiVersion, kind), namespace: what Store keeps per kind and namespace.
_Bucket = tuple[tuple[str, str], str]
#: A posting: ("label", key, value) or ("index", name, value).
_Term = tuple[str, str, str]


class Store:
    """Objects by (apiVersion, kind), namespace and name."""

    def __init__(self, indexers: Indexers | None = None) -> None:
        self._objects: dict[tuple[str, str], dict[str, dict[str, _Entry]]] = {}
        self._indexers: Indexers = indexers or {}
        # Names in insertion order (a dict as an ordered set), as ``_objects`` lists them.
        self._postings: dict[_Bucket, dict[_Term, dict[str, None]]] = {}

    def upsert(self, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        kind = (str(body.get("apiVersion", "")), str(body.get("kind", "")))
        ns = str(meta.get("namespace") or "")
        names = self._objects.setdefault(kind, {}).setdefault(ns, {})
        name = str(meta["name"])
        held = names.get(name)
        if held is not None and _older(meta, held):
            return
        entry = _Entry(
            uid=meta.get("uid"),
            resource_version=str(meta.get("resourceVersion", "")),
            # Interned: children of one owner repeat the same labels.
            labels={
                sys.intern(str(k)): sys.intern(str(v))
                for k, v in (meta.get("labels") or {}).items()
            },
            indexed={
                index: indexer(body) for index, indexer in self._indexers.get(kind, {}).items()
            },
            raw=_encode(body),
        )
        names[name] = entry
        before = _terms(held) if held is not None else set()
        after = _terms(entry)
        postings = self._postings.setdefault((kind, ns), {})
        for term in before - after:
            _unpost(postings, term, name)
        for term in after - before:
            postings.setdefault(term, {})[name] = None

    def remove(self, api_version: str, kind: str, name: str, namespace: str | None) -> None:
        ns = namespace or ""
        held = self._objects.get((api_version, kind), {}).get(ns, {}).pop(name, None)
        if held is not None:
            postings = self._postings.get(((api_version, kind), ns), {})
            for term in _terms(held):
                _unpost(postings, term, name)

    def get(self, api_version: str, kind: str, name: str, namespace: str | None) -> Body | None:
        entry = self._objects.get((api_version, kind), {}).get(namespace or "", {}).get(name)
        return entry.body() if entry is not None else None

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None,
        labels: Mapping[str, str] | None = None,
        indexed: tuple[str, str] | None = None,
    ) -> list[Body]:
        """Objects of one kind in one namespace whose labels include ``labels`` and, with
        ``indexed=(index, value)``, that the kind's field index puts under ``value`` (the
        cache's equivalent of label and field selectors)."""
        if indexed is not None and indexed[0] not in self._indexers.get((api_version, kind), {}):
            raise KeyError(f"{kind} has no field index {indexed[0]!r}")
        ns = namespace or ""
        names = self._objects.get((api_version, kind), {}).get(ns, {})
        terms = [("label", k, v) for k, v in (labels or {}).items()]
        if indexed is not None:
            terms.append(("index", *indexed))
        candidates: Iterable[str] = names
        if terms:
            postings = self._postings.get(((api_version, kind), ns), {})
            smallest = min((postings.get(t, {}) for t in terms), key=len)
            candidates = smallest
        return [
            entry.body()
            for entry in (names[name] for name in candidates)
            if _has_labels(entry, labels)
            and (indexed is None or entry.indexed.get(indexed[0]) == indexed[1])
        ]

    def __len__(self) -> int:
        return sum(len(names) for by_ns in self._objects.values() for names in by_ns.values())

    def __iter__(self) -> Iterator[Body]:
        for by_ns in self._objects.values():
            for names in by_ns.values():
                for entry in names.values():
                    yield entry.body()


def _terms(entry: _Entry) -> set[_Term]:
    """What ``entry`` is found under: each label pair, each field index it has a value in."""
    found = {("label", k, v) for k, v in entry.labels.items()}
    found.update(("index", i, v) for i, v in entry.indexed.items() if v is not None)
    return found


def _unpost(postings: dict[_Term, dict[str, None]], term: _Term, name: str) -> None:
    names = postings.get(term)
    if names is not None:
        names.pop(name, None)
        if not names:
            del postings[term]


def _older(incoming: Mapping[str, Any], held: _Entry) -> bool:
    """Whether ``incoming`` is an older state of the same object than ``held``.

    resourceVersions are opaque to clients in general; the API server's etcd storage makes them
    increasing integers, which is what this relies on, and anything else is taken as newer."""
    if incoming.get("uid") != held.uid:
        return False  # deleted and made again: the newer object
    try:
        return int(incoming.get("resourceVersion", "")) < int(held.resource_version)
    except ValueError:
        return False


def _has_labels(entry: _Entry, labels: Mapping[str, str] | None) -> bool:
    return not labels or all(entry.labels.get(k) == v for k, v in labels.items())
