"""The configs the operator renders are the configs the workloads accept.

The operator and the workloads meet only through these JSON documents; this test renders them
from every example a user may apply and parses them with the workloads' own validators, so a
field renamed on either side fails here rather than in a user's Job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from api_objects import model_version, recommender

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
from recsys_workloads.train.models import EntityShape, ModelShape, Ranker, TwoTower

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
        "retrieval": {"twoTower": {"recall@20": 0.13, "ndcg@20": 0.2},
                      "als": {"recall@20": 0.11}},
        "ranking": {"ranker": {"auc": 0.76, "ndcg@10": 0.5}},
    }
    assert gate_metrics(headline_metrics(nested), 20) == {
        "recall@20": 0.13, "ndcg@20": 0.2, "auc": 0.76}


V1 = model_version("movies-v1", reason="Initial")


def _widths(mlp: torch.nn.Module) -> list[int]:
    return [layer.out_features for layer in mlp if isinstance(layer, torch.nn.Linear)]


def test_hidden_units_are_the_layer_widths_of_the_towers_and_the_ranker() -> None:
    rec = recommender(
        retrieval={"embeddingDim": 16, "hiddenUnits": [48, 24]},
        ranking={"hiddenUnits": [40]},
    )
    cfg = parse_train_config(train_config(rec, V1, FeatureSources()))
    assert (cfg.model.tower_hidden, cfg.model.ranker_hidden) == ([48, 24], [40])
    ids_only = EntityShape(10, ())
    shape = ModelShape(
        user=ids_only,
        item=ids_only,
        embedding_dim=cfg.model.embedding_dim,
        feature_dim=cfg.model.feature_dim,
        tower_hidden=tuple(cfg.model.tower_hidden),
        temperature=cfg.model.temperature,
        ranker_cross_layers=cfg.model.ranker_cross_layers,
        ranker_hidden=tuple(cfg.model.ranker_hidden),
    )
    two_tower, ranker = TwoTower(shape), Ranker(shape)
    assert _widths(two_tower.user_tower.mlp) == [48, 24, 16]
    assert _widths(two_tower.item_tower.mlp) == [48, 24, 16]
    assert _widths(ranker.deep) == [40, 1]
    # unset: the trainer's defaults, which the field descriptions name
    default = parse_train_config(train_config(recommender(), V1, FeatureSources()))
    assert (default.model.tower_hidden, default.model.ranker_hidden) == ([128], [128, 64])


def test_ivf_flat_reaches_the_index_build_with_its_lists() -> None:
    rec = recommender(retrieval={"index": {"type": "IVFFlat", "ivf": {"nlist": 256, "nprobe": 8}}})
    params = parse_index_config(index_config(rec, V1)).params()
    assert (params.kind, params.approximate, params.nlist, params.nprobe) == (
        "auto",
        "ivfFlat",
        256,
        8,
    )
    assert params.resolved_kind(rec.spec.retrieval.index.flat_below_items) == "ivfFlat"
    assert params.resolved_kind(rec.spec.retrieval.index.flat_below_items - 1) == "flat"
    defaults = recommender(retrieval={"index": {"type": "IVFFlat"}})
    params = parse_index_config(index_config(defaults, V1)).params()
    assert (params.nlist, params.nprobe) == (1024, 16)  # the API's defaults
    hnsw = parse_index_config(index_config(recommender(), V1)).params()
    assert hnsw.resolved_kind(10**6) == "hnsw"


def test_created_timestamp_field_reaches_the_materializer() -> None:
    doc = _docs("FeatureView")[0]
    doc["spec"]["source"]["createdTimestampField"] = "created"
    fv = FeatureView.model_validate(doc)
    parsed = parse_materialize_config(fv_planner.materialize_config(fv))
    assert parsed.source.created_timestamp_column == "created"
