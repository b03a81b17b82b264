"""MovieLens-100k through the offline half of the loop: dataset → train → evaluate → export →
index, each step through its real entry point, then a retrieval the way serving will do it.

Small on purpose (a few hundred training steps at most, on the CPU) so it runs in a couple of
minutes next to other work; the quality figures come from benchmarks/train_quality.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest

from recsys_workloads import ann_index
from recsys_workloads.artifact_store import ArtifactReader, Store
from recsys_workloads.datasets import movielens
from recsys_workloads.index_build import load_index
from recsys_workloads.index_build import main as index_main
from recsys_workloads.runtime import EXIT_OK
from recsys_workloads.train import inference
from recsys_workloads.train.__main__ import main as train_main
from recsys_workloads.train.data import timestamps_us
from recsys_workloads.train.export import load_model_artifact


def run(entry: Any, tmp: Path, name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    config = tmp / f"{name}.json"
    config.write_text(json.dumps(cfg))
    term = tmp / f"{name}.termination"
    code = entry(["--config", str(config), "--termination-log", str(term)])
    summary: dict[str, Any] = json.loads(term.read_text())
    assert code == EXIT_OK, summary
    return summary


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("offline")
    paths = movielens.write_dataset(str(tmp / "ml-100k"))
    artifact = f"file://{tmp}/models/ml-v1"
    train = run(
        train_main,
        tmp,
        "train",
        {
            "version": "ml-v1",
            "seed": 11,
            "data": {
                "interactionsUri": paths.interactions,
                "usersUri": paths.users,
                "itemsUri": paths.items,
            },
            "artifactUri": artifact,
            "model": {
                "embeddingDim": 32,
                "featureDim": 8,
                "towerHidden": [64],
                "rankerHidden": [32],
            },
            "training": {"epochs": 2, "batchSize": 512, "maxStepsPerEpoch": 40, "device": "cpu"},
            "evaluation": {"als": {"factors": 32, "iterations": 5}},
        },
    )
    flat = run(
        index_main,
        tmp,
        "index-flat",
        {
            "version": "ml-v1",
            "modelArtifactUri": artifact,
            "indexUri": f"file://{tmp}/indexes/ml-v1",
        },
    )
    hnsw = run(
        index_main,
        tmp,
        "index-hnsw",
        {
            "version": "ml-v1",
            "modelArtifactUri": artifact,
            "indexUri": f"file://{tmp}/indexes/ml-v1-hnsw",
            "index": {"kind": "hnsw"},
        },
    )
    ivf = run(
        index_main,
        tmp,
        "index-ivf",
        {
            "version": "ml-v1",
            "modelArtifactUri": artifact,
            "indexUri": f"file://{tmp}/indexes/ml-v1-ivf",
            "index": {"kind": "ivfFlat", "nlist": 40, "nprobe": 8},
        },
    )
    return {
        "tmp": tmp,
        "paths": paths,
        "artifact": artifact,
        "train": train,
        "flat": flat,
        "hnsw": hnsw,
        "ivf": ivf,
    }


def test_training_beats_chance_and_reports_every_metric(offline: dict[str, Any]) -> None:
    metrics = offline["train"]["metrics"]
    for model in ("twoTower", "popularity", "als"):
        for k in (10, 20, 50):
            assert 0.0 <= metrics[f"{model}.recall@{k}"] <= 1.0
            assert 0.0 <= metrics[f"{model}.ndcg@{k}"] <= 1.0
    for model in ("ranker", "twoTower", "popularity", "als"):
        assert 0.0 <= metrics[f"{model}.ranking.auc"] <= 1.0
    full = json.loads((Path(offline["artifact"][7:]) / "metrics.json").read_text())
    catalogue = full["split"]["catalogItems"]
    assert catalogue > 1500
    assert full["split"]["evaluatedUsers"] > 50
    # a random ranking would find about 50 / catalogue of a user's test items in its top 50
    assert metrics["twoTower.recall@50"] > 3 * 50 / catalogue
    assert metrics["ranker.ranking.auc"] > 0.6


def test_index_over_the_exported_embeddings(offline: dict[str, Any]) -> None:
    flat, hnsw = offline["flat"], offline["hnsw"]
    assert flat["indexType"] == "flat"
    assert flat["recall"] == 1.0
    assert hnsw["indexType"] == "hnsw"
    assert hnsw["recall"] >= 0.95
    assert flat["itemCount"] == hnsw["itemCount"] == offline["train"]["itemCount"]
    assert flat["modelDigest"] == hnsw["modelDigest"] == offline["train"]["digest"]
    ivf = offline["ivf"]
    assert ivf["indexType"] == "ivfFlat"
    assert ivf["recall"] >= 0.95  # the trained model's held-out users, against exact search
    assert ivf["nprobe"] >= 8
    assert ivf["itemCount"] == flat["itemCount"]


def test_serving_path_user_tower_then_index(offline: dict[str, Any]) -> None:
    """What the gateway will do: raw user features → exported encoders → user tower → index →
    ranker over the candidates."""
    store = Store({})
    model = load_model_artifact(store, offline["artifact"])
    index, manifest = load_index(store, f"file://{offline['tmp']}/indexes/ml-v1-hnsw")
    assert manifest["itemCount"] == offline["train"]["itemCount"]

    users = {row["user_id"]: row for row in pq.read_table(offline["paths"].users).to_pylist()}
    user_ids = [1, 2, 3, 500, 943]
    features = {
        name: [users[u][name] for u in user_ids] for name in ("age", "gender", "occupation")
    }
    # the user's items before the training cutoff, most recent first: what serving keeps as
    # the "seen" list it filters on
    cutoff = ArtifactReader(store, offline["artifact"], "model").read_json("metrics.json")["split"][
        "cutoff"
    ]
    table = pq.read_table(offline["paths"].interactions)
    times = timestamps_us(table.column("event_timestamp"))
    users_col, items_col = table.column("user_id").to_numpy(), table.column("item_id").to_numpy()
    recent_first = np.argsort(-times, kind="stable")
    history = [
        [
            int(i)
            for i in items_col[recent_first][
                (users_col[recent_first] == u) & (times[recent_first] < cutoff)
            ]
        ]
        for u in user_ids
    ]
    assert model.shape.history_length == 50
    vectors = inference.user_vectors(model, user_ids, features, history)
    scores, found = ann_index.search(index, vectors, 20)
    reader = ArtifactReader(store, offline["artifact"], "model")
    item_ids = reader.read_npy("embeddings/item_ids.npy")
    assert np.isin(found, item_ids).all()
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    exact = ann_index.exact_top_k(
        reader.read_npy("embeddings/item_embeddings.npy"), item_ids, vectors, 20
    )
    assert ann_index.recall_at_k(found, exact) >= 0.9
    items = {row["item_id"]: row for row in pq.read_table(offline["paths"].items).to_pylist()}
    candidates = [int(i) for i in found[0]]
    scores = inference.rank(
        model,
        [user_ids[0]] * len(candidates),
        {name: [values[0]] * len(candidates) for name, values in features.items()},
        candidates,
        {
            "genres": [items[i]["genres"] for i in candidates],
            "release_year": [items[i]["release_year"] for i in candidates],
        },
        user_history=[history[0]] * len(candidates),
    )
    assert scores.shape == (20,)
    assert np.isfinite(scores).all()


def test_ranker_and_profile_are_usable_for_serving_and_drift(offline: dict[str, Any]) -> None:
    artifact = Path(offline["artifact"][7:])
    profile = json.loads((artifact / "profile.json").read_text())
    assert set(profile["features"]) == {
        "user.age",
        "user.gender",
        "user.occupation",
        "item.genres",
        "item.release_year",
    }
    occupation = profile["features"]["user.occupation"]
    assert len(occupation["bins"]) == 22  # "missing" + 21 MovieLens occupations
    assert sum(occupation["entityRows"]["probabilities"]) == pytest.approx(1.0)
    popular = json.loads((artifact / "popular_items.json").read_text())
    assert len(popular) == 100
    assert popular[0]["count"] >= popular[-1]["count"]
    card = (artifact / "model_card.md").read_text()
    assert "ml-v1" in card
    assert "| als |" in card
