"""ModelVersion lifecycle and Recommender serving on the real control plane, with the test
playing the training and index workloads through their termination messages."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest
import redis
import yaml

from fixtures.kube import Testbed
from fixtures.operator import (
    TEST_IMAGES,
    OperatorProcess,
    condition,
    eventually,
    finish_pod,
    get,
)
from recsys_contract.index import FeatureSchema, IndexSummary, SchemaFeature
from recsys_contract.train import (
    FINAL,
    Lineage,
    LoggedLineage,
    TrainSummary,
    WarmStartLineage,
    served_metric,
)

pytestmark = pytest.mark.testbed

STACK = """
apiVersion: recsys.dev/v1alpha1
kind: FeatureView
metadata: {name: users}
spec:
  entity: {name: user, joinKeys: [user_id]}
  source: {path: "s3://data/users/"}
  features: [{name: age, dtype: Int64}]
  onlineStore: {redis: {url: "redis://redis:6379/0"}}
  materialization: {cronJob: {schedule: "@daily"}}
---
apiVersion: recsys.dev/v1alpha1
kind: Recommender
metadata: {name: movies}
spec:
  interactions: {path: "s3://data/interactions/"}
  featureViews: {user: [{name: users}]}
  training:
    gpusPerNode: 1
    nodeSelector: {node-pool: gpu}
    evaluation:
      k: 20
      metrics: [{name: recallAtK, thresholdRange: {min: 0.05}, maxRegression: 0.05}]
  serving:
    triton: {replicas: 1}
    gateway: {replicas: 1}
  stores:
    redis: {url: "redis://redis:6379/0"}
    artifacts: {storageUri: "s3://models/movies"}
"""


#: The Recommender's Redis, a real one per test: the operator publishes the routing table
#: there and reads the gateways' heartbeats and counters from it.
ONLINE_STORE: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _online_store(redis_url: str) -> None:
    ONLINE_STORE["url"] = redis_url


def apply_stack(testbed: Testbed, ns: str, edit: Any = None) -> list[dict[str, Any]]:
    docs = list(yaml.safe_load_all(STACK))
    if "url" in ONLINE_STORE:
        docs[1]["spec"]["stores"]["redis"]["url"] = ONLINE_STORE["url"]
    if edit:
        edit(docs)
    for doc in docs:
        testbed.kubectl("apply", "--server-side", "-n", ns, "-f", "-", input=json.dumps(doc))
    return docs


def phase(testbed: Testbed, ns: str, name: str) -> str | None:
    obj = get(testbed, "modelversion", name, ns)
    return (obj or {}).get("status", {}).get("phase")


def overview(testbed: Testbed, ns: str) -> str:
    """Phases of every version and the Recommender's serving status, for failure messages."""
    mvs = json.loads(testbed.kubectl("get", "mv", "-n", ns, "-o", "json").stdout)["items"]
    phases = {m["metadata"]["name"]: m.get("status", {}).get("phase") for m in mvs}
    rec = get(testbed, "recommender", "movies", ns) or {}
    return f"versions {phases}; rollout {rec.get('status', {}).get('rollout')}"


def rollout(testbed: Testbed, ns: str) -> dict[str, Any]:
    rec = get(testbed, "recommender", "movies", ns) or {}
    return rec.get("status", {}).get("rollout") or {}


def wait_rollout(
    testbed: Testbed, ns: str, operator: OperatorProcess, **want: Any
) -> dict[str, Any]:
    """Wait until the Recommender's status.rollout holds every ``want`` field."""

    def holds() -> dict[str, Any] | None:
        ro = rollout(testbed, ns)
        return ro if all(ro.get(k) == v for k, v in want.items()) else None

    try:
        return eventually(holds, 60, f"rollout {want}", operator=operator)  # type: ignore[no-any-return]
    except AssertionError as exc:
        raise AssertionError(f"{overview(testbed, ns)}\n{exc}") from None


def wait_phase(
    testbed: Testbed, ns: str, name: str, want: str, operator: OperatorProcess
) -> dict[str, Any]:
    try:
        eventually(
            lambda: phase(testbed, ns, name) == want, 60, f"{name} {want}", operator=operator
        )
    except AssertionError as exc:
        raise AssertionError(f"{overview(testbed, ns)}\n{exc}") from None
    return get(testbed, "modelversion", name, ns)  # type: ignore[return-value]


def event_reasons(testbed: Testbed, ns: str, name: str) -> list[str]:
    """Reasons of the Events on ModelVersion ``name``, oldest first."""
    events = json.loads(
        testbed.kubectl(
            "get",
            "events",
            "-n",
            ns,
            "--field-selector",
            f"involvedObject.kind=ModelVersion,involvedObject.name={name}",
            "-o",
            "json",
        ).stdout
    )["items"]
    # Timestamps have second resolution; etcd's revision orders writes (the testbed's etcd).
    events.sort(key=lambda e: int(e["metadata"]["resourceVersion"]))
    return [e["reason"] for e in events]


def train_summary(version: str, recall: float, lineage: Lineage | None = None) -> dict[str, Any]:
    """What the training Job of ``version`` writes (``recsys_contract.train``)."""
    summary = TrainSummary(
        version=version,
        artifact_uri=f"s3://models/movies/models/{version}",
        digest="sha256:" + "a" * 64,
        # The flat headline metrics the training Job reports (train.export.headline_metrics).
        metrics={
            "twoTower.recall@20": recall,
            "twoTower.ndcg@20": recall / 2,
            "als.recall@20": 0.11,
            "ranker.ranking.auc": 0.8,
            # the end-to-end lists the default gate compares: the served one above popularity
            served_metric(FINAL, "ndcg@20"): recall * 0.6,
            served_metric(FINAL, "ndcg@20.se"): 0.004,
            "popularity.ndcg@20": 0.05,
        },
        **({"lineage": lineage} if lineage else {}),
    )
    return {"status": "Succeeded", **summary.to_wire()}


def index_summary(version: str, features: FeatureSchema | None = None) -> dict[str, Any]:
    """What the index build Job of ``version`` writes (``recsys_contract.index``)."""
    summary = IndexSummary(
        **({"features": features} if features else {}),
        version=version,
        index_uri=f"s3://models/movies/indexes/{version}",
        digest="sha256:" + "b" * 64,
        item_count=100,
        index_type="hnsw",
        ef_search=128,
        recall=0.99,
        k=10,
        model_digest="sha256:" + "a" * 64,
    )
    return {"status": "Succeeded", **summary.to_wire()}


def walk_to_ready(
    testbed: Testbed, ns: str, version: str, recall: float, operator: OperatorProcess
) -> None:
    wait_phase(testbed, ns, version, "Training", operator)
    finish_pod(testbed, ns, f"{version}-train", exit_code=0, summary=train_summary(version, recall))
    wait_phase(testbed, ns, version, "Indexing", operator)
    finish_pod(testbed, ns, f"{version}-index", exit_code=0, summary=index_summary(version))


def test_first_version_trains_indexes_and_serves(
    testbed: Testbed, namespace: str, operator: OperatorProcess
) -> None:
    apply_stack(testbed, namespace)
    mv = wait_phase(testbed, namespace, "movies-v1", "Training", operator)
    assert mv["spec"] == {"recommenderRef": {"name": "movies"}, "reason": "Initial"}
    job = get(testbed, "job", "movies-v1-train", namespace)
    assert job is not None
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"node-pool": "gpu"}
    assert job["metadata"]["ownerReferences"][0]["name"] == "movies-v1"
    config = json.loads(
        get(testbed, "configmap", "movies-v1-train", namespace)["data"][  # type: ignore[index]
            "config.json"
        ]
    )
    mv1 = get(testbed, "modelversion", "movies-v1", namespace) or {}
    created = mv1["metadata"]["creationTimestamp"]
    assert config["data"] == {
        "interactionsUri": "s3://data/interactions/",
        "usersUri": "s3://data/users/",
        # the logged rows joined before the version was created (spec.training.loggedData)
        "loggedUri": "s3://models/movies/logged",
        "loggedUntil": created,
    }
    assert config["artifactUri"] == "s3://models/movies/models/movies-v1"

    walk_to_ready(testbed, namespace, "movies-v1", 0.12, operator)
    mv = wait_phase(testbed, namespace, "movies-v1", "Ready", operator)
    wait_rollout(testbed, namespace, operator, stable="movies-v1", phase="Healthy")
    assert mv["status"]["evaluation"]["recallAtK"] == pytest.approx(0.12)
    assert mv["status"]["metrics"]["als.recall@20"] == pytest.approx(0.11)
    assert mv["status"]["indexName"] == "s3://models/movies/indexes/movies-v1"
    for stage in ("Trained", "Evaluated", "Indexed"):
        assert (condition(mv, stage) or {}).get("status") == "True", stage
    # the gate judged it in a phase of its own, between training and indexing
    phases = [
        r
        for r in event_reasons(testbed, namespace, "movies-v1")
        if r in ("Training", "Evaluating", "Indexing", "Ready")
    ]
    assert phases == ["Training", "Evaluating", "Indexing", "Ready"]

    def rec_ready() -> dict[str, Any] | None:
        rec = get(testbed, "recommender", "movies", namespace)
        cond = condition(rec, "Ready")
        return rec if cond and cond["status"] == "True" else None

    rec = eventually(rec_ready, 90, "Recommender Ready", operator=operator)
    assert rec["status"]["rollout"]["stable"] == "movies-v1"
    assert rec["status"]["activeIndex"] == "s3://models/movies/indexes/movies-v1"
    triton = get(testbed, "deployment", "movies-triton-movies-v1", namespace)
    assert triton is not None
    # the version's model repository is built from its artifact by an init container
    pod = triton["spec"]["template"]["spec"]
    (builder,) = pod["initContainers"]
    assert builder["image"] == TEST_IMAGES["RECSYS_TRAINER_IMAGE"]
    assert builder["command"] == ["python", "-m", "recsys_workloads.serving.repository"]
    assert builder["securityContext"]["allowPrivilegeEscalation"] is False
    assert "--model-repository=/models" in pod["containers"][0]["args"]
    build = json.loads(
        get(testbed, "configmap", "movies-triton-movies-v1", namespace)["data"][  # type: ignore[index]
            "config.json"
        ]
    )
    assert build == {
        "artifactUri": mv["status"]["artifactUri"],
        "repositoryUri": "/models",
        "maxBatchSize": 64,
        "device": "cpu",
    }
    # the users' histories are seeded from the interactions for the gateway, once
    (history,) = json.loads(
        testbed.kubectl(
            "get",
            "jobs",
            "-n",
            namespace,
            "-l",
            "app.kubernetes.io/component=history",
            "-o",
            "json",
        ).stdout
    )["items"]
    assert history["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "python",
        "-m",
        "recsys_workloads.history",
    ]
    seeding = json.loads(
        get(testbed, "configmap", history["metadata"]["name"], namespace)[  # type: ignore[index]
            "data"
        ]["config.json"]
    )
    assert seeding == {
        "recommender": f"{namespace}.movies",
        "interactionsUri": "s3://data/interactions/",
        "onlineStore": {"redisUrl": ONLINE_STORE["url"]},
    }
    routing = json.loads(
        get(testbed, "configmap", "movies-gateway", namespace)["data"][  # type: ignore[index]
            "gateway.json"
        ]
    )["routing"]
    assert routing["stable"]["modelVersion"] == "movies-v1"
    # the same table in Redis, where the gateways poll it
    published = redis.Redis.from_url(ONLINE_STORE["url"]).get(f"recsys:{namespace}.movies:routing")
    assert published is not None
    assert json.loads(published)["stable"]["modelVersion"] == "movies-v1"
    testbed.kubectl(
        "wait", "-n", namespace, "--for=condition=Ready", "recommender/movies", "--timeout=10s"
    )


def test_removed_serving_fields_leave_the_deployments(
    testbed: Testbed, namespace: str, operator: OperatorProcess
) -> None:
    """Every optional pod field of the serving spec, set and then removed, leaves the Triton
    and gateway Deployments (server-side apply of the full intent under one field manager)."""
    placement = {
        "resources": {"limits": {"memory": "3Gi"}, "requests": {"cpu": "250m"}},
        "nodeSelector": {"node-pool": "serving"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
    }

    def with_placement(docs: list[dict[str, Any]]) -> None:
        docs[1]["spec"]["serving"]["triton"].update(placement)
        docs[1]["spec"]["serving"]["gateway"].update(placement)

    apply_stack(testbed, namespace, with_placement)
    walk_to_ready(testbed, namespace, "movies-v1", 0.12, operator)
    names = ("movies-triton-movies-v1", "movies-gateway")

    def pods() -> list[dict[str, Any]]:
        deps = [get(testbed, "deployment", n, namespace) or {} for n in names]
        return [d.get("spec", {}).get("template", {}).get("spec", {}) for d in deps]

    def placed(pod: dict[str, Any]) -> bool:
        return (
            pod.get("nodeSelector") == placement["nodeSelector"]
            and bool(pod.get("tolerations"))
            and pod["containers"][0].get("resources", {}).get("limits", {}).get("memory") == "3Gi"
        )

    eventually(lambda: all(placed(p) for p in pods()), 60, "placed as asked", operator=operator)
    apply_stack(testbed, namespace)  # the same manager, without the placement fields

    def cleared(pod: dict[str, Any]) -> bool:
        return (
            "nodeSelector" not in pod
            and "tolerations" not in pod
            and not pod["containers"][0].get("resources")
        )

    eventually(lambda: all(cleared(p) for p in pods()), 60, "fields removed", operator=operator)


def test_an_autoscaler_owns_the_gateway_pods_and_a_budget_guards_drains(
    testbed: Testbed, namespace: str, operator: OperatorProcess
) -> None:
    """serving.gateway: three fixed pods get a PodDisruptionBudget the disruption controller
    judges; autoscaling takes the count over without a drop (the count is handed over, not
    removed and defaulted to one), the real HPA controller then moves it and the operator
    never puts it back; removing autoscaling at one pod removes the HPA and the budget."""
    gw = "movies-gateway"
    cpu = {"requests": {"cpu": "250m"}}

    def gateway(spec: dict[str, Any]) -> Any:
        def edit(docs: list[dict[str, Any]]) -> None:
            docs[1]["spec"]["serving"]["gateway"] = spec

        return edit

    def replicas() -> int | None:
        return ((get(testbed, "deployment", gw, namespace) or {}).get("spec") or {}).get("replicas")

    def owners_of_replicas() -> set[str]:
        out = testbed.kubectl(
            "get", "deployment", gw, "-n", namespace, "-o", "json", "--show-managed-fields"
        )
        dep = json.loads(out.stdout)
        return {
            m["manager"]
            for m in dep.get("metadata", {}).get("managedFields", [])
            if "f:replicas" in (m.get("fieldsV1", {}).get("f:spec") or {})
        }

    apply_stack(testbed, namespace, gateway({"replicas": 3}))
    walk_to_ready(testbed, namespace, "movies-v1", 0.12, operator)
    eventually(lambda: replicas() == 3, 60, "three gateway pods", operator=operator)
    # kwok runs the pods Ready; the disruption controller allows one eviction of three
    budget = eventually(
        lambda: (
            pdb
            if (pdb := get(testbed, "pdb", gw, namespace))
            and (pdb.get("status") or {}).get("disruptionsAllowed") == 1
            and pdb["status"].get("expectedPods") == 3
            else None
        ),
        90,
        "a budget that allows one disruption of three pods",
        operator=operator,
    )
    assert budget["spec"]["maxUnavailable"] == 1
    assert get(testbed, "hpa", gw, namespace) is None

    # autoscaling from 2 to 4: the three pods stay (the count is within the bounds and the
    # HPA has no metrics here), and the operator no longer owns the count
    auto = {"replicas": 3, "resources": cpu, "autoscaling": {"minReplicas": 2, "maxReplicas": 4}}
    apply_stack(testbed, namespace, gateway(auto))
    hpa = eventually(lambda: get(testbed, "hpa", gw, namespace), 60, "the HPA", operator=operator)
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 4)
    assert hpa["spec"]["scaleTargetRef"]["name"] == gw
    eventually(
        lambda: owners_of_replicas() == {"recsys-operator-handover"},
        60,
        "the count handed over",
        operator=operator,
    )
    dep = get(testbed, "deployment", gw, namespace)
    assert dep is not None
    assert dep["spec"]["replicas"] == 3, "turning autoscaling on dropped pods"
    assert dep["spec"]["template"]["spec"]["containers"][0]["resources"] == cpu

    # the HPA controller (kube-controller-manager) raises the count to a new floor; a later
    # change the operator applies to the Deployment leaves the count where the HPA put it
    auto["autoscaling"] = {"minReplicas": 4, "maxReplicas": 5}
    apply_stack(testbed, namespace, gateway(auto))
    eventually(lambda: replicas() == 4, 90, "the HPA scaled to its floor", operator=operator)
    assert owners_of_replicas() == {"kube-controller-manager"}, owners_of_replicas()
    auto["resources"] = more = {"requests": {"cpu": "300m"}}

    def resized() -> bool:
        dep = get(testbed, "deployment", gw, namespace)
        return (
            bool(dep)
            and dep["spec"]["template"]["spec"]["containers"][0].get(  # type: ignore[index]
                "resources"
            )
            == more
        )

    apply_stack(testbed, namespace, gateway(auto))
    eventually(resized, 60, "the new CPU request applied", operator=operator)
    assert replicas() == 4, "the operator put its own count back"

    # back to one fixed pod: the HPA and the budget go, the operator owns the count again
    apply_stack(testbed, namespace, gateway({"replicas": 1}))
    eventually(
        lambda: (
            get(testbed, "hpa", gw, namespace) is None
            and get(testbed, "pdb", gw, namespace) is None
            and replicas() == 1
        ),
        60,
        "HPA and budget removed, one pod",
        operator=operator,
    )
    assert owners_of_replicas() == {"recsys-operator"}


def drift_summary(drifted: bool) -> dict[str, Any]:
    """What the drift check workload reports (recsys_contract.drift.DriftSummary)."""
    age = {"name": "user.age", "value": 0.34 if drifted else 0.01, "drifted": drifted}
    return {"status": "Succeeded", "judged": True, "drifted": drifted, "method": "PSI",
            "threshold": 0.2, "features": [age],
            "driftedFeatures": ["user.age"] if drifted else []}  # fmt: skip


def test_drift_checks_report_and_two_in_a_row_retrain(
    testbed: Testbed, namespace: str, operator: OperatorProcess
) -> None:
    """The drift CronJob checks the stable version; each finished check reaches status once;
    two drifted checks in a row make one ModelVersion with reason Drift, warm-started from
    the stable (spec.training.warmStart), its lineage in status; dropping spec.drift
    removes the CronJob."""

    def with_drift(docs: list[dict[str, Any]]) -> None:
        # a schedule that does not fire in the test: the test starts each check itself
        docs[1]["spec"]["drift"] = {"schedule": "0 0 1 1 *", "consecutiveChecks": 2}
        docs[1]["spec"]["training"]["warmStart"] = {"enabled": True, "window": "72h", "epochs": 2}

    apply_stack(testbed, namespace, with_drift)
    walk_to_ready(testbed, namespace, "movies-v1", 0.12, operator)
    eventually(lambda: get(testbed, "cronjob", "movies-drift", namespace), 60,
               "the drift CronJob", operator=operator)  # fmt: skip
    config = json.loads(
        get(testbed, "configmap", "movies-drift", namespace)["data"][  # type: ignore[index]
            "config.json"
        ]
    )
    assert (config["modelVersion"], config["modelArtifactUri"]) == (
        "movies-v1", "s3://models/movies/models/movies-v1")  # fmt: skip

    def drift_status() -> dict[str, Any]:
        rec = get(testbed, "recommender", "movies", namespace) or {}
        return dict(rec.get("status", {}).get("drift") or {})

    for n, drifted in ((1, True), (2, True)):
        job = f"movies-drift-manual-{n}"
        testbed.kubectl("create", "job", "--from=cronjob/movies-drift", job, "-n", namespace)
        finish_pod(testbed, namespace, job, exit_code=0, summary=drift_summary(drifted))
        st = eventually(
            lambda job=job: drift_status().get("lastCheckJob") == job and drift_status(),  # type: ignore[misc]
            60, f"{job} counted", operator=operator,
        )  # fmt: skip
        assert st["consecutiveBreaches"] == n
        assert st["driftedFeatures"] == ["user.age"]
        drifted_cond = condition(get(testbed, "recommender", "movies", namespace), "Drifted")
        assert drifted_cond is not None
        assert drifted_cond["status"] == "True"
        assert "user.age (0.340)" in drifted_cond["message"]
        if n == 1:
            assert get(testbed, "modelversion", "movies-v2", namespace) is None
    mv = wait_phase(testbed, namespace, "movies-v2", "Training", operator)
    assert mv["spec"]["reason"] == "Drift"
    assert mv["metadata"]["annotations"]["recsys.dev/trigger"] == "drift/movies-drift-manual-2"
    assert mv["metadata"]["annotations"]["recsys.dev/warm-start-from"] == "movies-v1"
    # the pending trigger leaves status once its version exists; the cooldown counts from here
    eventually(lambda: "retrainTrigger" not in drift_status(), 30, "the trigger cleared",
               operator=operator)  # fmt: skip
    assert "lastActionTime" in drift_status()
    mvs = json.loads(testbed.kubectl("get", "mv", "-n", namespace, "-o", "json").stdout)["items"]
    assert len(mvs) == 2, "one retraining for the drift, not one per pass"
    # the drift retrain starts from the serving version's artifact; the Initial one was cold
    configs = {
        v: json.loads(get(testbed, "configmap", f"{v}-train", namespace)["data"]["config.json"])  # type: ignore[index]
        for v in ("movies-v1", "movies-v2")
    }
    assert "warmStart" not in configs["movies-v1"]
    assert configs["movies-v2"]["warmStart"] == {
        "artifactUri": "s3://models/movies/models/movies-v1", "version": "movies-v1",
        "digest": "sha256:" + "a" * 64, "windowSeconds": 259200.0, "epochs": 2,
    }  # fmt: skip
    warm = WarmStartLineage(
        from_version="movies-v1", from_uri="s3://models/movies/models/movies-v1",
        from_digest="sha256:" + "a" * 64, applied=True, since="2024-01-20T00:00:00Z",
        until="2024-01-23T00:00:00Z", interactions=900, carried_users=80, new_users=5,
    )  # fmt: skip
    lineage = Lineage(interactions_uri="s3://data/interactions/", interactions=5000,
                      warm_start=warm)  # fmt: skip
    finish_pod(testbed, namespace, "movies-v2-train", exit_code=0,
               summary=train_summary("movies-v2", 0.12, lineage))  # fmt: skip
    mv2 = wait_phase(testbed, namespace, "movies-v2", "Indexing", operator)
    assert mv2["status"]["lineage"]["warmStart"] == {
        "fromVersion": "movies-v1", "fromUri": "s3://models/movies/models/movies-v1",
        "fromDigest": "sha256:" + "a" * 64, "applied": True,
        "since": "2024-01-20T00:00:00Z", "until": "2024-01-23T00:00:00Z",
        "interactions": 900, "carriedUsers": 80, "newUsers": 5, "carriedItems": 0,
        "newItems": 0,
    }  # fmt: skip

    apply_stack(testbed, namespace)  # without spec.drift
    eventually(lambda: get(testbed, "cronjob", "movies-drift", namespace) is None, 60,
               "the drift CronJob removed", operator=operator)  # fmt: skip


def test_a_serving_recommender_joins_its_log_and_trains_on_it(
    testbed: Testbed, namespace: str, operator: OperatorProcess
) -> None:
    """Training reads the logged rows joined before its version was created; its lineage
    reaches the version's status; once the Recommender serves, the log-join CronJob runs;
    turning loggedData off removes it."""
    apply_stack(testbed, namespace)
    mv = wait_phase(testbed, namespace, "movies-v1", "Training", operator)
    train_cfg = json.loads(
        get(testbed, "configmap", "movies-v1-train", namespace)["data"][  # type: ignore[index]
            "config.json"
        ]
    )
    created = mv["metadata"]["creationTimestamp"]
    assert train_cfg["data"]["loggedUri"] == "s3://models/movies/logged"
    assert train_cfg["data"]["loggedUntil"] == created
    assert get(testbed, "cronjob", "movies-logjoin", namespace) is None  # nothing serves yet
    lineage = Lineage(
        interactions_uri="s3://data/interactions/",
        interactions=1000,
        logged=LoggedLineage(
            uri="s3://models/movies/logged", until=created, partitions=["date=2026-01-02"],
            files=1, rows=40, interactions=3, served_features=True,
        ),
    )  # fmt: skip
    finish_pod(
        testbed, namespace, "movies-v1-train", exit_code=0,
        summary=train_summary("movies-v1", 0.12, lineage),
    )  # fmt: skip
    mv = wait_phase(testbed, namespace, "movies-v1", "Indexing", operator)
    assert mv["status"]["lineage"]["logged"] == {
        "uri": "s3://models/movies/logged", "until": created, "partitions": ["date=2026-01-02"],
        "partitionCount": 1, "files": 1, "rows": 40, "interactions": 3, "servedFeatures": True,
    }  # fmt: skip
    assert mv["status"]["lineage"]["interactions"] == 1000
    finish_pod(
        testbed, namespace, "movies-v1-index", exit_code=0, summary=index_summary("movies-v1")
    )
    cron = eventually(lambda: get(testbed, "cronjob", "movies-logjoin", namespace), 60,
                      "the log-join CronJob", operator=operator)  # fmt: skip
    assert (cron["spec"]["schedule"], cron["spec"]["concurrencyPolicy"]) == (
        "*/15 * * * *",
        "Forbid",
    )
    config = json.loads(
        get(testbed, "configmap", "movies-logjoin", namespace)["data"][  # type: ignore[index]
            "config.json"
        ]
    )
    assert config["outputUri"] == "s3://models/movies/logged"
    assert config["recommender"] == f"{namespace}.movies"
    assert config["waitSeconds"] == 1800

    def without_logged_data(docs: list[dict[str, Any]]) -> None:
        docs[1]["spec"].setdefault("training", {})["loggedData"] = {"enabled": False}

    apply_stack(testbed, namespace, without_logged_data)
    eventually(
        lambda: get(testbed, "cronjob", "movies-logjoin", namespace) is None
        and get(testbed, "configmap", "movies-logjoin", namespace) is None,
        60, "the log-join CronJob and ConfigMap removed", operator=operator,
    )  # fmt: skip


def test_a_worse_model_is_rejected_with_its_numbers_and_manual_retrain_works(
    testbed: Testbed, namespace: str, operator: OperatorProcess
) -> None:
    apply_stack(testbed, namespace)
    walk_to_ready(testbed, namespace, "movies-v1", 0.12, operator)
    wait_rollout(testbed, namespace, operator, stable="movies-v1")
    testbed.kubectl("annotate", "-n", namespace, "recommender/movies", "recsys.dev/retrain=1")
    mv = wait_phase(testbed, namespace, "movies-v2", "Training", operator)
    assert mv["spec"]["reason"] == "Manual"
    finish_pod(
        testbed, namespace, "movies-v2-train", exit_code=0, summary=train_summary("movies-v2", 0.10)
    )
    mv = wait_phase(testbed, namespace, "movies-v2", "Rejected", operator)
    assert "recall@20=0.1000" in mv["status"]["message"]
    assert "movies-v1" in mv["status"]["message"]
    assert mv["status"]["evaluation"]["passed"] is False
    assert rollout(testbed, namespace)["stable"] == "movies-v1"
    # The same annotation value never trains twice; a new value does.
    assert get(testbed, "modelversion", "movies-v3", namespace) is None
    testbed.kubectl(
        "annotate", "--overwrite", "-n", namespace, "recommender/movies", "recsys.dev/retrain=2"
    )
    wait_phase(testbed, namespace, "movies-v3", "Training", operator)


def test_with_canary_steps_a_better_model_becomes_the_canary(
    testbed: Testbed, namespace: str, operator: OperatorProcess
) -> None:
    apply_stack(testbed, namespace)  # the default rollout has canary steps
    walk_to_ready(testbed, namespace, "movies-v1", 0.12, operator)
    wait_rollout(testbed, namespace, operator, stable="movies-v1")
    testbed.kubectl("annotate", "-n", namespace, "recommender/movies", "recsys.dev/retrain=a")
    walk_to_ready(testbed, namespace, "movies-v2", 0.15, operator)
    # the canary's Triton comes up (kwok marks its pod ready), then the first step's weight
    ro = wait_rollout(testbed, namespace, operator, canary="movies-v2", canaryWeight=10)
    assert ro["stable"] == "movies-v1"
    assert (ro["phase"], ro["pauseReason"]) == ("Paused", "PauseStep")  # the default 10m pause
    # Both versions' Tritons run side by side; the gateway routes 10% of users to v2.
    assert get(testbed, "deployment", "movies-triton-movies-v2", namespace) is not None
    assert get(testbed, "deployment", "movies-triton-movies-v1", namespace) is not None
    routing = json.loads(
        get(testbed, "configmap", "movies-gateway", namespace)["data"][  # type: ignore[index]
            "gateway.json"
        ]
    )["routing"]
    assert routing["canary"]["modelVersion"] == "movies-v2"
    assert routing["canaryWeight"] == 10


def test_a_version_serves_only_where_the_gateway_has_the_features_it_learnt(
    testbed: Testbed, namespace: str, operator: OperatorProcess
) -> None:
    """Promotion as one unit with the feature schema: a version trained on a user feature
    the FeatureViews do not serve is held back (Degraded says which), becomes the canary
    once the view serves it, and is aborted when the spec drops a feature it reads."""

    def schema(*names: str) -> FeatureSchema:
        kinds = {"age": "numeric", "occupation": "categorical"}
        return FeatureSchema(user=[SchemaFeature(name=n, kind=kinds[n]) for n in names])  # type: ignore[arg-type]

    def degraded() -> dict[str, Any] | None:
        return condition(get(testbed, "recommender", "movies", namespace), "Degraded")

    apply_stack(testbed, namespace)  # the view serves age only
    wait_phase(testbed, namespace, "movies-v1", "Training", operator)
    finish_pod(testbed, namespace, "movies-v1-train", exit_code=0,
               summary=train_summary("movies-v1", 0.12))  # fmt: skip
    wait_phase(testbed, namespace, "movies-v1", "Indexing", operator)
    finish_pod(testbed, namespace, "movies-v1-index", exit_code=0,
               summary=index_summary("movies-v1", schema("age")))  # fmt: skip
    wait_rollout(testbed, namespace, operator, stable="movies-v1")
    mv1 = get(testbed, "modelversion", "movies-v1", namespace) or {}
    assert mv1["status"]["featureSchema"]["user"] == [{"name": "age", "kind": "numeric"}]
    assert mv1["status"]["featureSchemaDigest"] == schema("age").digest()

    testbed.kubectl("annotate", "-n", namespace, "recommender/movies", "recsys.dev/retrain=a")
    wait_phase(testbed, namespace, "movies-v2", "Training", operator)
    finish_pod(testbed, namespace, "movies-v2-train", exit_code=0,
               summary=train_summary("movies-v2", 0.15))  # fmt: skip
    wait_phase(testbed, namespace, "movies-v2", "Indexing", operator)
    finish_pod(testbed, namespace, "movies-v2-index", exit_code=0,
               summary=index_summary("movies-v2", schema("age", "occupation")))  # fmt: skip
    wait_phase(testbed, namespace, "movies-v2", "Ready", operator)
    cond = eventually(
        lambda: (c := degraded()) and c["reason"] == "FeatureSchemaMismatch" and c, 60,
        "Degraded=FeatureSchemaMismatch", operator=operator,
    )  # fmt: skip
    assert cond["status"] == "True"
    assert "not rolled out: movies-v2 was trained on user features" in cond["message"]
    assert "missing occupation" in cond["message"]
    ro = rollout(testbed, namespace)
    assert (ro["stable"], ro.get("canary")) == ("movies-v1", None)

    def serve_occupation(docs: list[dict[str, Any]]) -> None:
        docs[0]["spec"]["features"].append({"name": "occupation", "dtype": "String"})

    apply_stack(testbed, namespace, serve_occupation)
    wait_rollout(testbed, namespace, operator, canary="movies-v2", canaryWeight=10)
    eventually(lambda: (degraded() or {}).get("status") == "False", 60, "no longer Degraded",
               operator=operator)  # fmt: skip

    def read_occupation_only(docs: list[dict[str, Any]]) -> None:
        serve_occupation(docs)
        docs[1]["spec"]["featureViews"] = {"user": [{"name": "users", "features": ["occupation"]}]}

    # both versions read age: the canary is aborted, the stable keeps serving and degrades
    apply_stack(testbed, namespace, read_occupation_only)
    ro = wait_rollout(testbed, namespace, operator, phase="Aborted", stable="movies-v1")
    assert "missing age" in ro["message"]
    cond = eventually(
        lambda: (c := degraded()) and "the stable version movies-v1" in c["message"] and c, 60,
        "the stable's mismatch reported", operator=operator,
    )  # fmt: skip
    assert cond["reason"] == "FeatureSchemaMismatch"
    # each ended rollout counted once, by outcome (the chart's RecsysRolloutAborted alert)
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics") as r:
        page = r.read().decode()
    ended = {
        outcome: float(line.rsplit(" ", 1)[1])
        for line in page.splitlines()
        if line.startswith("recsys_operator_rollouts_total{") and f'namespace="{namespace}"' in line
        for outcome in ("Promoted", "Aborted")
        if f'outcome="{outcome}"' in line
    }
    assert ended == {"Promoted": 1.0, "Aborted": 1.0}


def test_without_steps_a_better_model_is_promoted_and_pinning_rolls_back(
    testbed: Testbed, namespace: str, operator: OperatorProcess
) -> None:
    def immediate(docs: list[dict[str, Any]]) -> None:
        docs[1]["spec"]["serving"]["rollout"] = {"steps": []}

    apply_stack(testbed, namespace, immediate)
    walk_to_ready(testbed, namespace, "movies-v1", 0.12, operator)
    wait_rollout(testbed, namespace, operator, stable="movies-v1")
    testbed.kubectl("annotate", "-n", namespace, "recommender/movies", "recsys.dev/retrain=a")
    walk_to_ready(testbed, namespace, "movies-v2", 0.15, operator)
    # promoted once its Triton is Available; v1 stays ready for the rollback window
    ro = wait_rollout(testbed, namespace, operator, stable="movies-v2", phase="Healthy")
    assert ro["previousStable"] == "movies-v1"
    assert get(testbed, "deployment", "movies-triton-movies-v1", namespace) is not None
    table = json.loads(
        get(testbed, "configmap", "movies-gateway", namespace)["data"][  # type: ignore[index]
            "gateway.json"
        ]
    )["routing"]
    assert table["standby"]["modelVersion"] == "movies-v1"

    def pin(docs: list[dict[str, Any]]) -> None:
        immediate(docs)
        docs[1]["spec"]["serving"]["pinnedModelVersion"] = "movies-v1"
        docs[1]["spec"]["serving"]["rollout"]["rollbackWindow"] = "0s"

    # pinning v1, whose Triton still runs, is a routing change; with no rollback window the
    # replaced v2's Triton goes at once
    apply_stack(testbed, namespace, pin)
    wait_rollout(testbed, namespace, operator, stable="movies-v1", phase="Healthy")
    rec = get(testbed, "recommender", "movies", namespace)
    assert rec["status"]["observedGeneration"] == rec["metadata"]["generation"]  # type: ignore[index]
    eventually(
        lambda: get(testbed, "deployment", "movies-triton-movies-v2", namespace) is None,
        60,
        "the replaced version's Triton removed",
        operator=operator,
    )
    assert get(testbed, "service", "movies-triton-movies-v2", namespace) is None
    assert get(testbed, "configmap", "movies-triton-movies-v2", namespace) is None


def test_precompute_cronjob_follows_the_stable_version_and_goes_with_the_field(
    testbed: Testbed, namespace: str, operator: OperatorProcess
) -> None:
    """spec.serving.precompute: a CronJob for the stable version and a Job for it at once;
    a promotion changes the CronJob, makes the new version's Job and removes the old one's;
    the gateway is told maxAge; removing the field removes them all."""

    def with_precompute(docs: list[dict[str, Any]]) -> None:
        docs[1]["spec"]["serving"]["rollout"] = {"steps": []}
        docs[1]["spec"]["serving"]["precompute"] = {
            # a schedule that does not fire in the test
            "schedule": "0 0 1 1 *",
            "audience": {"mostActive": "10%", "window": "6h"},
            "topN": 50,
            "maxAge": "2h",
        }

    def pre_config(name: str) -> dict[str, Any]:
        cm = get(testbed, "configmap", name, namespace)
        assert cm is not None
        return json.loads(cm["data"]["config.json"])  # type: ignore[no-any-return]

    def cron_version() -> str | None:
        cron = get(testbed, "cronjob", "movies-precompute", namespace)
        if cron is None:
            return None
        (main,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in main["env"]}
        return env.get("RECSYS_MODEL_VERSION")

    apply_stack(testbed, namespace, with_precompute)
    walk_to_ready(testbed, namespace, "movies-v1", 0.12, operator)
    wait_rollout(testbed, namespace, operator, stable="movies-v1")
    eventually(lambda: cron_version() == "movies-v1", 60, "the precompute CronJob for v1",
               operator=operator)  # fmt: skip
    config = pre_config("movies-precompute")
    assert config["gateway"]["routing"]["stable"]["modelVersion"] == "movies-v1"
    assert config["audience"] == {"mostActivePercent": 10, "windowSeconds": 21600.0}
    assert config["topN"] == 50
    gateway_cm = get(testbed, "configmap", "movies-gateway", namespace)
    assert json.loads(gateway_cm["data"]["gateway.json"])["precomputed"] == {"maxAge": "2h"}  # type: ignore[index]
    eventually(lambda: get(testbed, "job", "movies-precompute-movies-v1", namespace), 60,
               "the Job for v1", operator=operator)  # fmt: skip
    pod = get(testbed, "cronjob", "movies-precompute", namespace)["spec"]["jobTemplate"]["spec"][  # type: ignore[index]
        "template"
    ]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True

    # a promotion: the CronJob computes for v2, a Job for v2 runs at once, v1's goes
    testbed.kubectl("annotate", "-n", namespace, "recommender/movies", "recsys.dev/retrain=a")
    walk_to_ready(testbed, namespace, "movies-v2", 0.15, operator)
    wait_rollout(testbed, namespace, operator, stable="movies-v2", phase="Healthy")
    eventually(lambda: cron_version() == "movies-v2", 60, "the CronJob follows the promotion",
               operator=operator)  # fmt: skip
    assert pre_config("movies-precompute")["gateway"]["routing"]["stable"]["modelVersion"] == (
        "movies-v2"
    )
    eventually(lambda: get(testbed, "job", "movies-precompute-movies-v2", namespace), 60,
               "the Job for v2", operator=operator)  # fmt: skip
    eventually(lambda: get(testbed, "job", "movies-precompute-movies-v1", namespace) is None,
               60, "v1's Job removed", operator=operator)  # fmt: skip

    def without(docs: list[dict[str, Any]]) -> None:
        docs[1]["spec"]["serving"]["rollout"] = {"steps": []}

    apply_stack(testbed, namespace, without)
    eventually(lambda: get(testbed, "cronjob", "movies-precompute", namespace) is None, 60,
               "the precompute CronJob removed", operator=operator)  # fmt: skip
    eventually(lambda: get(testbed, "job", "movies-precompute-movies-v2", namespace) is None,
               60, "v2's Job removed", operator=operator)  # fmt: skip
    assert get(testbed, "configmap", "movies-precompute", namespace) is None
    gateway_cm = get(testbed, "configmap", "movies-gateway", namespace)
    assert "precomputed" not in json.loads(gateway_cm["data"]["gateway.json"])  # type: ignore[index]


def test_batch_mode_removes_triton_and_runs_it_inside_the_precompute_pods(
    testbed: Testbed, namespace: str, operator: OperatorProcess
) -> None:
    """spec.serving.precompute.mode: Batch, switched to from Hybrid on a serving Recommender:
    the Triton Deployment, Service and ConfigMap go, the gateway is told no Triton address, the
    precompute pods build the repository and run Triton as a native sidecar, the Hybrid Job is
    replaced by a Batch one; and a new version is promoted with no Triton Deployment at all."""

    def precompute(mode: str) -> Any:
        def edit(docs: list[dict[str, Any]]) -> None:
            docs[1]["spec"]["serving"]["rollout"] = {"steps": []}
            docs[1]["spec"]["serving"]["precompute"] = {
                "schedule": "0 0 1 1 *",  # does not fire in the test
                "audience": {"all": True},
                "mode": mode,
            }

        return edit

    def triton_children(version: str) -> list[str]:
        name = f"movies-triton-{version}"
        return [k for k in ("deployment", "service", "configmap")
                if get(testbed, k, name, namespace) is not None]  # fmt: skip

    apply_stack(testbed, namespace, precompute("Hybrid"))
    walk_to_ready(testbed, namespace, "movies-v1", 0.12, operator)
    wait_rollout(testbed, namespace, operator, stable="movies-v1")
    eventually(lambda: get(testbed, "job", "movies-precompute-movies-v1", namespace), 60,
               "the Hybrid Job for v1", operator=operator)  # fmt: skip
    assert triton_children("movies-v1") == ["deployment", "service", "configmap"]

    def endpoints() -> dict[str, Any]:
        rec = get(testbed, "recommender", "movies", namespace) or {}
        return rec.get("status", {}).get("endpoints") or {}  # type: ignore[no-any-return]

    eventually(lambda: "triton" in endpoints(), 60, "Triton's endpoint", operator=operator)
    apply_stack(testbed, namespace, precompute("Batch"))
    eventually(lambda: triton_children("movies-v1") == [], 60, "v1's Triton removed",
               operator=operator)  # fmt: skip
    eventually(lambda: list(endpoints()) == ["gateway"], 60, "no Triton endpoint in status",
               operator=operator)  # fmt: skip
    gateway = json.loads(get(testbed, "configmap", "movies-gateway", namespace)["data"][  # type: ignore[index]
        "gateway.json"])  # fmt: skip
    assert "triton" not in gateway["routing"]["stable"]
    assert gateway["precomputed"] == {"maxAge": "24h"}
    job = eventually(lambda: get(testbed, "job", "movies-precompute-batch-movies-v1", namespace),
                     60, "the Batch Job for v1", operator=operator)  # fmt: skip
    eventually(lambda: get(testbed, "job", "movies-precompute-movies-v1", namespace) is None,
               60, "the Hybrid Job removed", operator=operator)  # fmt: skip
    cron = get(testbed, "cronjob", "movies-precompute", namespace)
    assert cron is not None
    for pod in (job["spec"]["template"]["spec"],
                cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]):  # fmt: skip
        builder, triton = pod["initContainers"]
        assert builder["name"] == "repository"
        assert builder["args"] == ["--config", "/etc/recsys/repository.json"]
        assert (triton["name"], triton["restartPolicy"]) == ("triton", "Always")
        assert triton["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
        for c in (builder, triton, *pod["containers"]):
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, c["name"]
    config_map = get(testbed, "configmap", "movies-precompute-batch-movies-v1", namespace)
    assert config_map is not None
    config = json.loads(config_map["data"]["config.json"])
    assert config["gateway"]["routing"]["stable"]["triton"] == "127.0.0.1:8000"
    repository = json.loads(config_map["data"]["repository.json"])
    assert repository["artifactUri"] == "s3://models/movies/models/movies-v1"

    # a promotion in Batch mode: ready on its index alone, no Triton made for it
    testbed.kubectl("annotate", "-n", namespace, "recommender/movies", "recsys.dev/retrain=a")
    walk_to_ready(testbed, namespace, "movies-v2", 0.15, operator)
    wait_rollout(testbed, namespace, operator, stable="movies-v2", phase="Healthy")
    eventually(lambda: get(testbed, "job", "movies-precompute-batch-movies-v2", namespace), 60,
               "the Batch Job for v2", operator=operator)  # fmt: skip
    assert triton_children("movies-v2") == []
    assert triton_children("movies-v1") == []


def test_training_failure_and_missing_feature_view_are_reported(
    testbed: Testbed, namespace: str, operator: OperatorProcess
) -> None:
    def without_fv(docs: list[dict[str, Any]]) -> None:
        docs.pop(0)

    apply_stack(testbed, namespace, without_fv)

    def waiting() -> dict[str, Any] | None:
        cond = condition(get(testbed, "recommender", "movies", namespace), "Ready")
        return cond if cond and cond["reason"] == "WaitingForFeatureViews" else None

    cond = eventually(waiting, 60, "WaitingForFeatureViews", operator=operator)
    assert "FeatureView users" in cond["message"]
    assert phase(testbed, namespace, "movies-v1") == "Pending"
    assert get(testbed, "job", "movies-v1-train", namespace) is None

    apply_stack(testbed, namespace)  # the FeatureView appears: training starts
    wait_phase(testbed, namespace, "movies-v1", "Training", operator)
    finish_pod(
        testbed,
        namespace,
        "movies-v1-train",
        exit_code=2,
        summary={
            "status": "Failed",
            "reason": "BadInput",
            "message": "data.interactionsUri: column 'item_id' is int32, expected int64",
        },
    )
    mv = wait_phase(testbed, namespace, "movies-v1", "Failed", operator)
    assert "column 'item_id' is int32" in mv["status"]["message"]
    assert condition(mv, "Degraded")["status"] == "True"  # type: ignore[index]

    def degraded() -> bool:
        cond = condition(get(testbed, "recommender", "movies", namespace), "Degraded")
        return bool(cond and cond["status"] == "True" and "movies-v1" in cond["message"])

    eventually(degraded, 60, "Recommender Degraded", operator=operator)


def test_a_job_the_apiserver_refuses_fails_the_version_with_its_message(
    testbed: Testbed, namespace: str, operator: OperatorProcess
) -> None:
    def bad_selector_value(docs: list[dict[str, Any]]) -> None:
        # The CRD bounds the length of a nodeSelector value but not its characters; Job
        # validation refuses it with a 422, which must end as a clear status, not a crash loop.
        docs[1]["spec"]["training"]["nodeSelector"] = {"node-pool": "gpu pool"}

    apply_stack(testbed, namespace, bad_selector_value)
    mv = wait_phase(testbed, namespace, "movies-v1", "Failed", operator)
    assert mv["status"]["reason"] == "JobRejected"
    assert "gpu pool" in mv["status"]["message"]
    # The operator keeps working for everything else in the namespace.
    assert condition(get(testbed, "featureview", "users", namespace), "Ready") is not None


def test_distributed_training_uses_an_indexed_job_and_kueue(
    testbed: Testbed, namespace: str, operator: OperatorProcess
) -> None:
    def distributed(docs: list[dict[str, Any]]) -> None:
        docs[1]["spec"]["training"].update(
            {"numNodes": 2, "numProcPerNode": 4, "gpusPerNode": 4, "queueName": "gpu-queue"}
        )

    apply_stack(testbed, namespace, distributed)
    job = eventually(
        lambda: get(testbed, "job", "movies-v1-train", namespace),
        60,
        "training Job",
        operator=operator,
    )
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == 2
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:3] == ["torchrun", "--nnodes=2", "--nproc-per-node=4"]
    assert "--master-addr=movies-v1-train-0.movies-v1-train" in command
    svc = get(testbed, "service", "movies-v1-train", namespace)
    assert svc is not None
    assert svc["spec"]["clusterIP"] == "None"


IMPORTED_DIGEST = "sha256:" + "b" * 64


def imported(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "recsys.dev/v1alpha1",
        "kind": "ModelVersion",
        "metadata": {"name": name},
        "spec": {
            "recommenderRef": {"name": "movies"},
            "reason": "Manual",
            "storageUri": f"s3://notebooks/{name}",
            "digest": IMPORTED_DIGEST,
        },
    }


def test_an_imported_version_skips_training_and_its_digest_is_checked(
    testbed: Testbed, namespace: str, operator: OperatorProcess
) -> None:
    apply_stack(testbed, namespace)
    for name in ("nb-good", "nb-wrong"):
        testbed.kubectl(
            "apply", "--server-side", "-n", namespace, "-f", "-", input=json.dumps(imported(name))
        )
        wait_phase(testbed, namespace, name, "Indexing", operator)
        assert get(testbed, "job", f"{name}-train", namespace) is None, "never trained"
        config = json.loads(
            get(testbed, "configmap", f"{name}-index", namespace)["data"][  # type: ignore[index]
                "config.json"
            ]
        )
        assert config["modelArtifactUri"] == f"s3://notebooks/{name}"
    finish_pod(
        testbed,
        namespace,
        "nb-good-index",
        exit_code=0,
        summary={**index_summary("nb-good"), "modelDigest": IMPORTED_DIGEST},
    )
    good = wait_phase(testbed, namespace, "nb-good", "Ready", operator)
    assert good["status"]["artifactUri"] == "s3://notebooks/nb-good"
    assert (condition(good, "Trained") or {}).get("reason") == "Imported"
    assert condition(good, "Evaluated") is None, "an import is not judged by the gate"
    assert "Evaluating" not in event_reasons(testbed, namespace, "nb-good")
    finish_pod(
        testbed,
        namespace,
        "nb-wrong-index",
        exit_code=0,
        summary={**index_summary("nb-wrong"), "modelDigest": "sha256:" + "c" * 64},
    )
    wrong = wait_phase(testbed, namespace, "nb-wrong", "Failed", operator)
    assert wrong["status"]["reason"] == "DigestMismatch"
    assert "not spec.digest" in wrong["status"]["message"]
