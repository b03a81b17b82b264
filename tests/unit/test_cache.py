"""The watch-fed store the reconcilers read: lookups as label and field selectors would answer."""

from __future__ import annotations

import inspect
from typing import Any

import kopf
import pytest

from recsys_operator.cache import Store
from recsys_operator.controller import CHILD_RESOURCES, PRIMARY_KINDS, Controller, register


def job(name: str, ns: str = "a", **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": labels,
            "managedFields": [{"manager": "kube-controller-manager"}],
        },
        "spec": {"parallelism": 1},
    }


def filled() -> Store:
    store = Store()
    store.upsert(job("j1", fv="users", component="materialize"))
    store.upsert(job("j2", fv="users", component="backfill"))
    store.upsert(job("j3", fv="items"))
    store.upsert(job("j1", ns="b", fv="users"))
    return store


@pytest.mark.parametrize(
    ("case", "labels", "namespace", "want"),
    [
        ("every Job of a namespace", None, "a", {"j1", "j2", "j3"}),
        ("one label", {"fv": "users"}, "a", {"j1", "j2"}),
        ("two labels", {"fv": "users", "component": "backfill"}, "a", {"j2"}),
        ("no match", {"fv": "nobody"}, "a", set()),
        ("another namespace", {"fv": "users"}, "b", {"j1"}),
        ("an empty namespace", None, "c", set()),
    ],
)
def test_list_by_labels(
    case: str, labels: dict[str, str] | None, namespace: str, want: set[str]
) -> None:
    got = {o["metadata"]["name"] for o in filled().list("batch/v1", "Job", namespace, labels)}
    assert got == want, case


def relabelled(store: Store) -> Store:
    store.upsert(job("j1", fv="items", component="materialize"))
    return store


def removed(store: Store) -> Store:
    store.remove("batch/v1", "Job", "j2", "a")
    return store


def made_again(store: Store) -> Store:
    store.remove("batch/v1", "Job", "j2", "a")
    store.upsert(job("j2", fv="users"))
    return store


@pytest.mark.parametrize(
    ("case", "change", "labels", "want"),
    [
        ("a label changed: gone from the old value", relabelled, {"fv": "users"}, {"j2"}),
        ("a label changed: found under the new", relabelled, {"fv": "items"}, {"j1", "j3"}),
        ("a label kept through an update", relabelled, {"component": "materialize"}, {"j1"}),
        ("removed: under no label", removed, {"component": "backfill"}, set()),
        ("removed: the others stay", removed, {"fv": "users"}, {"j1"}),
        ("made again with fewer labels", made_again, {"component": "backfill"}, set()),
        ("made again: found again", made_again, {"fv": "users"}, {"j1", "j2"}),
    ],
)
def test_the_label_index_follows_updates_and_removals(
    case: str, change: Any, labels: dict[str, str], want: set[str]
) -> None:
    store = change(filled())
    got = {o["metadata"]["name"] for o in store.list("batch/v1", "Job", "a", labels)}
    assert got == want, case


def mv(name: str, recommender: str | None) -> dict[str, Any]:
    spec = {"recommenderRef": {"name": recommender}} if recommender else {}
    return {
        "apiVersion": "recsys.dev/v1alpha1",
        "kind": "ModelVersion",
        "metadata": {"name": name, "namespace": "a"},
        "spec": spec,
    }


def indexed() -> Store:
    store = Store({("recsys.dev/v1alpha1", "ModelVersion"): {"rec": by_rec}})
    for name, rec in [("m1", "movies"), ("m2", "movies"), ("m3", "books"), ("m4", None)]:
        store.upsert(mv(name, rec))
    return store


def by_rec(m: Any) -> str | None:
    return (m.get("spec", {}).get("recommenderRef") or {}).get("name")


@pytest.mark.parametrize(
    ("case", "value", "want"),
    [
        ("two under one value", "movies", {"m1", "m2"}),
        ("one under another", "books", {"m3"}),
        ("none under a third", "music", set()),
    ],
)
def test_list_by_field_index(case: str, value: str, want: set[str]) -> None:
    got = indexed().list("recsys.dev/v1alpha1", "ModelVersion", "a", indexed=("rec", value))
    assert {o["metadata"]["name"] for o in got} == want, case


def test_the_field_index_follows_an_update_and_an_unknown_index_is_refused() -> None:
    store = indexed()
    store.upsert(mv("m1", "books"))
    got = store.list("recsys.dev/v1alpha1", "ModelVersion", "a", indexed=("rec", "books"))
    assert {o["metadata"]["name"] for o in got} == {"m1", "m3"}
    got = store.list("recsys.dev/v1alpha1", "ModelVersion", "a", indexed=("rec", "movies"))
    assert {o["metadata"]["name"] for o in got} == {"m2"}
    store.remove("recsys.dev/v1alpha1", "ModelVersion", "m2", "a")
    assert store.list("recsys.dev/v1alpha1", "ModelVersion", "a", indexed=("rec", "movies")) == []
    with pytest.raises(KeyError, match="no field index 'owner'"):
        store.list("recsys.dev/v1alpha1", "ModelVersion", "a", indexed=("owner", "x"))
    assert store.list("apps/v1", "Deployment", "a") == []


def test_every_reader_gets_its_own_copy() -> None:
    store = filled()
    first = store.get("batch/v1", "Job", "j1", "a")
    assert first is not None
    first["spec"]["parallelism"] = 99
    first["metadata"]["labels"]["fv"] = "changed"
    again = store.get("batch/v1", "Job", "j1", "a")
    assert again is not None
    assert again["spec"]["parallelism"] == 1
    assert {o["metadata"]["name"] for o in store.list("batch/v1", "Job", "a", {"fv": "users"})} == {
        "j1",
        "j2",
    }


def test_upsert_replaces_remove_forgets_and_managed_fields_are_dropped() -> None:
    store = filled()
    newer = job("j1", fv="users")
    newer["spec"]["parallelism"] = 4
    store.upsert(newer)
    got = store.get("batch/v1", "Job", "j1", "a")
    assert got is not None
    assert got["spec"]["parallelism"] == 4
    assert "managedFields" not in got["metadata"]
    assert "managedFields" in newer["metadata"], "the caller's object is not changed"
    store.remove("batch/v1", "Job", "j1", "a")
    assert store.get("batch/v1", "Job", "j1", "a") is None
    assert store.get("batch/v1", "Job", "j1", "b") is not None
    store.remove("batch/v1", "Job", "never-there", "z")  # no error
    assert len(store) == 3


def test_the_watch_handlers_run_on_the_event_loop() -> None:
    """kopf runs a plain-function handler in a thread pool; the cache and the work queue are
    the event loop's, so every handler that feeds them must be a coroutine."""
    registry = kopf.OperatorRegistry()
    register(Controller(reconcilers={}), registry)
    handlers = registry._watching.get_all_handlers()
    assert len(handlers) == len(PRIMARY_KINDS) + len(CHILD_RESOURCES)
    assert all(inspect.iscoroutinefunction(h.fn) for h in handlers)
