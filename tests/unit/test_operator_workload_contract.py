"""The configs the operator renders are the configs the workloads accept.

The operator and the workloads meet only through these JSON documents; this test renders them
from every example a user may apply and parses them with the workloads' own validators, so a
field renamed on either side fails here rather than in a user's Job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from recsys_operator.api.featureview import FeatureView
from recsys_operator.api.modelversion import ModelVersion
from recsys_operator.api.recommender import Recommender
from recsys_operator.planning import featureview as fv_planner
from recsys_operator.planning.modelversion import gate_metrics
from recsys_operator.planning.training import FeatureSources, index_config, train_config
from recsys_workloads.index_build import parse_index_config
from recsys_workloads.materialize import parse_config as parse_materialize_config
from recsys_workloads.train.config import parse_train_config
from recsys_workloads.train.export import headline_metrics

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
META = {
    "namespace": "ns",
    "uid": "u-1",
    "generation": 1,
    "creationTimestamp": "2026-01-01T00:00:00Z",
}


def _docs(kind: str) -> list[dict[str, Any]]:
    docs = []
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == kind:
                doc["metadata"] = {**META, **doc["metadata"]}
                docs.append(doc)
    return docs


@pytest.mark.parametrize("doc", _docs("FeatureView"), ids=lambda d: d["metadata"]["name"])
def test_materialize_config_is_accepted(doc: dict[str, Any]) -> None:
    fv = FeatureView.model_validate(doc)
    parsed = parse_materialize_config(fv_planner.materialize_config(fv))
    assert parsed.join_key == fv.spec.entity.join_keys[0]
    assert [f.name for f in parsed.features] == [f.name for f in fv.spec.features]
    if fv.spec.materialization.backfill is not None:
        parse_materialize_config(fv_planner.materialize_config(fv, as_of="2026-01-01T00:00:00Z"))


@pytest.mark.parametrize("doc", _docs("Recommender"), ids=lambda d: d["metadata"]["name"])
def test_train_and_index_configs_are_accepted(doc: dict[str, Any]) -> None:
    rec = Recommender.model_validate(doc)
    mv = ModelVersion.model_validate(
        {
            "apiVersion": "recsys.dev/v1alpha1",
            "kind": "ModelVersion",
            "metadata": {**META, "name": f"{rec.metadata.name}-v1"},
            "spec": {"recommenderRef": {"name": rec.metadata.name}, "reason": "Initial"},
        }
    )
    sources = FeatureSources(
        users_uri="s3://d/users/",
        user_features=["age"],
        items_uri="s3://d/items/",
        item_features=["genres"],
    )
    train = parse_train_config(train_config(rec, mv, sources))
    assert train.artifact_uri.endswith(f"/models/{rec.metadata.name}-v1")
    assert rec.spec.training.evaluation.k in train.evaluation.k
    assert train.model.embedding_dim == rec.spec.retrieval.embedding_dim
    index = parse_index_config(index_config(rec, mv))
    assert index.model_artifact_uri == train.artifact_uri
    assert index.validation.min_recall == rec.spec.retrieval.index.min_recall


def test_every_example_kind_is_covered() -> None:
    assert _docs("FeatureView")
    assert _docs("Recommender")


def test_the_gate_reads_the_headline_metrics_training_reports() -> None:
    nested = {
        "retrieval": {"twoTower": {"recall@20": 0.13, "ndcg@20": 0.2}, "als": {"recall@20": 0.11}},
        "ranking": {"ranker": {"auc": 0.76, "ndcg@10": 0.5}},
    }
    assert gate_metrics(headline_metrics(nested), 20) == {
        "recall@20": 0.13,
        "ndcg@20": 0.2,
        "auc": 0.76,
    }
