"""The watch-fed store the reconcilers read: lookups as label and field selectors would answer."""

from __future__ import annotations

from typing import Any

import pytest

from recsys_operator.cache import Store


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


def test_list_by_predicate_and_kind() -> None:
    store = filled()
    names = store.list("batch/v1", "Job", "a", where=lambda o: o["metadata"]["name"] != "j1")
    assert {o["metadata"]["name"] for o in names} == {"j2", "j3"}
    assert store.list("apps/v1", "Deployment", "a") == []


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
