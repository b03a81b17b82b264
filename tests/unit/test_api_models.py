"""The API models on their own: parsing examples, defaults, and the Python side of every rule."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from recsys_operator import GROUP, VERSION
from recsys_operator.api import (
    API_VERSION,
    FEATURE_VIEW,
    KINDS,
    MODEL_VERSION,
    RECOMMENDER,
    FeatureView,
    ModelVersion,
    ModelVersionStatus,
    Recommender,
    RecommenderSpec,
)
from recsys_operator.api.modelversion import FINAL_PHASES, PHASES

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _examples() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def _model_for(kind: str) -> type[BaseModel]:
    return next(k.object_model for k in KINDS if k.kind == kind)


def _rec(**spec_changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "interactions": {"path": "s3://data/interactions/"},
        "stores": {
            "redis": {"url": "redis://redis:6379/0"},
            "artifacts": {"storageUri": "s3://models/rec"},
        },
    }
    spec.update(spec_changes)
    return spec


def test_every_example_parses_with_its_model() -> None:
    docs = _examples()
    assert {d["kind"] for d in docs} == {"FeatureView", "Recommender", "ModelVersion"}
    for doc in docs:
        obj = _model_for(doc["kind"]).model_validate(doc)
        assert obj.metadata.name == doc["metadata"]["name"]  # type: ignore[attr-defined]


def test_whole_object_and_spec_parse_the_same() -> None:
    doc = next(d for d in _examples() if d["metadata"]["name"] == "movies" and "drift" in d["spec"])
    whole = Recommender.model_validate(doc)
    alone = RecommenderSpec.model_validate(doc["spec"])
    assert whole.spec == alone
    assert whole.api_version == API_VERSION == f"{GROUP}/{VERSION}"
    assert alone.serving.rollout.steps[0].set_weight == 5
    assert alone.retrieval.index.hnsw is not None
    assert alone.retrieval.index.hnsw.ef_search == 128
    assert alone.drift is not None
    assert alone.drift.threshold == 0.2


def test_defaults_fill_a_minimal_spec() -> None:
    spec = RecommenderSpec.model_validate(_rec())
    assert spec.retrieval.num_candidates == 200
    assert spec.ranking.top_k == 20
    assert spec.training.num_nodes == 1
    assert spec.training.gpus_per_node is None  # explicit-only: see the numNodes rule
    assert [s.set_weight for s in spec.serving.rollout.steps] == [10, None, 50, None]
    assert spec.serving.rollout.analysis.metrics[0].name == "request-success-rate"
    assert spec.training.evaluation.metrics[0].max_regression == 0.05
    assert spec.training.warm_start.enabled is False  # cold retraining is the default
    assert spec.training.warm_start.window == "168h"
    wire = spec.to_k8s()
    assert wire["serving"]["rollout"]["userSticky"] is True
    assert "drift" not in wire
    assert "featureViews" not in wire


def test_status_round_trips_through_the_wire_form() -> None:
    status = {
        "observedGeneration": 3,
        "phase": "Rejected",
        "reason": "GateFailed",
        "message": "recallAtK 0.041 is below thresholdRange.min 0.05",
        "metrics": {"recall@20": 0.041, "ndcg@20": 0.02},
        "evaluation": {"k": 20, "recallAtK": 0.041, "passed": False},
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "observedGeneration": 3,
                "lastTransitionTime": "2024-06-01T10:00:00Z",
                "reason": "GateFailed",
                "message": "rejected by the evaluation gate",
            }
        ],
    }
    parsed = ModelVersionStatus.model_validate(status)
    assert parsed.to_k8s() == status


def test_live_object_with_server_fields_parses() -> None:
    obj = {
        "apiVersion": API_VERSION,
        "kind": "ModelVersion",
        "metadata": {
            "name": "movies-v3",
            "namespace": "shop",
            "uid": "7c1e",
            "generation": 1,
            "resourceVersion": "123",
            "creationTimestamp": "2024-06-01T10:00:00Z",
            "managedFields": [{"manager": "kubectl"}],
            "ownerReferences": [{"kind": "Recommender", "name": "movies"}],
        },
        "spec": {"recommenderRef": {"name": "movies"}, "reason": "Schedule"},
        "status": {"phase": "Training"},
    }
    mv = ModelVersion.model_validate(obj)
    assert mv.metadata.resource_version == "123"
    assert mv.status is not None
    assert mv.status.phase == "Training"


def test_kind_descriptors() -> None:
    assert [k.kind for k in KINDS] == ["FeatureView", "Recommender", "ModelVersion"]
    assert {k.short_names for k in KINDS} == {("fv",), ("rec",), ("mv",)}
    assert all(k.categories == ("recsys",) for k in KINDS)
    assert RECOMMENDER.crd_name == "recommenders.recsys.dev"
    assert FEATURE_VIEW.list_kind == "FeatureViewList"
    assert MODEL_VERSION.immutable_spec
    assert not RECOMMENDER.immutable_spec
    assert FeatureView.model_fields["kind"].default == "FeatureView"


def test_phases_in_lifecycle_order() -> None:
    assert PHASES[:5] == ("Pending", "Training", "Evaluating", "Indexing", "Ready")
    assert {"Ready", "Failed", "Rejected"} == FINAL_PHASES


def _set(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    node = doc
    *parents, last = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return doc


# (case, spec changes as dotted path → value, text the error must contain)
#: A Batch-mode precompute (``mode: Batch``), for every user.
BATCH: dict[str, Any] = {"schedule": "@hourly", "audience": {"all": True}, "mode": "Batch"}

RULES = [
    ("weights-not-increasing", {"serving.rollout.steps": [{"setWeight": 50}, {"setWeight": 20}]},
     "strictly increasing"),
    ("weight-repeated", {"serving.rollout.steps": [{"setWeight": 20}, {"setWeight": 20}]},
     "strictly increasing"),
    ("step-weight-and-pause", {"serving.rollout.steps": [{"setWeight": 5, "pause": {}}]},
     "exactly one of setWeight, pause or shadow"),
    ("workers-without-gpus", {"training.numNodes": 2}, "gpusPerNode"),
    ("nproc-not-gpus", {"training.gpusPerNode": 4, "training.numProcPerNode": 2},
     "numProcPerNode"),
    ("gpu-in-resources", {"training.resourcesPerNode": {"limits": {"nvidia.com/gpu": 1}}},
     "gpusPerNode, not in resourcesPerNode"),
    ("request-over-limit",
     {"serving.triton.resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1500m"}}},
     "must not exceed the limit"),
    ("psi-threshold", {"drift": {"schedule": "@hourly", "threshold": 3.0}}, "PSI takes"),
    ("kl-threshold", {"drift": {"schedule": "@hourly", "method": "KL", "threshold": 1.5}},
     "KL takes"),
    ("topk-over-candidates", {"ranking.topK": 300, "retrieval.numCandidates": 100},
     "ranking.topK must not exceed"),
    ("hnsw-on-flat", {"retrieval.index": {"type": "Flat", "hnsw": {}}}, "only to type HNSW"),
    ("nprobe-over-nlist", {"retrieval.index": {"type": "IVFFlat", "ivf": {"nlist": 8,
     "nprobe": 9}}}, "must not exceed nlist"),
    ("ef-below-m", {"retrieval.index.hnsw": {"m": 64, "efConstruction": 32}}, "at least m"),
    ("same-id-columns", {"interactions.itemIdColumn": "user_id"}, "must differ"),
    ("fv-in-both", {"featureViews": {"user": [{"name": "a"}], "item": [{"name": "a"}]}},
     "not both"),
    ("duplicate-feature-view", {"featureViews": {"user": [{"name": "a"}, {"name": "a"}]}},
     "duplicate name 'a'"),
    ("in-without-values", {"filtering.itemSelector": {"matchExpressions": [{"key": "x",
     "operator": "In"}]}}, "need at least one value"),
    ("gt-not-number", {"filtering.itemSelector": {"matchExpressions": [{"key": "x",
     "operator": "Gt", "values": ["new"]}]}}, "one numeric value"),
    ("range-inverted", {"serving.rollout.analysis.metrics": [{"name": "request-duration",
     "thresholdRange": {"min": 10, "max": 5}}]}, "must not be above max"),
    ("gate-metric-empty", {"training.evaluation.metrics": [{"name": "auc"}]}, "checks nothing"),
    ("redis-password-inline", {"stores.redis.url": "redis://:hunter2@redis:6379/0"},
     "must not carry credentials"),
    ("redis-cluster-database-3", {"stores.redis.url": "redis://redis:6379/3",
     "stores.redis.mode": "Cluster"}, "a Redis Cluster has only database 0"),
    ("redis-cluster-database-10", {"stores.redis.url": "redis://redis:6379/10",
     "stores.redis.mode": "Cluster"}, "a Redis Cluster has only database 0"),
    ("toleration-exists-value", {"training.tolerations": [{"key": "k", "operator": "Exists",
     "value": "v"}]}, "value must be empty"),
    ("timezone-without-schedule", {"training.timeZone": "Etc/UTC"}, "applies only to a schedule"),
    ("bad-cron", {"training.schedule": "0 25 * * *"}, "must be a cron schedule"),
    ("bad-duration", {"serving.rollout.rollbackWindow": "1d"}, "a day is 24h"),
    ("warm-start-window-in-days", {"training.warmStart": {"enabled": True, "window": "7d"}},
     "a day is 24h"),
    ("warm-start-window-too-short", {"training.warmStart": {"enabled": True, "window": "30s"}},
     "must be at least 1m"),
    ("warm-start-no-epochs", {"training.warmStart": {"epochs": 0}}, "greater than or equal to 1"),
    ("precompute-no-audience", {"serving.precompute": {"schedule": "@hourly", "audience": {}}},
     "exactly one of mostActive"),
    ("precompute-both-audiences", {"serving.precompute": {"schedule": "@hourly", "audience":
     {"mostActive": 10, "all": True}}}, "exactly one of mostActive"),
    ("precompute-share-over-100", {"serving.precompute": {"schedule": "@hourly", "audience":
     {"mostActive": "150%"}}}, "'1%' to '100%'"),
    ("precompute-share-not-percent", {"serving.precompute": {"schedule": "@hourly", "audience":
     {"mostActive": "5"}}}, "'1%' to '100%'"),
    ("precompute-zero-users", {"serving.precompute": {"schedule": "@hourly", "audience":
     {"mostActive": 0}}}, "count of users (1 to 100000000)"),
    ("precompute-window-with-all", {"serving.precompute": {"schedule": "@hourly", "audience":
     {"all": True, "window": "1h"}}}, "remove it with all: true"),
    ("precompute-topn-below-topk", {"serving.precompute": {"schedule": "@hourly", "audience":
     {"all": True}, "topN": 5}}, "between ranking.topK and"),
    ("precompute-bad-max-age", {"serving.precompute": {"schedule": "@hourly", "audience":
     {"all": True}, "maxAge": "2d"}}, "a day is 24h"),
    ("batch-with-canary-steps", {"serving.precompute": BATCH}, "set rollout.steps: []"),
    ("batch-with-shadow-step", {"serving.precompute": BATCH, "serving.rollout.steps":
     [{"shadow": {"duration": "5m"}}]}, "set rollout.steps: []"),
    ("batch-with-triton-autoscaling", {"serving.precompute": BATCH, "serving.rollout.steps": [],
     "serving.triton": {"resources": {"requests": {"cpu": 1}}, "autoscaling":
     {"maxReplicas": 3}}}, "remove triton.autoscaling"),
    ("batch-with-triton-replicas", {"serving.precompute": BATCH, "serving.rollout.steps": [],
     "serving.triton.replicas": 3}, "remove triton.replicas"),
    ("precompute-unknown-mode", {"serving.precompute": {**BATCH, "mode": "Offline"}},
     "'Hybrid' or 'Batch'"),
    ("unknown-field", {"retrival": {}}, "Extra inputs are not permitted"),
    ("string-for-int", {"ranking.topK": "20"}, "valid integer"),
]  # fmt: skip


@pytest.mark.parametrize(("changes", "expected"), [c[1:] for c in RULES], ids=[c[0] for c in RULES])
def test_python_rules_reject_with_the_fix(changes: dict[str, Any], expected: str) -> None:
    spec = _rec()
    for path, value in changes.items():
        spec = _set(spec, path, value)
    with pytest.raises(ValidationError) as err:
        RecommenderSpec.model_validate(spec)
    assert expected in str(err.value)


def test_rules_accept_the_valid_neighbours() -> None:
    """The other side of each rule: the closest valid spec passes."""
    ok: list[dict[str, Any]] = [
        {"serving.rollout.steps": [{"setWeight": 20}, {"pause": {}}, {"setWeight": 100}]},
        {"serving.rollout.steps": []},
        {"training.numNodes": 2, "training.gpusPerNode": 0},
        {"training.gpusPerNode": 4, "training.numProcPerNode": 4},
        {"serving.triton.resources": {"requests": {"cpu": "1500m"}, "limits": {"cpu": "1.5"}}},
        {"drift": {"schedule": "@hourly", "method": "KL", "threshold": 0.05}},
        {"ranking.topK": 100, "retrieval.numCandidates": 100},
        {"retrieval.index": {"type": "IVFFlat", "ivf": {"nlist": 8, "nprobe": 8}}},
        {"training.schedule": "*/15 0-6 1,15 JAN-MAR MON-FRI", "training.timeZone": "Etc/UTC"},
        {"training.warmStart": {"enabled": True, "window": "1m", "epochs": 1}},
        {"training.warmStart": {"enabled": True, "window": "1.5h30m"}},
        {"serving.precompute": {"schedule": "@hourly", "audience": {"mostActive": "100%"}}},
        {
            "serving.precompute": {
                "schedule": "@hourly",
                "audience": {"mostActive": 1, "window": "1h"},
            }
        },
        {"serving.precompute": {"schedule": "@hourly", "audience": {"all": True}, "topN": 20}},
        {"serving.precompute": BATCH, "serving.rollout.steps": []},
        {"serving.precompute": BATCH, "serving.rollout.steps": [], "serving.triton.replicas": 1},
        {"serving.precompute": {**BATCH, "mode": "Hybrid"}, "serving.triton.replicas": 3},
        {"stores.redis.url": "redis://redis:6379/0", "stores.redis.mode": "Cluster"},
        {"stores.redis.url": "redis://redis:6379", "stores.redis.mode": "Cluster"},
        {"stores.redis.url": "redis://redis:6379/3", "stores.redis.mode": "Standalone"},
    ]
    for changes in ok:
        spec = _rec()
        for path, value in changes.items():
            spec = _set(spec, path, value)
        RecommenderSpec.model_validate(spec)


def test_featureview_rules() -> None:
    fv = next(d for d in _examples() if d["kind"] == "FeatureView")
    dup = copy.deepcopy(fv)
    dup["spec"]["features"].append({"name": "age", "dtype": "Int32"})
    with pytest.raises(ValidationError, match="duplicate name 'age'"):
        FeatureView.model_validate(dup)
    joined = copy.deepcopy(fv)
    joined["spec"]["features"].append({"name": "user_id", "dtype": "Int64"})
    with pytest.raises(ValidationError, match="may not reuse a join key"):
        FeatureView.model_validate(joined)
    window = copy.deepcopy(fv)
    window["spec"]["materialization"]["backfill"] = {
        "startTime": "2024-02-01T00:00:00Z",
        "endTime": "2024-01-01T00:00:00+01:00",
    }
    with pytest.raises(ValidationError, match="must be after startTime"):
        FeatureView.model_validate(window)
    feb30 = copy.deepcopy(fv)
    feb30["spec"]["materialization"]["backfill"] = {"startTime": "2024-02-30T00:00:00Z"}
    with pytest.raises(ValidationError, match="RFC 3339"):
        FeatureView.model_validate(feb30)


def test_modelversion_rules() -> None:
    base = {"recommenderRef": {"name": "movies"}, "storageUri": "s3://m/v1"}
    spec = MODEL_VERSION.spec_model
    spec.model_validate(base)
    with pytest.raises(ValidationError, match="is not trained"):
        spec.model_validate({**base, "training": {"image": "trainer:1"}})
    with pytest.raises(ValidationError, match="has reason Manual"):
        spec.model_validate({**base, "reason": "Drift"})
    with pytest.raises(ValidationError, match="verifies an imported artifact"):
        spec.model_validate({"recommenderRef": {"name": "movies"}, "digest": "sha256:" + "a" * 64})


def test_models_are_frozen() -> None:
    spec = RecommenderSpec.model_validate(_rec())
    with pytest.raises(ValidationError):
        spec.ranking.top_k = 5
