"""A table of invalid objects, each refused by the real apiserver with a message that names the
offending field — and refused by the models too, so the two validators agree."""

from __future__ import annotations

import copy
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from api_support import install_crds, manifest
from pydantic import ValidationError

from recsys_operator.api import KINDS

pytestmark = pytest.mark.testbed

DELETE = object()

BASE: dict[str, dict[str, Any]] = {
    "FeatureView": {
        "entity": {"name": "user", "joinKeys": ["user_id"]},
        "source": {"path": "s3://data/users/"},
        "features": [{"name": "age", "dtype": "Int64"}, {"name": "country", "dtype": "String"}],
        "onlineStore": {"redis": {"url": "redis://redis:6379/0"}},
        "materialization": {"cronJob": {"schedule": "*/30 * * * *"}},
    },
    "Recommender": {
        "interactions": {"path": "s3://data/interactions/"},
        "stores": {
            "redis": {"url": "redis://redis:6379/1"},
            "artifacts": {"storageUri": "s3://models/movies"},
        },
    },
    "ModelVersion": {"recommenderRef": {"name": "movies"}},
}


@dataclass(frozen=True)
class Case:
    id: str
    kind: str
    changes: dict[str, Any]
    path: str  # the field the apiserver must name
    says: str  # and what it must say about it
    extra: dict[str, Any] = field(default_factory=dict)


def _spec(case: Case) -> dict[str, Any]:
    spec = copy.deepcopy(BASE[case.kind])
    for dotted, value in case.changes.items():
        node = spec
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        if value is DELETE:
            del node[last]
        else:
            node[last] = value
    return spec


ROLLOUT = "serving.rollout"
#: A Batch-mode precompute (``mode: Batch``), for every user.
BATCH: dict[str, Any] = {"schedule": "@hourly", "audience": {"all": True}, "mode": "Batch"}
HNSW = {"m": 32, "efConstruction": 200}
MATCH = "filtering.itemSelector"
DRIFT = {"schedule": "@hourly"}
IMPORT = {"storageUri": "s3://models/imported/v1"}

CASES = [
    # --- FeatureView ---------------------------------------------------------------------------
    Case("fv-duplicate-feature", "FeatureView",
         {"features": [{"name": "age", "dtype": "Int64"}, {"name": "age", "dtype": "Int32"}]},
         "spec.features[1]", "Duplicate value"),
    Case("fv-feature-is-join-key", "FeatureView",
         {"features": [{"name": "user_id", "dtype": "Int64"}]},
         "spec.features", "may not reuse a join key"),
    Case("fv-feature-is-event-time", "FeatureView",
         {"features": [{"name": "event_timestamp", "dtype": "UnixTimestamp"}]},
         "spec.features", "timestampField column"),
    Case("fv-unknown-dtype", "FeatureView", {"features": [{"name": "age", "dtype": "int"}]},
         "spec.features[0].dtype", "Unsupported value"),
    Case("fv-cron-hour-24", "FeatureView", {"materialization.cronJob.schedule": "0 24 * * *"},
         "spec.materialization.cronJob.schedule", "must be a cron schedule of five fields"),
    Case("fv-ttl-in-days", "FeatureView", {"ttl": "7d"}, "spec.ttl", "a day is 24h"),
    Case("fv-inline-password", "FeatureView",
         {"onlineStore.redis.url": "redis://:hunter2@redis:6379/0"},
         "spec.onlineStore.redis.url", "put the password in a Secret"),
    Case("fv-cluster-database-3", "FeatureView",
         {"onlineStore.redis.url": "redis://redis:6379/3", "onlineStore.redis.mode": "Cluster"},
         "spec.onlineStore.redis.url", "a Redis Cluster has only database 0"),
    Case("fv-backfill-backwards", "FeatureView",
         {"materialization.backfill": {"startTime": "2024-02-01T00:00:00Z",
                                       "endTime": "2024-01-01T00:00:00Z"}},
         "spec.materialization.backfill.endTime", "must be after startTime"),
    Case("fv-backfill-30-february", "FeatureView",
         {"materialization.backfill": {"startTime": "2024-02-30T00:00:00Z"}},
         "spec.materialization.backfill.startTime", "date-time"),
    Case("fv-no-join-keys", "FeatureView", {"entity.joinKeys": []},
         "spec.entity.joinKeys", "at least 1 item"),
    Case("fv-concurrency-skip", "FeatureView",
         {"materialization.cronJob.concurrencyPolicy": "Skip"},
         "spec.materialization.cronJob.concurrencyPolicy", "Unsupported value"),
    Case("fv-negative-history", "FeatureView",
         {"materialization.cronJob.successfulJobsHistoryLimit": -1},
         "spec.materialization.cronJob.successfulJobsHistoryLimit", "greater than or equal to 0"),
    Case("fv-relative-source", "FeatureView", {"source.path": "data/users.parquet"},
         "spec.source.path", "must be a URI with a scheme"),
    Case("fv-gcs-source", "FeatureView", {"source.path": "gs://data/users/"},
         "spec.source.path", "gs://, az://, hdfs:// and https:// are not supported"),
    Case("rec-azure-artifacts", "Recommender",
         {"stores.artifacts.storageUri": "az://models/movies"},
         "spec.stores.artifacts.storageUri", "copy the data to an S3-compatible bucket"),
    Case("fv-no-online-store", "FeatureView", {"onlineStore": DELETE},
         "spec.onlineStore", "Required value"),
    Case("fv-created-is-event-time", "FeatureView",
         {"source.createdTimestampField": "event_timestamp"},
         "spec.source.createdTimestampField", "must differ from timestampField"),
    Case("fv-feature-is-created-time", "FeatureView", {"source.createdTimestampField": "age"},
         "spec.features", "may not reuse the createdTimestampField column"),
    # --- Recommender: autoscaling -------------------------------------------------------------
    Case("rec-autoscaling-without-cpu-request", "Recommender",
         {"serving.gateway": {"autoscaling": {"maxReplicas": 4}}},
         "spec.serving.gateway.autoscaling", "set serving.gateway.resources.requests.cpu"),
    Case("rec-autoscaling-min-above-max", "Recommender",
         {"serving.triton": {"resources": {"requests": {"cpu": 1}},
                             "autoscaling": {"minReplicas": 3, "maxReplicas": 2}}},
         "spec.serving.triton.autoscaling.minReplicas", "must not exceed maxReplicas"),
    # --- Recommender: precompute ---------------------------------------------------------------
    Case("rec-precompute-no-audience", "Recommender",
         {"serving.precompute": {"schedule": "@hourly", "audience": {}}},
         "spec.serving.precompute.audience", "exactly one of mostActive"),
    Case("rec-precompute-share-over-100", "Recommender",
         {"serving.precompute": {"schedule": "@hourly", "audience": {"mostActive": "150%"}}},
         "spec.serving.precompute.audience.mostActive", "'1%' to '100%'"),
    Case("rec-precompute-zero-users", "Recommender",
         {"serving.precompute": {"schedule": "@hourly", "audience": {"mostActive": 0}}},
         "spec.serving.precompute.audience.mostActive", "count of users (1 to 100000000)"),
    Case("rec-precompute-window-with-all", "Recommender",
         {"serving.precompute": {"schedule": "@hourly", "audience": {"all": True,
                                                                      "window": "1h"}}},
         "spec.serving.precompute.audience.window", "remove it with all: true"),
    Case("rec-precompute-topn-below-topk", "Recommender",
         {"serving.precompute": {"schedule": "@hourly", "audience": {"all": True}, "topN": 5}},
         "spec.serving.precompute.topN", "between ranking.topK and"),
    Case("rec-batch-with-canary-steps", "Recommender",
         {"serving.precompute": BATCH, f"{ROLLOUT}.steps": [{"setWeight": 10}]},
         "spec.serving.rollout.steps", "set rollout.steps: []"),
    Case("rec-batch-with-default-steps", "Recommender", {"serving.precompute": BATCH},
         "spec.serving.rollout.steps", "set rollout.steps: []"),
    Case("rec-batch-with-triton-autoscaling", "Recommender",
         {"serving.precompute": BATCH, f"{ROLLOUT}.steps": [],
          "serving.triton": {"resources": {"requests": {"cpu": 1}},
                             "autoscaling": {"maxReplicas": 3}}},
         "spec.serving.triton.autoscaling", "remove triton.autoscaling"),
    Case("rec-batch-with-triton-replicas", "Recommender",
         {"serving.precompute": BATCH, f"{ROLLOUT}.steps": [], "serving.triton.replicas": 2},
         "spec.serving.triton.replicas", "remove triton.replicas"),
    Case("rec-precompute-unknown-mode", "Recommender",
         {"serving.precompute": {**BATCH, "mode": "Offline"}},
         "spec.serving.precompute.mode", "Unsupported value"),
    # --- Recommender: rollout ------------------------------------------------------------------
    Case("rec-weights-decreasing", "Recommender",
         {f"{ROLLOUT}.steps": [{"setWeight": 50}, {"pause": {}}, {"setWeight": 20}]},
         "spec.serving.rollout.steps", "strictly increasing"),
    Case("rec-weights-repeated", "Recommender",
         {f"{ROLLOUT}.steps": [{"setWeight": 20}, {"setWeight": 20}]},
         "spec.serving.rollout.steps", "strictly increasing"),
    Case("rec-weight-over-100", "Recommender", {f"{ROLLOUT}.steps": [{"setWeight": 150}]},
         "spec.serving.rollout.steps[0].setWeight", "less than or equal to 100"),
    Case("rec-step-weight-and-pause", "Recommender",
         {f"{ROLLOUT}.steps": [{"setWeight": 10, "pause": {"duration": "5m"}}]},
         "spec.serving.rollout.steps[0]", "exactly one of setWeight, pause or shadow"),
    Case("rec-range-inverted", "Recommender",
         {f"{ROLLOUT}.analysis.metrics": [{"name": "request-duration",
                                           "thresholdRange": {"min": 50, "max": 10}}]},
         "spec.serving.rollout.analysis.metrics[0].thresholdRange.min", "must not be above max"),
    Case("rec-unknown-analysis-metric", "Recommender",
         {f"{ROLLOUT}.analysis.metrics": [{"name": "revenue", "thresholdRange": {"min": 1}}]},
         "spec.serving.rollout.analysis.metrics[0].name",
         "is a built-in metric name without prometheus, or any other name with a prometheus"),
    Case("rec-prometheus-under-a-built-in-name", "Recommender",
         {f"{ROLLOUT}.analysis.metrics": [{
             "name": "request-success-rate", "thresholdRange": {"min": 1},
             "prometheus": {"address": "http://prom:9090", "query": "up"}}]},
         "spec.serving.rollout.analysis.metrics[0].name", "is a built-in metric name"),
    Case("rec-prometheus-unknown-placeholder", "Recommender",
         {f"{ROLLOUT}.analysis.metrics": [{
             "name": "gateway-errors", "thresholdRange": {"max": 1},
             "prometheus": {"address": "http://prom:9090",
                            "query": 'sum(rate(x{variant="{{varaint}}"}[{{interval}}]))'}}]},
         "spec.serving.rollout.analysis.metrics[0].prometheus.query",
         "uses an unknown placeholder"),
    Case("rec-two-kinds-in-one-step", "Recommender",
         {f"{ROLLOUT}.steps": [{"setWeight": 10, "shadow": {"duration": "1m"}}]},
         "spec.serving.rollout.steps[0]", "exactly one of setWeight, pause or shadow"),
    Case("rec-interval-in-words", "Recommender", {f"{ROLLOUT}.analysis.interval": "1 minute"},
         "spec.serving.rollout.analysis.interval", "must be a duration such as 30s"),
    Case("rec-pinned-not-a-name", "Recommender", {"serving.pinnedModelVersion": "Movies_V1"},
         "spec.serving.pinnedModelVersion", "should match"),
    # --- Recommender: training -----------------------------------------------------------------
    Case("rec-workers-without-gpus", "Recommender", {"training.numNodes": 4},
         "spec.training.gpusPerNode", "must be set when numNodes > 1"),
    Case("rec-nproc-not-gpus", "Recommender",
         {"training.numNodes": 2, "training.gpusPerNode": 8, "training.numProcPerNode": 4},
         "spec.training.numProcPerNode", "must equal gpusPerNode"),
    Case("rec-gpu-in-resources", "Recommender",
         {"training.resourcesPerNode": {"limits": {"nvidia.com/gpu": 2}}},
         "spec.training.resourcesPerNode", "GPUs are set with gpusPerNode"),
    Case("rec-toleration-exists-with-value", "Recommender",
         {"training.tolerations": [{"key": "gpu", "operator": "Exists", "value": "yes"}]},
         "spec.training.tolerations[0].value", "value must be empty when operator is Exists"),
    Case("rec-timezone-without-schedule", "Recommender", {"training.timeZone": "Etc/UTC"},
         "spec.training.timeZone", "set schedule or remove timeZone"),
    Case("rec-gate-metric-checks-nothing", "Recommender",
         {"training.evaluation.metrics": [{"name": "auc"}]},
         "spec.training.evaluation.metrics[0]", "checks nothing"),
    Case("rec-learning-rate-as-string", "Recommender",
         {"training.hyperParameters": {"learningRate": "0.01"}},
         "spec.training.hyperParameters.learningRate", "must be of type number"),
    Case("rec-bad-queue-name", "Recommender", {"training.queueName": "GPU Queue"},
         "spec.training.queueName", "should match"),
    Case("rec-warm-start-window-in-days", "Recommender",
         {"training.warmStart": {"enabled": True, "window": "7d"}},
         "spec.training.warmStart.window", "a day is 24h"),
    Case("rec-warm-start-window-too-short", "Recommender",
         {"training.warmStart": {"enabled": True, "window": "30s"}},
         "spec.training.warmStart.window", "must be at least 1m"),
    Case("rec-warm-start-no-epochs", "Recommender", {"training.warmStart": {"epochs": 0}},
         "spec.training.warmStart.epochs", "greater than or equal to 1"),
    # --- Recommender: models, rules, resources -------------------------------------------------
    Case("rec-topk-over-candidates", "Recommender",
         {"ranking.topK": 500, "retrieval.numCandidates": 100},
         "spec.ranking.topK", "must not exceed retrieval.numCandidates"),
    Case("rec-hnsw-on-flat-index", "Recommender",
         {"retrieval.index": {"type": "Flat", "hnsw": HNSW}},
         "spec.retrieval.index.hnsw", "remove hnsw or set type: HNSW"),
    Case("rec-ef-construction-below-m", "Recommender",
         {"retrieval.index": {"hnsw": {"m": 64, "efConstruction": 16}}},
         "spec.retrieval.index.hnsw.efConstruction", "must be at least m"),
    Case("rec-nprobe-over-nlist", "Recommender",
         {"retrieval.index": {"type": "IVFFlat", "ivf": {"nlist": 16, "nprobe": 32}}},
         "spec.retrieval.index.ivf.nprobe", "must not exceed nlist"),
    Case("rec-l2-metric", "Recommender", {"retrieval.index": {"metric": "L2"}},
         "spec.retrieval.index.metric", "L2 is not supported yet"),
    Case("rec-embedding-too-small", "Recommender", {"retrieval.embeddingDim": 4},
         "spec.retrieval.embeddingDim", "greater than or equal to 8"),
    Case("rec-request-over-limit", "Recommender",
         {"serving.triton.resources": {"requests": {"cpu": "4"}, "limits": {"cpu": "2"}}},
         "spec.serving.triton.resources.requests", "must not exceed the limit"),
    Case("rec-bad-quantity", "Recommender",
         {"serving.gateway.resources": {"limits": {"memory": "lots"}}},
         "spec.serving.gateway.resources.limits.memory", "should match"),
    Case("rec-in-without-values", "Recommender",
         {MATCH: {"matchExpressions": [{"key": "genre", "operator": "In"}]}},
         "spec.filtering.itemSelector.matchExpressions[0].values", "need at least one value"),
    Case("rec-gt-not-a-number", "Recommender",
         {MATCH: {"matchExpressions": [{"key": "year", "operator": "Gt", "values": ["new"]}]}},
         "spec.filtering.itemSelector.matchExpressions[0].values", "one numeric value"),
    Case("rec-boost-factor-zero", "Recommender",
         {"ordering": {"boosts": [{"name": "new", "factor": 0,
                                   "matchExpressions": [{"key": "new", "operator": "Exists"}]}]}},
         "spec.ordering.boosts[0].factor", "greater than 0"),
    Case("rec-boost-duplicate-name", "Recommender",
         {"ordering": {"boosts": [
             {"name": "new", "factor": 2, "matchExpressions": [{"key": "a", "operator": "Exists"}]},
             {"name": "new", "factor": 3, "matchExpressions": [{"key": "b", "operator": "Exists"}]},
         ]}},
         "spec.ordering.boosts[1]", "Duplicate value"),
    Case("rec-feature-view-for-both", "Recommender",
         {"featureViews": {"user": [{"name": "shared"}], "item": [{"name": "shared"}]}},
         "spec.featureViews.item", "list it under user or item, not both"),
    Case("rec-same-id-columns", "Recommender", {"interactions.itemIdColumn": "user_id"},
         "spec.interactions.itemIdColumn", "must differ from userIdColumn"),
    Case("rec-typo-in-field-name", "Recommender", {"retrival": {"numCandidates": 100}},
         'unknown field "spec.retrival"', ""),
    Case("rec-no-stores", "Recommender", {"stores": DELETE}, "spec.stores", "Required value"),
    # --- Recommender: drift --------------------------------------------------------------------
    Case("rec-psi-threshold-too-high", "Recommender", {"drift": {**DRIFT, "threshold": 5.0}},
         "spec.drift.threshold", "PSI takes 0.01–2"),
    Case("rec-kl-threshold-too-high", "Recommender",
         {"drift": {**DRIFT, "method": "KL", "threshold": 1.5}},
         "spec.drift.threshold", "KL takes 0.001–1"),
    Case("rec-drift-unknown-action", "Recommender", {"drift": {**DRIFT, "action": "Rollback"}},
         "spec.drift.action", "Unsupported value"),
    Case("rec-drift-zero-checks", "Recommender", {"drift": {**DRIFT, "consecutiveChecks": 0}},
         "spec.drift.consecutiveChecks", "greater than or equal to 1"),
    # --- ModelVersion --------------------------------------------------------------------------
    Case("mv-import-with-training", "ModelVersion",
         {**IMPORT, "training": {"hyperParameters": {"epochs": 3}}},
         "spec.training", "is not trained"),
    Case("mv-import-for-drift", "ModelVersion", {**IMPORT, "reason": "Drift"},
         "spec.reason", "has reason Manual"),
    Case("mv-digest-without-import", "ModelVersion", {"digest": "sha256:" + "a" * 64},
         "spec.digest", "verifies an imported artifact"),
    Case("mv-md5-digest", "ModelVersion", {**IMPORT, "digest": "md5:0123456789abcdef"},
         "spec.digest", "should match"),
    Case("mv-unknown-reason", "ModelVersion", {"reason": "Cron"},
         "spec.reason", "Unsupported value"),
    Case("mv-no-recommender", "ModelVersion", {"recommenderRef": DELETE},
         "spec.recommenderRef", "Required value"),
]  # fmt: skip


def test_the_table_is_large_and_covers_every_kind() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)
    assert {c.kind for c in CASES} == {k.kind for k in KINDS}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_models_refuse_it_too(case: Case) -> None:
    model = next(k.spec_model for k in KINDS if k.kind == case.kind)
    with pytest.raises(ValidationError) as err:
        model.model_validate(_spec(case))
    leaf = case.path.split('"')[1] if '"' in case.path else case.path
    assert leaf.rsplit(".", 1)[-1].split("[")[0] in str(err.value)


@pytest.fixture(scope="module")
def invalid_namespace(testbed: Any) -> Any:
    """One namespace for the whole table: dry runs create nothing in it."""
    install_crds(testbed)
    name = f"api-invalid-objects-{uuid.uuid4().hex[:6]}"
    testbed.kubectl("create", "namespace", name, check=False)
    yield name
    testbed.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_apiserver_refuses_it_naming_the_field(
    case: Case, testbed: Any, invalid_namespace: str
) -> None:
    obj = manifest(case.kind, "invalid", _spec(case))
    result = testbed.kubectl(
        "create", "--dry-run=server", "-n", invalid_namespace, "-f", "-",
        input=json.dumps(obj), check=False,
    )  # fmt: skip
    assert result.returncode != 0, f"accepted: {json.dumps(obj)}"
    message = result.stderr
    assert case.path in message, message
    assert case.says in message, message


def test_a_valid_base_is_accepted(testbed: Any, invalid_namespace: str) -> None:
    """Each case breaks exactly one thing: without the change, the object is fine."""
    for kind, spec in BASE.items():
        result = testbed.kubectl(
            "create", "--dry-run=server", "-n", invalid_namespace, "-f", "-",
            input=json.dumps(manifest(kind, "valid", spec)), check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
