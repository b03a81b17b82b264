"""The training entry point end to end on tiny tables: artifact, determinism, resume, failures."""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
from offline_frames import tiny_tables, train_config, write_config, write_tables

from recsys_workloads.artifact_store import ArtifactReader, Store
from recsys_workloads.runtime import EXIT_BAD_INPUT, EXIT_OK, EXIT_TRANSIENT
from recsys_workloads.train.__main__ import main
from recsys_workloads.train.dataset import EntityRows
from recsys_workloads.train.export import load_model_artifact
from recsys_workloads.train.trainer import FeatureTables


def run_cli(tmp_path: Path, cfg: dict[str, Any], name: str = "run") -> tuple[int, dict[str, Any]]:
    config = write_config(tmp_path / f"{name}.json", cfg)
    term = tmp_path / f"{name}.termination"
    code = main(["--config", str(config), "--termination-log", str(term)])
    return code, json.loads(term.read_text())


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_tables(tmp_path_factory.mktemp("tiny"), tiny_tables())


@pytest.fixture(scope="module")
def published(
    tmp_path_factory: pytest.TempPathFactory, data: dict[str, str]
) -> tuple[Path, dict[str, Any]]:
    root = tmp_path_factory.mktemp("published")
    code, summary = run_cli(root, train_config(data, f"file://{root}/artifact"))
    assert code == EXIT_OK, summary
    return root / "artifact", summary


def test_summary_carries_digest_and_metrics(published: tuple[Path, dict[str, Any]]) -> None:
    artifact, summary = published
    assert summary["status"] == "Succeeded"
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert summary["digest"] == manifest["digest"]
    assert summary["itemCount"] == 100
    metrics = summary["metrics"]
    for model in ("twoTower", "popularity", "als"):
        for k in (5, 10):
            assert 0.0 <= metrics[f"{model}.recall@{k}"] <= 1.0
    assert "ranker.ranking.auc" in metrics
    assert len(json.dumps(summary)) < 4096


def test_model_learns_the_taste_groups(published: tuple[Path, dict[str, Any]]) -> None:
    _, summary = published
    metrics = summary["metrics"]
    # ~17 unseen items of the user's own group among ~92 candidates: a model that learnt the
    # groups gets recall@10 near 0.5; chance is about 0.11 and popularity is flat here
    assert metrics["twoTower.recall@10"] > 0.35
    assert metrics["twoTower.recall@10"] > 3 * metrics["popularity.recall@10"]
    assert metrics["ranker.ranking.auc"] > 0.7


def test_artifact_files_verify_and_rebuild_the_models(
    published: tuple[Path, dict[str, Any]],
) -> None:
    artifact, _ = published
    reader = ArtifactReader(Store({}), str(artifact), "model")
    expected = {
        "config.json",
        "encoders.json",
        "models/architecture.json",
        "models/two_tower.pt",
        "models/ranker.pt",
        "embeddings/item_ids.npy",
        "embeddings/item_embeddings.npy",
        "embeddings/query_user_ids.npy",
        "embeddings/query_embeddings.npy",
        "metrics.json",
        "profile.json",
        "popular_items.json",
        "scoring.json",
        "model_card.md",
        "model_card.json",
    }
    assert set(reader.manifest["files"]) == expected
    for rel in expected:
        reader.read(rel)  # every file matches its sha256
    card = (artifact / "model_card.md").read_text()
    assert "| twoTower |" in card
    assert "Limitations" in card
    profile = json.loads((artifact / "profile.json").read_text())
    genres = profile["features"]["item.genres"]
    assert genres["bins"][0] == "missing"
    assert sum(genres["entityRows"]["probabilities"]) == pytest.approx(1.0)
    assert set(profile["features"]) == {
        "user.age",
        "user.gender",
        "user.occupation",
        "item.genres",
        "item.release_year",
    }


def test_serving_encodes_raw_features_exactly_as_training(
    published: tuple[Path, dict[str, Any]], data: dict[str, str]
) -> None:
    """Raw parquet rows + exported encoders + exported user tower = the exported query vectors."""
    artifact, _ = published
    loaded = load_model_artifact(Store({}), f"file://{artifact}")
    reader = ArtifactReader(Store({}), str(artifact), "model")
    query_ids = reader.read_npy("embeddings/query_user_ids.npy")
    query_vecs = reader.read_npy("embeddings/query_embeddings.npy")
    users = tiny_tables()["users"]
    rows = EntityRows.build(loaded.user_encoder, users)
    tables = FeatureTables(rows, torch.device("cpu"))
    row_idx = rows.rows_as_of(query_ids, None)
    with torch.no_grad():
        vecs = loaded.two_tower.user_tower(
            torch.as_tensor(loaded.user_encoder.ids.encode(query_ids)),
            tables.gather(torch.as_tensor(row_idx)),
        ).numpy()
    np.testing.assert_allclose(vecs, query_vecs, rtol=1e-5, atol=1e-6)
    item_ids = reader.read_npy("embeddings/item_ids.npy")
    items = EntityRows.build(loaded.item_encoder, tiny_tables()["items"])
    with torch.no_grad():
        ivecs = loaded.two_tower.item_tower(
            torch.as_tensor(loaded.item_encoder.ids.encode(item_ids)),
            FeatureTables(items, torch.device("cpu")).gather(
                torch.as_tensor(items.rows_as_of(item_ids, None))
            ),
        ).numpy()
    np.testing.assert_allclose(
        ivecs, reader.read_npy("embeddings/item_embeddings.npy"), rtol=1e-5, atol=1e-6
    )


def test_rerun_after_success_returns_the_published_artifact(
    published: tuple[Path, dict[str, Any]], data: dict[str, str], tmp_path: Path
) -> None:
    artifact, summary = published
    code, again = run_cli(tmp_path, train_config(data, f"file://{artifact}"))
    assert code == EXIT_OK
    assert again["alreadyPublished"] is True
    assert again["digest"] == summary["digest"]


def _weights(artifact: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = torch.load(
        io.BytesIO((artifact / "models/two_tower.pt").read_bytes()), weights_only=True
    )
    return state


def _assert_same_model(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    np.testing.assert_array_equal(
        np.load(a / "embeddings/item_embeddings.npy"), np.load(b / "embeddings/item_embeddings.npy")
    )


def test_same_seed_same_model_other_seed_other_model(data: dict[str, str], tmp_path: Path) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        code, _ = run_cli(tmp_path, train_config(data, str(tmp_path / name), seed=seed), name)
        assert code == EXIT_OK
    _assert_same_model(tmp_path / "a", tmp_path / "b")
    with pytest.raises(AssertionError):
        _assert_same_model(tmp_path / "a", tmp_path / "c")


def test_restart_resumes_from_the_last_epoch_and_ends_identical(
    data: dict[str, str], tmp_path: Path
) -> None:
    straight = train_config(data, str(tmp_path / "straight"), training={"epochs": 3})
    assert run_cli(tmp_path, straight, "straight")[0] == EXIT_OK

    ckpt = str(tmp_path / "ckpt")
    # the first attempt dies after epoch 2 (modelled as a run that only had 2 epochs to do)...
    first = train_config(data, str(tmp_path / "first"), checkpointUri=ckpt, training={"epochs": 2})
    assert run_cli(tmp_path, first, "first")[0] == EXIT_OK
    assert json.loads((tmp_path / "ckpt/latest.json").read_text())["epoch"] == 2
    # ...and the retry picks up at epoch 3
    retry = train_config(data, str(tmp_path / "retry"), checkpointUri=ckpt, training={"epochs": 3})
    code, summary = run_cli(tmp_path, retry, "retry")
    assert code == EXIT_OK
    assert summary["resumedFromEpoch"] == 2
    _assert_same_model(tmp_path / "straight", tmp_path / "retry")
    history = json.loads((tmp_path / "retry/metrics.json").read_text())["training"]["history"]
    assert [h["epoch"] for h in history] == [1.0, 2.0, 3.0]


def test_checkpoint_of_another_config_is_not_resumed(data: dict[str, str], tmp_path: Path) -> None:
    ckpt = str(tmp_path / "ckpt")
    one = train_config(data, str(tmp_path / "one"), checkpointUri=ckpt, training={"epochs": 1})
    assert run_cli(tmp_path, one, "one")[0] == EXIT_OK
    other = train_config(
        data,
        str(tmp_path / "other"),
        checkpointUri=ckpt,
        training={"epochs": 2, "learningRate": 0.02},
    )
    code, summary = run_cli(tmp_path, other, "other")
    assert code == EXIT_OK
    assert summary["resumedFromEpoch"] == 0


@pytest.fixture
def memory_store() -> Iterator[str]:
    fs = fsspec.filesystem("memory")
    yield "memory://recsys-test"
    if fs.exists("/recsys-test"):
        fs.rm("/recsys-test", recursive=True)


def test_artifact_goes_through_fsspec_to_a_non_local_store(
    data: dict[str, str], tmp_path: Path, memory_store: str
) -> None:
    code, summary = run_cli(tmp_path, train_config(data, f"{memory_store}/models/v1"))
    assert code == EXIT_OK, summary
    reader = ArtifactReader(Store({}), f"{memory_store}/models/v1", "model")
    assert reader.manifest["digest"] == summary["digest"]
    assert Store({}).exists(f"{memory_store}/models/v1/checkpoints/latest.json")
    loaded = load_model_artifact(Store({}), f"{memory_store}/models/v1")
    assert loaded.shape.embedding_dim == 8


def test_tampered_artifact_is_refused(
    published: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(published[0], copy)
    (copy / "models/ranker.pt").write_bytes(b"not the ranker")
    from recsys_workloads.runtime import BadInputError

    with pytest.raises(BadInputError, match=r"ranker.pt does not match the sha256"):
        load_model_artifact(Store({}), str(copy))


# --- failures: the exit code tells the Job whether to retry; the message names the fix ---


def _write_interactions(tmp_path: Path, table: pa.Table, data: dict[str, str]) -> dict[str, str]:
    import pyarrow.parquet as pq

    path = tmp_path / "bad_interactions.parquet"
    pq.write_table(table, path)
    return {**data, "interactions": str(path)}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: t.drop_columns(["item_id"]), r"interactions: missing column\(s\) 'item_id'"),
        (
            lambda t: t.set_column(0, "user_id", pc.cast(t["user_id"], pa.string())),
            r"column 'user_id' must be an integer type",
        ),
        (lambda t: t.slice(0, 0), r"interactions: the table has no rows"),
    ],
    ids=["missing-column", "wrong-dtype", "empty"],
)
def test_bad_interactions_fail_fast_naming_the_column(
    data: dict[str, str], tmp_path: Path, mutate: Any, message: str
) -> None:
    bad = _write_interactions(tmp_path, mutate(tiny_tables()["interactions"]), data)
    code, summary = run_cli(tmp_path, train_config(bad, str(tmp_path / "out")))
    assert code == EXIT_BAD_INPUT
    assert summary["reason"] == "BadInput"
    assert summary["message"].startswith("interactions") or "interactions" in summary["message"]
    import re

    assert re.search(message, summary["message"]), summary["message"]
    assert not (tmp_path / "out/manifest.json").exists()


def test_items_table_with_wrong_key_type(data: dict[str, str], tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    items = tiny_tables()["items"]
    bad = items.set_column(0, "item_id", pc.cast(items["item_id"], pa.float64()))
    path = tmp_path / "items.parquet"
    pq.write_table(bad, path)
    code, summary = run_cli(
        tmp_path, train_config({**data, "items": str(path)}, str(tmp_path / "o"))
    )
    assert code == EXIT_BAD_INPUT
    assert "items table: column 'item_id' must be an integer type" in summary["message"]


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"model": {"embedingDim": 8}}, "model.embedingDim: unknown field"),
        ({"training": {"epochs": 0}}, "training.epochs"),
        ({"training": {"batchSize": "big"}}, "training.batchSize"),
        ({"evaluation": {"holdoutFraction": 1.5}}, "evaluation.holdoutFraction"),
        ({"data": {"usersUri": None}}, "data.interactionsUri: required field is missing"),
        ({"features": {"user": ["age", "shoe_size"]}}, "features.user: ['shoe_size']"),
    ],
    ids=["typo", "zero-epochs", "wrong-type", "out-of-range", "missing-uri", "unknown-feature"],
)
def test_bad_config_is_bad_input_naming_the_field(
    data: dict[str, str], tmp_path: Path, patch: dict[str, Any], field: str
) -> None:
    cfg = train_config(data, str(tmp_path / "out"), **patch)
    if "data" in patch:
        cfg["data"] = patch["data"]
    code, summary = run_cli(tmp_path, cfg)
    assert code == EXIT_BAD_INPUT, summary
    assert field in summary["message"]


def test_missing_config_and_missing_data_file(data: dict[str, str], tmp_path: Path) -> None:
    term = tmp_path / "t"
    assert (
        main(["--config", str(tmp_path / "none.json"), "--termination-log", str(term)])
        == EXIT_BAD_INPUT
    )
    assert "does not exist" in json.loads(term.read_text())["message"]
    gone = {**data, "interactions": str(tmp_path / "gone.parquet")}
    code, summary = run_cli(tmp_path, train_config(gone, str(tmp_path / "out")))
    assert code == EXIT_BAD_INPUT
    assert "gone.parquet does not exist" in summary["message"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_unreachable_artifact_store_is_transient(data: dict[str, str], tmp_path: Path) -> None:
    options = {
        "anon": True,
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{_closed_port()}"},
        "config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 1}},
    }
    cfg = train_config(data, "s3://models/movies/v1", storageOptions=options)
    code, summary = run_cli(tmp_path, cfg)
    assert code == EXIT_TRANSIENT
    assert summary["reason"] == "Transient"
    assert "artifact store unreachable at s3://models/movies/v1" in summary["message"]


def test_damaged_checkpoint_costs_epochs_not_the_run(data: dict[str, str], tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "latest.json").write_text('{"epoch": 1, "fi')  # torn by a killed writer
    cfg = train_config(data, str(tmp_path / "out"), checkpointUri=str(ckpt))
    code, summary = run_cli(tmp_path, cfg)
    assert code == EXIT_OK, summary
    assert summary["resumedFromEpoch"] == 0
    assert json.loads((ckpt / "latest.json").read_text())["epoch"] == 3


def test_inference_from_raw_online_values_matches_training(
    published: tuple[Path, dict[str, Any]],
) -> None:
    """The gateway's path: values as the online store returns them, per entity."""
    from recsys_workloads.train import inference

    artifact, _ = published
    loaded = load_model_artifact(Store({}), str(artifact))
    reader = ArtifactReader(Store({}), str(artifact), "model")
    query_ids = reader.read_npy("embeddings/query_user_ids.npy")[:7]
    users = {row["user_id"]: row for row in tiny_tables()["users"].to_pylist()}
    features = {
        name: [users[int(u)][name] for u in query_ids] for name in ("age", "gender", "occupation")
    }
    vecs = inference.user_vectors(loaded, query_ids.tolist(), features)
    expected = reader.read_npy("embeddings/query_embeddings.npy")[:7]
    np.testing.assert_allclose(vecs, expected, rtol=1e-5, atol=1e-6)
    # a feature the request lacks counts as missing, not as an error, and changes the vector
    partial = inference.user_vectors(loaded, query_ids.tolist(), {"age": features["age"]})
    assert partial.shape == vecs.shape
    assert not np.allclose(partial, vecs)
    items = tiny_tables()["items"].to_pylist()[:5]
    scores = inference.rank(
        loaded,
        [int(query_ids[0])] * 5,
        {name: [features[name][0]] * 5 for name in features},
        [row["item_id"] for row in items],
        {
            "genres": [row["genres"] for row in items],
            "release_year": [row["release_year"] for row in items],
        },
    )
    assert scores.shape == (5,)
    assert np.isfinite(scores).all()


def test_history_input_round_trips_through_the_artifact(
    data: dict[str, str], tmp_path: Path
) -> None:
    """With historyLength, serving passes each user's recent items and gets training's vectors."""
    from recsys_workloads.train import inference

    cfg = train_config(data, str(tmp_path / "hist"), model={"historyLength": 5, "embeddingDim": 8})
    code, summary = run_cli(tmp_path, cfg)
    assert code == EXIT_OK, summary
    assert summary["metrics"]["twoTower.recall@10"] > 0.35
    loaded = load_model_artifact(Store({}), str(tmp_path / "hist"))
    assert loaded.shape.history_length == 5
    reader = ArtifactReader(Store({}), str(tmp_path / "hist"), "model")
    cutoff = reader.read_json("metrics.json")["split"]["cutoff"]
    tables = tiny_tables()
    inter = tables["interactions"].to_pylist()
    users = {row["user_id"]: row for row in tables["users"].to_pylist()}
    query_ids = reader.read_npy("embeddings/query_user_ids.npy")[:6].tolist()
    history = [
        [
            r["item_id"]
            for r in sorted(inter, key=lambda r: r["event_timestamp"], reverse=True)
            if r["user_id"] == u and r["event_timestamp"].timestamp() * 1e6 < cutoff
        ]
        for u in query_ids
    ]
    features = {n: [users[u][n] for u in query_ids] for n in ("age", "gender", "occupation")}
    vecs = inference.user_vectors(loaded, query_ids, features, history)
    expected = reader.read_npy("embeddings/query_embeddings.npy")[:6]
    np.testing.assert_allclose(vecs, expected, rtol=1e-5, atol=1e-6)
    without = inference.user_vectors(loaded, query_ids, features, None)
    assert not np.allclose(without, expected)


RENAMED = {"user_id": "uid", "item_id": "iid", "event_timestamp": "ts", "rating": "stars"}


def test_interactions_with_their_own_column_names_train_the_same_model(
    data: dict[str, str], tmp_path: Path, published: tuple[Path, dict[str, Any]]
) -> None:
    """The Recommender's spec.interactions column names reach training (interactionColumns):
    the same table under other names trains the same model."""
    table = tiny_tables()["interactions"]
    renamed = _write_interactions(tmp_path, table.rename_columns(RENAMED), data)
    cfg = train_config(renamed, str(tmp_path / "out"))
    cfg["data"]["interactionColumns"] = {
        "userId": "uid", "itemId": "iid", "timestamp": "ts", "label": "stars"
    }  # fmt: skip
    code, summary = run_cli(tmp_path, cfg)
    assert code == EXIT_OK, summary
    _assert_same_model(published[0], tmp_path / "out")
    # the default names are not looked for
    cfg["data"]["interactionColumns"]["userId"] = "user_id"
    code, summary = run_cli(tmp_path, {**cfg, "artifactUri": str(tmp_path / "out2")}, "default")
    assert code == EXIT_BAD_INPUT
    assert "interactions: missing column(s) 'user_id'" in summary["message"]


def test_the_headline_fits_a_modelversions_status_with_four_cutoffs(
    published: tuple[Path, dict[str, Any]],
) -> None:
    """The operator asks for k = 10, 20, 50 and the gate's own; status.metrics holds 64."""
    headline = published[1]["metrics"]
    k = min(int(m.split("@")[1]) for m in headline if m.startswith("twoTower.recall@"))
    assert f"served.final.ndcg@{k}" in headline
    assert f"served.final.ndcg@{k}.se" in headline
    at_k = [m for m in headline if m.split("@")[-1].removesuffix(".se") == str(k)]
    assert len(headline) + len(at_k) <= 64, f"a fourth cut-off adds as many as k={k} has"
