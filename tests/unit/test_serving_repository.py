"""The Triton model repository built from a real (tiny) artifact, and the models it runs,
checked in-process against the trained networks fed the training encoders' indices."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from offline_frames import tiny_tables, train_config, write_config, write_tables

from recsys_workloads.artifact_store import Store
from recsys_workloads.runtime import EXIT_BAD_INPUT, BadInputError
from recsys_workloads.scoring import FUSION_GRID, SCORING_FILE, ScoreFusion, fuse
from recsys_workloads.serving.inference import ItemFeatureTable, RankerScorer, RankQuery, UserTower
from recsys_workloads.serving.repository import build_repository, item_feature_table, main
from recsys_workloads.train.evaluate import fusion_label
from recsys_workloads.train.export import LoadedModel, load_model_artifact
from recsys_workloads.train.inference import rank, user_vectors
from recsys_workloads.train.pipeline import run as train
from testbed.triton_server import MODEL_PRELUDE


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("serving-repo")
    data = write_tables(root / "data", tiny_tables())
    artifact = f"file://{root}/artifact"
    # A history input, explicitly: the user tower's history path must be exercised.
    model = {
        "embeddingDim": 8,
        "featureDim": 4,
        "towerHidden": [16],
        "rankerHidden": [16],
        "historyLength": 5,
    }
    train(train_config(data, artifact, evaluation={"baselines": []}, model=model))
    summary = build_repository(
        {"artifactUri": artifact, "repositoryUri": str(root / "repo"), "maxBatchSize": 16}
    )
    return {"root": root, "data": data, "artifact": artifact, "summary": summary}


def trained(built: dict[str, Any]) -> LoadedModel:
    return load_model_artifact(Store({}), built["artifact"])


def test_layout_names_and_configs(built: dict[str, Any]) -> None:
    repo = built["root"] / "repo"
    assert built["summary"]["models"] == {
        "userTower": "test-v1.user-tower",
        "ranker": "test-v1.ranker",
    }
    tower = (repo / "test-v1.user-tower" / "config.pbtxt").read_text()
    ranker = (repo / "test-v1.ranker" / "config.pbtxt").read_text()
    for text in (tower, ranker):
        assert 'backend: "python"' in text
        assert "max_batch_size: 16" in text
        assert "dynamic_batching" in text
        assert built["summary"]["artifactDigest"] in text
    assert 'name: "test-v1.user-tower"' in tower
    assert 'name: "embedding" data_type: TYPE_FP32 dims: [ 8 ]' in tower
    assert 'name: "item_ids" data_type: TYPE_INT64 dims: [ -1 ] allow_ragged_batch: true' in ranker
    for name in ("test-v1.user-tower", "test-v1.ranker"):
        code = (repo / name / "1" / "model.py").read_text()
        # the testbed's server finds this environment's packages only through its prelude
        assert code.startswith(MODEL_PRELUDE)
        compile(code, "model.py", "exec")


def columns(rows: list[dict[str, Any] | None], names: list[str]) -> dict[str, list[Any]]:
    return {n: [None if r is None else r.get(n) for r in rows] for n in names}


HISTORIES = [[105, 109, 113], [], [101, 150, 99999], None, [120]]


def test_user_tower_matches_the_training_helpers_inference(built: dict[str, Any]) -> None:
    """Same vectors as recsys_workloads.train.inference (the offline side's own serving path,
    pyarrow encoders), from the same raw features and histories."""
    model = trained(built)
    assert model.shape.history_length > 0  # the history input is exercised
    tower = UserTower.load(built["root"] / "repo" / "test-v1.user-tower" / "1")
    users = pq.read_table(built["data"]["users"])
    by_id = {r["user_id"]: r for r in users.to_pylist()}
    ids = [1, 2, 40, 79, 5000]  # 5000: never seen, no features
    raw = [by_id.get(u) for u in ids]
    got = tower.embed(ids, raw, HISTORIES)
    names = [f.name for f in model.user_encoder.features]
    want = user_vectors(model, ids, columns(raw, names), [h or [] for h in HISTORIES])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    # the history matters: without it the same user gets another vector
    assert not np.allclose(tower.embed([1], [raw[0]]), got[:1], atol=1e-4)


def test_ranker_matches_the_training_helpers_inference_and_batches_without_mixing(
    built: dict[str, Any],
) -> None:
    model = trained(built)
    scorer = RankerScorer.load(built["root"] / "repo" / "test-v1.ranker" / "1")
    users = {r["user_id"]: r for r in pq.read_table(built["data"]["users"]).to_pylist()}
    items_by_id = {r["item_id"]: r for r in pq.read_table(built["data"]["items"]).to_pylist()}
    items = np.array([101, 102, 150, 200, 99999], dtype=np.int64)  # 99999: unknown item
    queries = [
        RankQuery(3, users[3], items, [101, 104]),
        RankQuery(8, users[8], items[:2].copy()),
        RankQuery(3, users[3], items[::-1].copy(), [101, 104]),
    ]
    together = scorer.score(queries)
    alone = [scorer.score([q])[0] for q in queries]
    for a, b in zip(together, alone, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert [t.size for t in together] == [5, 2, 5]
    np.testing.assert_allclose(together[2], together[0][::-1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(together[0], together[0][0])  # items are told apart
    assert not np.allclose(together[1], together[0][:2])  # and users

    user_names = [f.name for f in model.user_encoder.features]
    item_names = [f.name for f in model.item_encoder.features]
    item_rows = [items_by_id.get(int(i)) for i in items]
    want = rank(
        model,
        [3] * items.size,
        columns([users[3]] * items.size, user_names),
        items.tolist(),
        columns(item_rows, item_names),
        [[101, 104]] * items.size,
    )
    np.testing.assert_allclose(together[0], want, rtol=1e-5, atol=1e-5)


def test_the_artifact_carries_the_fusion_its_evaluation_applied(built: dict[str, Any]) -> None:
    """scoring.json (what the gateway applies) is the fusion metrics.json was measured with,
    and the retrieval scores it weighs are the serving user tower's vector · the exported item
    vectors (what the index holds and its search returns)."""
    model = trained(built)
    artifact = Path(built["artifact"].removeprefix("file://"))
    metrics = json.loads((artifact / "metrics.json").read_text())
    chosen = metrics["served"]["fusion"]
    assert model.fusion == ScoreFusion(chosen["rankerWeight"], chosen["retrievalWeight"])
    assert model.fusion in FUSION_GRID
    assert json.loads((artifact / SCORING_FILE).read_text()) == model.fusion.to_json()
    assert set(chosen[next(k for k in chosen if k.startswith("testNdcg@"))]) == {
        fusion_label(f) for f in FUSION_GRID
    }
    ids = np.load(artifact / "embeddings" / "item_ids.npy")
    vectors = np.load(artifact / "embeddings" / "item_embeddings.npy")
    tower = UserTower.load(built["root"] / "repo" / "test-v1.user-tower" / "1")
    users = {r["user_id"]: r for r in pq.read_table(built["data"]["users"]).to_pylist()}
    user = tower.embed([3], [users[3]], [[101, 104]])[0]
    scorer = RankerScorer.load(built["root"] / "repo" / "test-v1.ranker" / "1")
    [logits] = scorer.score([RankQuery(3, users[3], ids[:5].copy(), [101, 104])])
    got = fuse(model.fusion, logits, vectors[:5] @ user)
    want = model.fusion.ranker_weight * logits.astype(np.float64) + (
        model.fusion.retrieval_weight * (vectors[:5].astype(np.float64) @ user)
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_empty_queries_score_to_empty_arrays(built: dict[str, Any]) -> None:
    scorer = RankerScorer.load(built["root"] / "repo" / "test-v1.ranker" / "1")
    out = scorer.score([RankQuery(3, None, np.zeros(0, dtype=np.int64))])
    assert [o.size for o in out] == [0]


def test_item_feature_table_round_trip_and_lookup() -> None:
    table = ItemFeatureTable(
        np.array([3, 5, 9], dtype=np.int64), {"g": np.array([[1, 2], [3, 0], [0, 0]])}
    )
    back = ItemFeatureTable.from_npz(table.to_npz())
    np.testing.assert_array_equal(back.item_ids, table.item_ids)
    np.testing.assert_array_equal(back.features["g"], table.features["g"])
    assert back.rows_of(np.array([5, 4, 9, 100])).tolist() == [1, 3, 2, 3]


def test_item_features_without_an_items_table_name_the_field(built: dict[str, Any]) -> None:
    model = trained(built)
    with pytest.raises(BadInputError, match=r"data\.itemsUri"):
        item_feature_table(model.item_encoder, np.array([101]), None)
    items = pa.table({"item_id": pa.array([101], pa.int64())})
    with pytest.raises(BadInputError, match="event_timestamp"):
        item_feature_table(model.item_encoder, np.array([101]), items)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"maxBatchSize": 0}, "maxBatchSize"),
        ({"devices": "cuda"}, "devices: unknown field"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_bad_config_is_bad_input_naming_the_field(
    tmp_path: Path, built: dict[str, Any], change: dict[str, Any], field: str
) -> None:
    cfg = {"artifactUri": built["artifact"], "repositoryUri": str(tmp_path / "r"), **change}
    term = tmp_path / "term"
    code = main(
        ["--config", str(write_config(tmp_path / "c.json", cfg)), "--termination-log", str(term)]
    )
    assert code == EXIT_BAD_INPUT
    assert field in json.loads(term.read_text())["message"]


def test_missing_artifact_is_bad_input(tmp_path: Path) -> None:
    cfg = {"artifactUri": f"file://{tmp_path}/nothing", "repositoryUri": str(tmp_path / "r")}
    term = tmp_path / "term"
    code = main(
        ["--config", str(write_config(tmp_path / "c.json", cfg)), "--termination-log", str(term)]
    )
    assert code == EXIT_BAD_INPUT
    assert "nothing" in json.loads(term.read_text())["message"]
