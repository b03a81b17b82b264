"""``pvc://CLAIM/path``: every pod whose config names a claim mounts it at /mnt/pvc/CLAIM (where
``recsys_workloads.pvc`` reads it), read-only for the pods that only read, and a pod whose
config names none mounts nothing. One row per planner and store layout."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from api_objects import feature_view, model_version, recommender

from recsys_operator.api.common import LocalObjectRef
from recsys_operator.api.featureview import FeatureView
from recsys_operator.api.recommender import Recommender
from recsys_operator.planning import drift, logjoin, serving
from recsys_operator.planning import featureview as fv_planner
from recsys_operator.planning.pods import claim_volume_name, claims_in
from recsys_operator.planning.rollout import Routing
from recsys_operator.planning.training import (
    FeatureSources,
    index_config,
    index_job,
    training_job,
)
from recsys_workloads.pvc import PvcFileSystem

OWNER = {"apiVersion": "recsys.dev/v1alpha1", "kind": "Recommender",
         "metadata": {"name": "movies", "uid": "u-1"}}  # fmt: skip
MV = model_version("movies-v1", reason="Initial")
IMG = "img"


def rec(artifacts: str, interactions: str = "s3://d/i/") -> Recommender:
    return recommender(
        interactions={"path": interactions},
        stores={"redis": {"url": "redis://r:6379/0"}, "artifacts": {"storageUri": artifacts}},
        drift={"schedule": "0 * * * *"},
    )


def pod_of(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj["spec"]
    if obj["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    pod: dict[str, Any] = spec["template"]["spec"]
    return pod


# Each builder returns (pod spec, the names of the containers that read or write the store).
Builder = Callable[[Any], tuple[dict[str, Any], list[str]]]


def train(r: Recommender) -> tuple[dict[str, Any], list[str]]:
    return pod_of(training_job(r, MV, OWNER, IMG, FeatureSources()).job), ["main"]


def index(r: Recommender) -> tuple[dict[str, Any], list[str]]:
    return pod_of(index_job(r, MV, OWNER, IMG).job), ["main"]


def history(r: Recommender) -> tuple[dict[str, Any], list[str]]:
    return pod_of(serving.history_job(r, OWNER, IMG).job), ["main"]


def log_join(r: Recommender) -> tuple[dict[str, Any], list[str]]:
    return pod_of(logjoin.logjoin_objects(r, OWNER, IMG)[1]), ["main"]


def drift_check(r: Recommender) -> tuple[dict[str, Any], list[str]]:
    uri = f"{r.spec.stores.artifacts.storage_uri}/models/v1"
    return pod_of(drift.drift_objects(r, OWNER, IMG, "v1", uri)[1]), ["main"]


def triton(r: Recommender) -> tuple[dict[str, Any], list[str]]:
    uri = f"{r.spec.stores.artifacts.storage_uri}/models/v1"
    return pod_of(serving.triton_objects(r, OWNER, "v1", uri, IMG, IMG)[1]), ["repository"]


def gateway(r: Recommender) -> tuple[dict[str, Any], list[str]]:
    base = r.spec.stores.artifacts.storage_uri
    table = serving.routing_table(r, Routing("v1", None, 0), {"v1": f"{base}/indexes/v1"})
    return pod_of(serving.gateway_objects(r, OWNER, table, IMG, {})[1]), ["gateway"]


def materialize(view: FeatureView) -> tuple[dict[str, Any], list[str]]:
    return pod_of(fv_planner.plan(view, OWNER, IMG).cron_job), ["main"]


def with_source(view: FeatureView, **update: Any) -> FeatureView:
    source = view.spec.source.model_copy(update=update)
    return view.model_copy(update={"spec": view.spec.model_copy(update={"source": source})})


def source_view(path: str) -> FeatureView:
    return with_source(feature_view(), path=path)


ON_PVC = rec("pvc://models/recsys/movies")
ON_S3 = rec("s3://m/")
#: writers mount read-write; every other pod only reads
CASES: list[tuple[str, Builder, Any, list[str], bool]] = [
    ("training writes the model", train, ON_PVC, ["models"], False),
    ("training reads pvc interactions too", train,
     rec("pvc://models/m", "pvc://data/interactions/"), ["data", "models"], False),
    ("index build writes the index", index, ON_PVC, ["models"], False),
    ("the log join writes its rows", log_join, ON_PVC, ["models"], False),
    ("history seeding reads interactions", history,
     rec("s3://m/", "pvc://data/interactions/"), ["data"], True),
    ("history seeding, interactions on s3", history, ON_PVC, [], True),
    ("the drift check reads the artifact", drift_check, ON_PVC, ["models"], True),
    ("Triton's init container reads the artifact", triton, ON_PVC, ["models"], True),
    ("the gateway reads the index", gateway, ON_PVC, ["models"], True),
    ("materialization reads a pvc source", materialize, source_view("pvc://data/users/"),
     ["data"], True),
    ("materialization, source on s3", materialize, feature_view(), [], True),
    ("training on s3 mounts nothing", train, ON_S3, [], False),
    ("the gateway on s3 mounts nothing", gateway, ON_S3, [], True),
]  # fmt: skip


@pytest.mark.parametrize(("case", "build", "spec", "claims", "read_only"), CASES)
def test_each_pod_mounts_the_claims_its_config_names(
    case: str, build: Builder, spec: Any, claims: list[str], read_only: bool
) -> None:
    pod, users = build(spec)
    pvc_volumes = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert sorted(pvc_volumes.values()) == claims, case
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        mounts = {m["mountPath"]: m for m in container["volumeMounts"] if m["name"] in pvc_volumes}
        if container["name"] not in users:
            assert mounts == {}, (case, container["name"])  # Triton reads only its repository
            continue
        assert sorted(mounts) == [f"/mnt/pvc/{c}" for c in claims], case
        for claim in claims:
            mount = mounts[f"/mnt/pvc/{claim}"]
            assert mount["name"] == claim_volume_name(claim), case
            assert mount.get("readOnly", False) is read_only, case
    names = [v["name"] for v in pod["volumes"]]
    assert len(names) == len(set(names)), case


def test_the_gateway_gets_the_artifact_store_secret() -> None:
    """It loads each variant's index from the store, so it needs the same keys as the Jobs."""
    r = recommender(
        stores={
            "redis": {"url": "redis://r:6379/0"},
            "artifacts": {"storageUri": "s3://m/", "secretRef": {"name": "artifact-store"}},
        }
    )
    table = serving.routing_table(r, Routing("v1", None, 0), {"v1": "s3://m/indexes/v1"})
    pod = pod_of(serving.gateway_objects(r, OWNER, table, IMG, {})[1])
    assert pod["containers"][0]["envFrom"] == [{"secretRef": {"name": "artifact-store"}}]
    # without a Secret no envFrom at all (an empty list would differ from what the apiserver
    # hands back, and the Deployment would be rewritten on every reconcile)
    pod = pod_of(serving.gateway_objects(ON_S3, OWNER, table, IMG, {})[1])
    assert "envFrom" not in pod["containers"][0]


BACKFILL: dict[str, Any] = {"backfill": {"startTime": "2024-01-01T00:00:00Z"}}


@pytest.mark.parametrize(
    ("case", "view", "env_from"),
    [
        ("the source's Secret", with_source(feature_view(**BACKFILL),
         secret_ref=LocalObjectRef(name="artifact-store")),
         [{"secretRef": {"name": "artifact-store"}}]),
        ("no Secret, no envFrom", feature_view(**BACKFILL), None),
    ],
)  # fmt: skip
def test_materialization_gets_the_secret_its_source_names(
    case: str, view: FeatureView, env_from: list[dict[str, Any]] | None
) -> None:
    """The Jobs read the source themselves, so they need its store's keys; without a Secret
    no envFrom at all, as for the gateway."""
    planned = fv_planner.plan(view, OWNER, IMG)
    assert planned.backfill_job is not None, case
    for obj in (planned.cron_job, planned.backfill_job):
        (container,) = pod_of(obj)["containers"]
        assert container.get("envFrom") == env_from, (case, obj["kind"])


@pytest.mark.parametrize(
    ("uri", "claim_dir"),
    [
        ("pvc://models/recsys/v1/manifest.json", "/models/recsys/v1/manifest.json"),
        ("pvc://models", "/models"),
        ("pvc://my.claim-2/a/", "/my.claim-2/a"),
    ],
)
def test_the_workloads_map_a_uri_below_the_mount_the_operator_made(
    uri: str, claim_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RECSYS_PVC_ROOT", raising=False)
    assert PvcFileSystem._strip_protocol(uri) == "/mnt/pvc" + claim_dir
    monkeypatch.setenv("RECSYS_PVC_ROOT", "/elsewhere")
    assert PvcFileSystem._strip_protocol(uri) == "/elsewhere" + claim_dir


def test_claims_are_read_off_every_string_of_a_config() -> None:
    r = rec("pvc://b/m", "pvc://a/i/")
    cfg = serving.history_config(r)
    assert claims_in(cfg) == ["a"]
    assert claims_in(index_config(r, MV)) == ["b"]
