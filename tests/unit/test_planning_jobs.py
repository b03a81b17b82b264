"""The Job builders, decided without a cluster: every workload Job the operator makes is
least-privilege, fails fast on bad input, reads its own ConfigMap, belongs to its owner, and
carries the placement the spec asks for (and none it does not). One row per builder and case."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from api_objects import feature_view, model_version, recommender

from recsys_operator.api.featureview import FeatureView
from recsys_operator.api.recommender import Recommender
from recsys_operator.planning import featureview as fv_planner
from recsys_operator.planning.serving import history_job
from recsys_operator.planning.training import FeatureSources, index_job, training_job

IMAGE = "registry.test/recsys-workloads:test"
OWNER = {"apiVersion": "recsys.dev/v1alpha1", "kind": "Recommender",
         "metadata": {"name": "movies", "uid": "u-1"}}  # fmt: skip
MV = model_version("movies-v1", reason="Initial")


def placed(**training: Any) -> Recommender:
    return recommender(training=training)


Built = tuple[dict[str, Any], dict[str, Any]]  # (the Job or CronJob's Job spec, its ConfigMap)


def train(rec: Recommender) -> Built:
    plan = training_job(rec, MV, OWNER, IMAGE, FeatureSources())
    return plan.job, plan.config_map


def index(rec: Recommender) -> Built:
    plan = index_job(rec, MV, OWNER, IMAGE)
    return plan.job, plan.config_map


def history(rec: Recommender) -> Built:
    plan = history_job(rec, OWNER, IMAGE)
    return plan.job, plan.config_map


def materialize(view: FeatureView) -> Built:
    plan = fv_planner.plan(view, OWNER, IMAGE)
    job = {
        "metadata": plan.cron_job["metadata"],
        "spec": plan.cron_job["spec"]["jobTemplate"]["spec"],
    }
    return job, plan.config_map


def backfill(view: FeatureView) -> Built:
    plan = fv_planner.plan(view, OWNER, IMAGE)
    assert plan.backfill_job is not None
    assert plan.backfill_config_map is not None
    return plan.backfill_job, plan.backfill_config_map


BACKFILL = {"backfill": {"startTime": "2026-11-01T00:00:00Z"}}
TOLERATION = {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}
PLACED = placed(nodeSelector={"pool": "gpu"}, tolerations=[TOLERATION],
                priorityClassName="batch-low")  # fmt: skip

CASES: list[tuple[str, Callable[[Any], Built], Any, str]] = [
    ("training", train, recommender(), "recsys_workloads.train"),
    ("index build", index, recommender(), "recsys_workloads.index_build"),
    ("history seeding", history, recommender(), "recsys_workloads.history"),
    ("scheduled materialization", materialize, feature_view(), "recsys_workloads.materialize"),
    ("backfill", backfill, feature_view(**BACKFILL), "recsys_workloads.materialize"),
    ("split materialization", materialize, feature_view(parallelism=4),
     "recsys_workloads.materialize"),
    ("split backfill", backfill, feature_view(parallelism=4, **BACKFILL),
     "recsys_workloads.materialize"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "build", "spec", "module"), CASES)
def test_every_workload_job_is_least_privilege_and_fails_fast_on_bad_input(
    case: str, build: Callable[[Any], Built], spec: Any, module: str
) -> None:
    job, config_map = build(spec)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert module in " ".join(container.get("command", []) + container.get("args", [])), case
    assert container["image"] == IMAGE, case
    assert pod["securityContext"]["runAsNonRoot"] is True, case
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, case
    assert pod["automountServiceAccountToken"] is False, case
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True, case
    assert security["allowPrivilegeEscalation"] is False, case
    assert security["capabilities"] == {"drop": ["ALL"]}, case
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert (rules[0]["action"], rules[0]["onExitCodes"]["values"]) == ("FailJob", [2]), case
    assert {"type": "DisruptionTarget"} in rules[1]["onPodConditions"], case
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"], case
    (ref,) = job["metadata"]["ownerReferences"]
    assert (ref["uid"], ref["controller"]) == ("u-1", True), case
    assert job["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "recsys-operator", case
    assert "config.json" in config_map["data"], case


@pytest.mark.parametrize(
    ("case", "rec", "node_selector", "tolerations", "priority"),
    [
        ("no placement asked, none given", recommender(), None, None, None),
        ("placement asked, all of it given", PLACED, {"pool": "gpu"}, [TOLERATION], "batch-low"),
    ],
)
def test_training_placement_is_exactly_the_spec(
    case: str,
    rec: Recommender,
    node_selector: dict[str, str] | None,
    tolerations: list[dict[str, str]] | None,
    priority: str | None,
) -> None:
    pod = train(rec)[0]["spec"]["template"]["spec"]
    assert pod.get("nodeSelector") == node_selector, case
    assert pod.get("tolerations") == tolerations, case
    assert pod.get("priorityClassName") == priority, case


@pytest.mark.parametrize(
    ("case", "training", "gpu", "indexed", "suspended", "service"),
    [
        ("one CPU pod", {}, None, False, False, False),
        ("one GPU", {"gpusPerNode": 1}, "1", False, False, False),
        ("two nodes: an Indexed Job and its rendezvous Service",
         {"numNodes": 2, "gpusPerNode": 2}, "2", True, False, True),
        ("a Kueue queue: created suspended for Kueue to admit", {"queueName": "team-a"},
         None, False, True, False),
    ],
)  # fmt: skip
def test_training_job_shape(
    case: str, training: dict[str, Any], gpu: str | None, indexed: bool, suspended: bool,
    service: bool,
) -> None:  # fmt: skip
    plan = training_job(placed(**training), MV, OWNER, IMAGE, FeatureSources())
    spec = plan.job["spec"]
    limits = spec["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})
    assert limits.get("nvidia.com/gpu") == gpu, case
    assert (spec.get("completionMode") == "Indexed") is indexed, case
    assert bool(spec.get("suspend")) is suspended, case
    assert (plan.service is not None) is service, case


def test_a_new_backfill_window_is_a_new_job_and_the_same_window_the_same_job() -> None:
    def name(start: str) -> str:
        return backfill(feature_view(backfill={"startTime": start}))[0]["metadata"]["name"]

    assert name("2026-11-01T00:00:00Z") == name("2026-11-01T00:00:00Z")
    assert name("2026-11-01T00:00:00Z") != name("2026-11-02T00:00:00Z")


UID_LABEL = "metadata.labels['batch.kubernetes.io/controller-uid']"
RUN_ID = {"name": "RECSYS_RUN_ID", "valueFrom": {"fieldRef": {"fieldPath": UID_LABEL}}}


@pytest.mark.parametrize(
    ("case", "build", "materialization", "indexed", "shards"),
    [
        ("one pod by default: a plain Job", materialize, {}, False, None),
        ("parallelism 1 renders as the default", materialize, {"parallelism": 1}, False, None),
        ("parallelism 4: an Indexed Job of 4 pods at once", materialize, {"parallelism": 4},
         True, 4),
        ("the backfill is split the same way", backfill, {"parallelism": 3, **BACKFILL}, True, 3),
    ],
)  # fmt: skip
def test_materialization_job_shape(
    case: str,
    build: Callable[[FeatureView], Built],
    materialization: dict[str, Any],
    indexed: bool,
    shards: int | None,
) -> None:
    job, config_map = build(feature_view(**materialization))
    spec = job["spec"]
    (container,) = spec["template"]["spec"]["containers"]
    config = json.loads(config_map["data"]["config.json"])
    assert config.get("shards") == shards, case
    assert (RUN_ID in container["env"]) is indexed, case
    if indexed:
        assert spec["completionMode"] == "Indexed", case
        assert (spec["completions"], spec["parallelism"]) == (shards, shards), case
    else:
        assert not {"completionMode", "completions", "parallelism"} & set(spec), case
    assert spec["backoffLimit"] == 3, case


def test_parallelism_1_renders_exactly_as_without_the_field() -> None:
    assert fv_planner.plan(feature_view(parallelism=1), OWNER, IMAGE) == fv_planner.plan(
        feature_view(), OWNER, IMAGE
    )


@pytest.mark.parametrize("parallelism", [0, 65])
def test_parallelism_out_of_range_is_refused_naming_the_field(parallelism: int) -> None:
    with pytest.raises(ValueError, match="parallelism"):
        feature_view(parallelism=parallelism)
