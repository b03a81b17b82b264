"""Deleting a Recommender on the real control plane: its writers stop first, then its Redis
keyspace goes, then (with ``retentionPolicy: Delete``) the cleanup Job removes the artifacts
its workloads wrote, and only then the Recommender. A store that refuses keeps it, saying why,
until the artifacts are retained instead.

The versions' workloads are played through their termination messages, as in
``test_operator_lifecycle``; the cleanup Job's work is the real workload run in the test
process on the config the operator rendered for it, on a ``file://`` store.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis
from test_operator_lifecycle import (
    _online_store,  # noqa: F401 (autouse: the Recommender's Redis)
    apply_stack,
    wait_rollout,
    walk_to_ready,
)

from fixtures.kube import Testbed
from fixtures.operator import OperatorProcess, eventually, finish_pod, get
from recsys_contract.keyspace import GatewayKeys
from recsys_operator.planning.finalizers import CLEANUP_FINALIZER
from recsys_workloads import cleanup as cleanup_workload

pytestmark = [pytest.mark.testbed, pytest.mark.redis]

WRITTEN = ("models/movies-v1/model.pt", "indexes/movies-v1/index.faiss",
           "logged/date=2026-12-01/part-1-2.parquet")  # fmt: skip


def serve_one_version(
    testbed: Testbed, ns: str, operator: OperatorProcess, store: Path, policy: str | None
) -> None:
    """A Recommender on a ``file://`` store, its first version trained, indexed and stable,
    and the files its workloads would have written there."""

    def edit(docs: list[dict[str, Any]]) -> None:
        artifacts = docs[1]["spec"]["stores"]["artifacts"]
        artifacts["storageUri"] = store.as_uri()
        if policy:
            artifacts["retentionPolicy"] = policy

    apply_stack(testbed, ns, edit)
    walk_to_ready(testbed, ns, "movies-v1", 0.12, operator)
    wait_rollout(testbed, ns, operator, stable="movies-v1", phase="Healthy")
    for rel in (*WRITTEN, "README.txt"):
        (store / rel).parent.mkdir(parents=True, exist_ok=True)
        (store / rel).write_text("x")
    eventually(
        lambda: CLEANUP_FINALIZER in (recommender(testbed, ns) or {}).get("metadata", {}).get(
            "finalizers", []),
        60, "the finalizer once the routing table is in Redis", operator=operator,
    )  # fmt: skip


def recommender(testbed: Testbed, ns: str) -> dict[str, Any] | None:
    return get(testbed, "recommender", "movies", ns)


def events(testbed: Testbed, ns: str, reason: str) -> list[str]:
    out = json.loads(testbed.kubectl("get", "events", "-n", ns, "-o", "json").stdout)
    return [e["message"] for e in out["items"] if e["reason"] == reason]


def items(testbed: Testbed, ns: str, kinds: str, *selector: str) -> list[str]:
    out = json.loads(testbed.kubectl("get", kinds, "-n", ns, *selector, "-o", "json").stdout)
    return [f"{i['kind']}/{i['metadata']['name']}" for i in out["items"]]


def run_cleanup(testbed: Testbed, ns: str, tmp_path: Path) -> dict[str, Any]:
    """The real cleanup workload on the config the operator rendered for its Job."""
    cm = eventually(lambda: get(testbed, "configmap", "movies-cleanup", ns), 60,
                    "the cleanup Job's config")  # fmt: skip
    config = tmp_path / "cleanup.json"
    config.write_text(cm["data"]["config.json"])
    log = tmp_path / "cleanup-termination-log"
    code = cleanup_workload.main(["--config", str(config), "--termination-log", str(log)])
    assert code == 0, log.read_text()
    return dict(json.loads(log.read_text()))


def test_delete_removes_the_keyspace_then_the_artifacts_then_the_recommender(
    testbed: Testbed, namespace: str, operator: OperatorProcess, redis_url: str, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    serve_one_version(testbed, namespace, operator, store, "Delete")
    client = redis.Redis.from_url(redis_url)
    keys = GatewayKeys.of(f"{namespace}.movies")
    client.sadd(keys.seen(7), 1, 2, 3)  # what a gateway and the history Job write
    client.xadd(keys.served, {"r": "1"})
    # Neighbours that must stay: a Recommender whose name starts the same, the same name in
    # another namespace, and the FeatureView's keys.
    neighbours = [f"recsys:{namespace}.movies2:routing", "recsys:other.movies:routing",
                  f"fv:{namespace}.users:live"]  # fmt: skip
    for key in neighbours:
        client.set(key, "x")
    written = sorted(client.scan_iter(match=f"{keys.base}:*"))
    assert keys.routing.encode() in written

    testbed.kubectl("delete", "recommender", "movies", "-n", namespace, "--wait=false")
    # the writers go first; the Recommender waits for its cleanup Job
    job = eventually(lambda: get(testbed, "job", "movies-cleanup", namespace), 60,
                     "the cleanup Job", operator=operator)  # fmt: skip
    assert "ownerReferences" not in job["metadata"]
    assert items(testbed, namespace, "modelversions") == []
    mine = ("-l", "recsys.dev/recommender=movies")
    assert items(testbed, namespace, "deployments,cronjobs,jobs", *mine) == ["Job/movies-cleanup"]
    assert get(testbed, "cronjob", "users-materialize", namespace), "the FeatureView's stays"
    assert sorted(client.scan_iter(match=f"{keys.base}:*")) == []
    assert sorted(client.keys("*")) == sorted(k.encode() for k in neighbours)
    (deleted,) = events(testbed, namespace, "KeyspaceDeleted")
    assert deleted == f"deleted {len(written)} keys of {keys.base}:*"
    held = recommender(testbed, namespace)
    assert held is not None
    assert held["metadata"]["finalizers"] == [CLEANUP_FINALIZER]
    assert all((store / rel).exists() for rel in WRITTEN), "nothing deleted before the Job ran"

    summary = run_cleanup(testbed, namespace, tmp_path)
    finish_pod(testbed, namespace, "movies-cleanup", exit_code=0, summary=summary)
    eventually(lambda: recommender(testbed, namespace) is None, 60, "the Recommender gone",
               operator=operator)  # fmt: skip
    assert sorted(p.name for p in store.iterdir()) == ["README.txt"], "the user's file stays"
    (artifacts,) = events(testbed, namespace, "ArtifactsDeleted")
    assert str(store.as_uri()) + "/models" in artifacts
    # deleted in the foreground: gone with its pod
    eventually(lambda: get(testbed, "job", "movies-cleanup", namespace) is None, 30,
               "the cleanup Job gone")  # fmt: skip
    assert get(testbed, "configmap", "movies-cleanup", namespace) is None


def test_a_store_that_refuses_keeps_the_recommender_until_its_artifacts_are_retained(
    testbed: Testbed, namespace: str, operator: OperatorProcess, redis_url: str, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    serve_one_version(testbed, namespace, operator, store, "Delete")
    testbed.kubectl("delete", "recommender", "movies", "-n", namespace, "--wait=false")
    refused = {
        "status": "Failed",
        "reason": "BadInput",
        "message": "delete the artifacts: s3://models is not usable (PermissionError)",
    }
    finish_pod(testbed, namespace, "movies-cleanup", exit_code=2, summary=refused)
    message = eventually(
        lambda: next(iter(events(testbed, namespace, "ArtifactsNotDeleted")), None),
        60, "a Warning Event saying why the deletion waits", operator=operator,
    )  # fmt: skip
    assert "PermissionError" in message
    assert "retentionPolicy: Retain" in message
    held = recommender(testbed, namespace)
    assert held is not None
    assert held["metadata"]["deletionTimestamp"]
    # the user chooses to keep the artifacts: the deletion completes without touching them
    testbed.kubectl("patch", "recommender", "movies", "-n", namespace, "--type=merge", "-p",
                    '{"spec":{"stores":{"artifacts":{"retentionPolicy":"Retain"}}}}')  # fmt: skip
    eventually(lambda: recommender(testbed, namespace) is None, 60, "the Recommender gone",
               operator=operator)  # fmt: skip
    assert all((store / rel).exists() for rel in WRITTEN)
    eventually(lambda: get(testbed, "job", "movies-cleanup", namespace) is None, 30,
               "the failed cleanup Job gone")  # fmt: skip


def test_retain_keeps_the_artifacts_and_a_recommender_that_never_served_has_no_finalizer(
    testbed: Testbed, namespace: str, operator: OperatorProcess, redis_url: str, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    serve_one_version(testbed, namespace, operator, store, None)
    testbed.kubectl("delete", "recommender", "movies", "-n", namespace, "--timeout=60s")
    assert recommender(testbed, namespace) is None
    assert all((store / rel).exists() for rel in WRITTEN)
    assert events(testbed, namespace, "CleanupStarted") == []
    assert len(events(testbed, namespace, "KeyspaceDeleted")) == 1
    # before serving, nothing is in Redis: no finalizer, so it deletes at once
    apply_stack(testbed, namespace)
    eventually(lambda: get(testbed, "modelversion", "movies-v1", namespace), 60,
               "the first version", operator=operator)  # fmt: skip
    assert not (recommender(testbed, namespace) or {})["metadata"].get("finalizers")
    testbed.kubectl("delete", "recommender", "movies", "-n", namespace, "--timeout=30s")
