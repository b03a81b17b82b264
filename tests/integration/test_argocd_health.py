"""The chart's Argo CD health checks, run by Argo CD's own Lua VM (tests/argocd).

First every health_test.yaml, in Argo CD's format, over its hand-written testdata. Then the
same scripts on objects read live from the testbed's API server after a status was written
through the status subresource: what Argo CD would read, with the CRD's defaulting (the
default canary steps give "step i/4") and pruning applied, not the object a test meant to
write.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from api_support import RESOURCES, install_crds
from argocd.health import KINDS, argocd_health, binary, run_health_tests, script
from argocd.snippet import PATCH
from lightkube import Client
from lightkube.types import PatchType

from fixtures.kube import Testbed

NOW = "2026-11-23T12:00:00Z"


def suite(kind: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((script(kind).parent / "health_test.yaml").read_text())
    return loaded


@pytest.mark.parametrize("kind", KINDS)
def test_health_tests_pass_in_argo_cds_lua_vm(kind: str) -> None:
    result = run_health_tests(kind)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(suite(kind)['tests'])} passed, 0 failed" in result.stdout


@pytest.mark.parametrize("kind", KINDS)
def test_every_testdata_file_is_a_case(kind: str) -> None:
    folder = script(kind).parent
    on_disk = {f"testdata/{p.name}" for p in (folder / "testdata").iterdir()}
    assert {t["inputPath"] for t in suite(kind)["tests"]} == on_disk


def test_a_wrong_expectation_fails(tmp_path: Path) -> None:
    folder = tmp_path / "FeatureView"
    shutil.copytree(script("FeatureView").parent, folder)
    tests = suite("FeatureView")
    tests["tests"][0]["healthStatus"]["status"] = "Healthy"
    (folder / "health_test.yaml").write_text(yaml.safe_dump(tests))
    result = subprocess.run(
        [str(binary()), "test", str(folder)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert f"FAIL {tests['tests'][0]['inputPath']}" in result.stdout


def test_scripts_get_argocd_cms_sandbox(tmp_path: Path) -> None:
    """A script that needs Lua's string library would fail in Argo CD without useOpenLibs."""
    lua = tmp_path / "health.lua"
    lua.write_text('return {status = "Healthy", message = string.upper("x")}\n')
    obj = tmp_path / "obj.json"
    obj.write_text("{}")
    sandboxed = subprocess.run(
        [str(binary()), str(lua), str(obj)], capture_output=True, text=True, check=False
    )
    assert sandboxed.returncode == 1
    assert "upper" in sandboxed.stderr
    opened = subprocess.run(
        [str(binary()), "-open-libs", str(lua), str(obj)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert opened.stdout.strip() == '{"status":"Healthy","message":"X"}'


# --- live objects ------------------------------------------------------------------------


MANIFESTS: dict[str, dict[str, Any]] = {
    "Recommender": {
        "interactions": {"path": "s3://data/interactions/"},
        "stores": {
            "redis": {"url": "redis://redis:6379/0"},
            "artifacts": {"storageUri": "s3://m/"},
        },
    },
    "ModelVersion": {"recommenderRef": {"name": "movies"}},
    "FeatureView": {
        "entity": {"name": "user", "joinKeys": ["user_id"]},
        "source": {"path": "s3://data/users/"},
        "features": [{"name": "age", "dtype": "Int64"}],
        "onlineStore": {"redis": {"url": "redis://redis:6379/0"}},
        "materialization": {"cronJob": {"schedule": "@daily"}},
    },
}
#: A spec change per kind that bumps metadata.generation (a ModelVersion's spec is immutable).
SPEC_CHANGES = {
    "Recommender": {"serving": {"rollout": {"paused": True}}},
    "FeatureView": {"ttl": "48h"},
}


def cond(kind: str, status: str, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": NOW,
    }


READY = cond("Ready", "True", "Serving", "serving movies-mv-1")
CANARY = {"stable": "movies-mv-1", "canary": "movies-mv-2", "startTime": NOW, "failedChecks": 0}
UNOBSERVED = "Waiting for the operator to observe generation"


def rollout(**fields: Any) -> dict[str, Any]:
    """A Recommender status that is Ready, with ``fields`` as its status.rollout."""
    return {"conditions": [READY], "rollout": fields}


@dataclass(frozen=True)
class Live:
    kind: str
    #: What the operator would write; observedGeneration is added (the live generation).
    status: dict[str, Any] | None
    health: str
    message: str
    #: Change the spec after the status was written, so the status is one generation behind.
    change_spec: bool = False


def row(name: str, *args: Any, **kwargs: Any) -> Any:
    return pytest.param(Live(*args, **kwargs), id=name)


REC, MV, FV = "Recommender", "ModelVersion", "FeatureView"
LIVE = [
    row("rec-no-status", REC, None, "Progressing", f"{UNOBSERVED} 1"),
    row("rec-spec-changed", REC, rollout(), "Progressing", f"{UNOBSERVED} 2", change_spec=True),
    row(
        "rec-first-version",
        REC,
        {"conditions": [cond("Ready", "False", "Training", "training movies-mv-1")]},
        "Progressing",
        "training movies-mv-1",
    ),
    row(
        "rec-step",
        REC,
        rollout(phase="Progressing", currentStepIndex=2, failedChecks=0, message="checks pass"),
        "Progressing",
        "Rollout progressing: step 3/4, checks pass",
    ),
    row(
        "rec-paused",
        REC,
        rollout(phase="Paused", currentStepIndex=1),
        "Suspended",
        "Rollout paused: step 2/4",
    ),
    row(
        "rec-degraded",
        REC,
        {"conditions": [READY, cond("Degraded", "True", "TrainingFailed", "mv-3 failed")]},
        "Degraded",
        "mv-3 failed",
    ),
    row("rec-ready", REC, {"conditions": [READY]}, "Healthy", "serving movies-mv-1"),
    row(
        "rec-canary",
        REC,
        rollout(**CANARY, phase="Progressing", canaryWeight=10, currentStepIndex=0),
        "Progressing",
        "Rollout progressing: canary movies-mv-2 at 10%, step 1/4",
    ),
    row(
        "rec-pause-step",
        REC,
        rollout(
            **CANARY, phase="Paused", pauseReason="PauseStep", canaryWeight=10, currentStepIndex=1
        ),
        "Suspended",
        "Rollout paused (PauseStep): canary movies-mv-2 at 10%, step 2/4",
    ),
    row(
        "rec-awaiting-promote",
        REC,
        rollout(
            **CANARY,
            phase="Paused",
            pauseReason="AwaitingPromote",
            canaryWeight=50,
            currentStepIndex=3,
        ),
        "Suspended",
        "Rollout paused (AwaitingPromote): canary movies-mv-2 at 50%, step 4/4",
    ),
    row(
        "rec-promoting",
        REC,
        rollout(
            **CANARY,
            phase="Promoting",
            canaryWeight=100,
            currentStepIndex=4,
            message="1 of 2 loaded it",
        ),
        "Progressing",
        "Rollout promoting: canary movies-mv-2 at 100%, step 4/4, 1 of 2 loaded it",
    ),
    row(
        "rec-healthy",
        REC,
        rollout(phase="Healthy", stable="movies-mv-2", canaryWeight=0, currentStepIndex=4),
        "Healthy",
        "Serving movies-mv-2",
    ),
    row(
        "rec-aborted",
        REC,
        rollout(
            phase="Aborted",
            stable="movies-mv-1",
            abortedVersion="movies-mv-2",
            canaryWeight=0,
            message="click-through-rate failed 3 checks",
        ),
        "Degraded",
        "Rollout of movies-mv-2 aborted: click-through-rate failed 3 checks",
    ),
    row("mv-no-status", MV, None, "Progressing", f"{UNOBSERVED} 1"),
    row("mv-pending", MV, {"phase": "Pending"}, "Progressing", "Pending"),
    row(
        "mv-training",
        MV,
        {"phase": "Training", "message": "the Job is running"},
        "Progressing",
        "Training: the Job is running",
    ),
    row("mv-evaluating", MV, {"phase": "Evaluating"}, "Progressing", "Evaluating"),
    row("mv-indexing", MV, {"phase": "Indexing"}, "Progressing", "Indexing"),
    row(
        "mv-ready",
        MV,
        {"phase": "Ready", "conditions": [cond("Ready", "True", "Ready", "index built")]},
        "Healthy",
        "",
    ),
    row(
        "mv-failed",
        MV,
        {"phase": "Failed", "conditions": [cond("Ready", "False", "TrainingFailed", "exit 1")]},
        "Degraded",
        "Failed: exit 1",
    ),
    row(
        "mv-rejected",
        MV,
        {"phase": "Rejected", "message": "recall below the stable's"},
        "Degraded",
        "Rejected: recall below the stable's",
    ),
    row("fv-no-status", FV, None, "Progressing", f"{UNOBSERVED} 1"),
    row(
        "fv-spec-changed",
        FV,
        {"conditions": [cond("Ready", "True", "Scheduled", "scheduled")]},
        "Progressing",
        f"{UNOBSERVED} 2",
        change_spec=True,
    ),
    row(
        "fv-backfill",
        FV,
        {
            "conditions": [
                cond("Ready", "False", "Backfilling", "waiting for the backfill"),
                cond("Progressing", "True", "Materializing", "a backfill Job is running"),
            ]
        },
        "Progressing",
        "a backfill Job is running",
    ),
    row(
        "fv-ready",
        FV,
        {
            "conditions": [cond("Ready", "True", "Scheduled", "materializing on '@daily'")],
            "keyspaceVersion": 1,
            "liveKeyspace": "users@1",
        },
        "Healthy",
        "materializing on '@daily'",
    ),
    row(
        "fv-waiting-for-the-first-run",
        FV,
        {
            "conditions": [
                cond("Ready", "False", "NotMaterialized", "no run has made data live yet"),
                cond("Stale", "Unknown", "NotLive", "no data live"),
            ]
        },
        "Progressing",
        "no run has made data live yet",
    ),
    row(
        "fv-stale",
        FV,
        {
            "conditions": [
                cond("Ready", "True", "Scheduled", "materializing on '@daily'"),
                cond("Stale", "True", "PastLimit", "the live data lags past maxStaleness 36h"),
            ],
            "keyspaceVersion": 1,
            "staleness": {
                "watermark": "2026-11-20T00:00:00Z",
                "limitSeconds": 129600.0,
                "staleAfter": "2026-11-21T12:00:00Z",
            },
        },
        "Degraded",
        "the live data lags past maxStaleness 36h",
    ),
    row(
        "fv-degraded",
        FV,
        {
            "conditions": [
                cond("Ready", "True", "Scheduled", "scheduled"),
                cond("Degraded", "True", "JobFailed", "the last run exited 1"),
            ]
        },
        "Degraded",
        "the last run exited 1",
    ),
]


@pytest.fixture(scope="module")
def live(testbed: Testbed) -> Iterator[tuple[Client, str]]:
    """One namespace for all live rows: each row makes its own object in it."""
    install_crds(testbed)
    ns = f"argocd-health-live-{uuid.uuid4().hex[:6]}"
    testbed.kubectl("create", "namespace", ns)
    try:
        yield testbed.client(ns), ns
    finally:
        testbed.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def dropped(written: Any, stored: Any, path: str = "status") -> list[str]:
    """Paths of ``written`` that the API server did not keep (pruned by the schema)."""
    if isinstance(written, dict):
        if not isinstance(stored, dict):
            return [path]
        return [p for k, v in written.items() for p in dropped(v, stored.get(k), f"{path}.{k}")]
    if isinstance(written, list):
        if not isinstance(stored, list) or len(stored) != len(written):
            return [path]
        return [p for i, v in enumerate(written) for p in dropped(v, stored[i], f"{path}[{i}]")]
    return [] if written == stored else [path]


def wire(obj: Any) -> dict[str, Any]:
    """The object as the API server sent it (what Argo CD's controller reads)."""
    return dict(obj.to_dict())


@pytest.mark.testbed
@pytest.mark.parametrize("case", LIVE)
def test_health_of_objects_read_live(
    live: tuple[Client, str], case: Live, request: pytest.FixtureRequest
) -> None:
    client, _ = live
    resource = RESOURCES[case.kind]
    name = request.node.callspec.id
    obj = {"apiVersion": "recsys.dev/v1alpha1", "kind": case.kind, "metadata": {"name": name}}
    created = wire(client.create(resource.from_dict({**obj, "spec": MANIFESTS[case.kind]})))
    generation = created["metadata"]["generation"]
    if case.status is not None:
        status = {"observedGeneration": generation, **copy.deepcopy(case.status)}
        for c in status.get("conditions", []):
            c["observedGeneration"] = generation
        add = [{"op": "add", "path": "/status", "value": status}]
        client.patch(resource.Status, name, add, patch_type=PatchType.JSON)
    if case.change_spec:
        change = {"spec": SPEC_CHANGES[case.kind]}
        client.patch(resource, name, change, patch_type=PatchType.MERGE)
    stored = wire(client.get(resource, name))
    if case.status is not None:
        assert dropped(status, stored.get("status")) == []
    assert argocd_health(case.kind, stored) == (case.health, case.message)


@pytest.mark.testbed
def test_documented_patch_installs_the_scripts_into_argocd_cm(
    testbed: Testbed, live: tuple[Client, str]
) -> None:
    """The README's kubectl command, on a ConfigMap like the one Argo CD installs."""
    _, ns = live
    testbed.kubectl("create", "configmap", "argocd-cm", "-n", ns, "--from-literal=url=https://cd")
    testbed.kubectl("patch", "configmap", "argocd-cm", "-n", ns, "--patch-file", str(PATCH))
    data = json.loads(
        testbed.kubectl("get", "configmap", "argocd-cm", "-n", ns, "-o", "json").stdout
    )["data"]
    assert data.pop("url") == "https://cd"
    assert data == {
        f"resource.customizations.health.recsys.dev_{kind}": script(kind).read_text()
        for kind in KINDS
    }
