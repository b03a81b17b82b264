"""The operator's finalizers and the writers' step of a deletion (a FeatureView's here),
decided without a cluster."""

from __future__ import annotations

from typing import Any

import pytest

from recsys_operator.planning.finalizers import (
    KEYSPACE_FINALIZER,
    Teardown,
    finalizer_apply,
    needs_finalizer,
    teardown,
)

DELETING = "2026-12-02T12:00:00Z"


def view(*finalizers: str, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "users", "namespace": "shop", "finalizers": list(finalizers)}
    if deleting:
        meta["deletionTimestamp"] = DELETING
    return {"apiVersion": "recsys.dev/v1alpha1", "kind": "FeatureView", "metadata": meta}


def child(kind: str, name: str, *, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = DELETING
    return {"apiVersion": "batch/v1", "kind": kind, "metadata": meta}


CRON = child("CronJob", "users-materialize")
RUN = child("Job", "users-materialize-29000000")


@pytest.mark.parametrize(
    ("case", "obj", "runs", "want"),
    [
        ("never ran: nothing in Redis, no finalizer", view(), [], False),
        ("a run exists: it may write the keyspace", view(), [RUN], True),
        ("already there", view(KEYSPACE_FINALIZER), [RUN], False),
        ("someone else's finalizer is not ours", view("example.com/keep"), [RUN], True),
        ("being deleted: a finalizer may not be added", view(deleting=True), [RUN], False),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_needs_finalizer(case: str, obj: dict[str, Any], runs: list[Any], want: bool) -> None:
    assert needs_finalizer(obj, KEYSPACE_FINALIZER, wrote=bool(runs)) is want


@pytest.mark.parametrize(
    ("case", "obj", "crons", "jobs", "want"),
    [
        ("not ours to hold: the API server deletes it", view(deleting=True), [CRON], [RUN],
         None),
        ("writers still there: delete the CronJob and the runs, then wait",
         view(KEYSPACE_FINALIZER, deleting=True), [CRON], [RUN],
         Teardown(delete=(("batch/v1", "CronJob", "users-materialize"),
                          ("batch/v1", "Job", "users-materialize-29000000")), wait=True)),
        ("writers going: wait, delete nothing twice",
         view(KEYSPACE_FINALIZER, deleting=True), [], [child("Job", "r1", deleting=True)],
         Teardown(wait=True)),
        ("one going, one new: delete the new one",
         view(KEYSPACE_FINALIZER, deleting=True), [child("CronJob", "c", deleting=True)],
         [child("Job", "r2")], Teardown(delete=(("batch/v1", "Job", "r2"),), wait=True)),
        ("no writer left: delete the keyspace, then the finalizer",
         view(KEYSPACE_FINALIZER, "example.com/keep", deleting=True), [], [],
         Teardown(clean=True)),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)  # fmt: skip
def test_teardown(
    case: str, obj: dict[str, Any], crons: list[Any], jobs: list[Any], want: Teardown | None
) -> None:
    assert teardown(obj, KEYSPACE_FINALIZER, [*crons, *jobs]) == want


@pytest.mark.parametrize(("keep", "finalizers"), [(True, [KEYSPACE_FINALIZER]), (False, [])])
def test_the_finalizer_is_applied_alone(keep: bool, finalizers: list[str]) -> None:
    """Server-side apply of metadata.finalizers only: the spec is the user's, and a list the
    operator applies empty drops only the entry it owns, not other controllers' finalizers."""
    assert finalizer_apply(view("example.com/keep"), KEYSPACE_FINALIZER, keep) == {
        "apiVersion": "recsys.dev/v1alpha1",
        "kind": "FeatureView",
        "metadata": {"name": "users", "namespace": "shop", "finalizers": finalizers},
    }
