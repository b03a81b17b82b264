"""The ANN index build with real FAISS: recall against exact search, publishing, failures."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from recsys_contract.index import FeatureSchema, IndexSummary
from recsys_workloads import ann_index
from recsys_workloads.artifact_store import ArtifactWriter, Store
from recsys_workloads.gateway.index_pool import Candidates, LoadedIndex
from recsys_workloads.index_build import load_index, main
from recsys_workloads.runtime import EXIT_BAD_INPUT, EXIT_OK, EXIT_TRANSIENT
from recsys_workloads.train.features import EntityEncoder, FeatureSpec, IdVocabulary


def clustered(n: int, dim: int, seed: int, clusters: int = 100) -> np.ndarray:
    """Unit vectors around cluster centres: the shape trained item embeddings have."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def sphere(n: int, dim: int, seed: int) -> np.ndarray:
    """Uniform on the sphere: no structure at all, the hard case for a graph index."""
    x = np.random.default_rng(seed).standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("make", [clustered, sphere], ids=["clustered", "sphere"])
def test_hnsw_recall_at_default_ef_search_is_at_least_095(make: Any) -> None:
    vectors = make(20_000, 32, 0)
    ids = np.arange(20_000, dtype=np.int64) * 7 + 3
    params = ann_index.IndexParams(kind="hnsw")
    index = ann_index.build_index(vectors, ids, params)
    assert ann_index.index_kind(index) == "hnsw"
    queries = make(500, 32, 1)  # held out: not in the index
    truth = ann_index.exact_top_k(vectors, ids, queries, 10)
    _, found = ann_index.search(index, queries, 10)
    assert set(np.unique(found)) <= set(ids.tolist())  # ids, not row numbers
    assert ann_index.recall_at_k(found, truth) >= 0.95
    curve = ann_index.recall_curve(index, queries, truth, 10, [8, 32, 128])
    assert curve[0]["recall"] <= curve[-1]["recall"]


def test_recall_at_k_counts_overlap() -> None:
    truth = np.array([[1, 2, 3], [4, 5, 6]])
    found = np.array([[3, 9, 1], [-1, 6, 4]])
    assert ann_index.recall_at_k(found, truth) == pytest.approx(4 / 6)


def test_serialised_index_searches_the_same() -> None:
    vectors = clustered(2_000, 16, 2)
    ids = np.arange(2_000, dtype=np.int64) + 10
    index = ann_index.build_index(vectors, ids, ann_index.IndexParams(kind="hnsw", ef_search=64))
    again = ann_index.deserialize(ann_index.serialize(index))
    ann_index.set_ef_search(again, 64)
    q = clustered(50, 16, 3)
    np.testing.assert_array_equal(
        ann_index.search(index, q, 5)[1], ann_index.search(again, q, 5)[1]
    )


# --- the entry point ------------------------------------------------------------------------


def model_artifact(
    root: Path,
    vectors: np.ndarray,
    ids: np.ndarray,
    queries: np.ndarray | None = None,
    encoders: dict[str, Any] | None = None,
) -> str:
    uri = str(root / "model")
    writer = ArtifactWriter(Store({}), uri, "model")
    if encoders is not None:
        writer.put_json("encoders.json", encoders)
    writer.put_npy("embeddings/item_ids.npy", ids)
    writer.put_npy("embeddings/item_embeddings.npy", vectors)
    if queries is not None:
        writer.put_npy("embeddings/query_embeddings.npy", queries)
    writer.publish({"version": "m1"})
    return uri


def run_cli(tmp_path: Path, cfg: dict[str, Any], name: str = "run") -> tuple[int, dict[str, Any]]:
    config = tmp_path / f"{name}.json"
    config.write_text(json.dumps(cfg))
    term = tmp_path / f"{name}.termination"
    code = main(["--config", str(config), "--termination-log", str(term)])
    return code, json.loads(term.read_text())


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("model")
    vectors = clustered(5_000, 16, 4)
    return model_artifact(
        root, vectors, np.arange(5_000, dtype=np.int64) + 1000, clustered(300, 16, 5)
    )


def test_small_catalogue_gets_an_exact_index(model: str, tmp_path: Path) -> None:
    code, summary = run_cli(
        tmp_path, {"modelArtifactUri": model, "indexUri": str(tmp_path / "idx")}
    )
    assert code == EXIT_OK, summary
    assert summary["indexType"] == "flat"
    assert summary["recall"] == 1.0
    assert summary["itemCount"] == 5_000


def test_hnsw_index_is_published_with_its_checks(model: str, tmp_path: Path) -> None:
    uri = f"file://{tmp_path}/idx"
    cfg = {
        "version": "m1",
        "modelArtifactUri": model,
        "indexUri": uri,
        "index": {"flatThreshold": 1000},
    }
    code, summary = run_cli(tmp_path, cfg)
    assert code == EXIT_OK, summary
    assert summary["indexType"] == "hnsw"
    assert summary["recall"] >= 0.95
    assert summary["efSearch"] == 128
    manifest = json.loads((tmp_path / "idx/manifest.json").read_text())
    assert manifest["validation"]["querySource"] == "held-out user vectors of the model artifact"
    assert manifest["validation"]["queries"] == 300
    assert [p["efSearch"] for p in manifest["validation"]["curve"]] == [16, 32, 64, 128, 256, 512]
    model_manifest = json.loads((Path(model) / "manifest.json").read_text())
    assert manifest["model"]["digest"] == model_manifest["digest"] == summary["modelDigest"]
    index, loaded_manifest = load_index(Store({}), uri)
    assert loaded_manifest["digest"] == summary["digest"]
    vectors = np.load(Path(model) / "embeddings/item_embeddings.npy")
    ids = np.load(Path(model) / "embeddings/item_ids.npy")
    q = clustered(100, 16, 9)
    _, found = ann_index.search(index, q, 10)
    assert ann_index.recall_at_k(found, ann_index.exact_top_k(vectors, ids, q, 10)) >= 0.95
    # a second run finds it published and changes nothing
    code, again = run_cli(tmp_path, cfg, "again")
    assert code == EXIT_OK
    assert again["alreadyPublished"] is True
    assert again["digest"] == summary["digest"]


def test_too_low_ef_search_is_raised_until_recall_passes(model: str, tmp_path: Path) -> None:
    cfg = {
        "modelArtifactUri": model,
        "indexUri": str(tmp_path / "idx"),
        "index": {"kind": "hnsw", "hnswM": 8, "efConstruction": 16, "efSearch": 2},
        "validation": {"efSearchCurve": [2, 4, 8, 16, 32, 64, 128, 256]},
    }
    code, summary = run_cli(tmp_path, cfg)
    assert code == EXIT_OK, summary
    assert summary["efSearch"] > 2
    assert summary["recall"] >= 0.95
    assert (
        json.loads((tmp_path / "idx/manifest.json").read_text())["index"]["efSearchTuned"] is True
    )


def test_ivf_flat_index_is_a_real_ivf_checked_and_served_at_its_nprobe(
    model: str, tmp_path: Path
) -> None:
    uri = f"file://{tmp_path}/idx"
    cfg = {
        "modelArtifactUri": model,
        "indexUri": uri,
        "index": {"flatThreshold": 1000, "approximate": "ivfFlat", "nlist": 64, "nprobe": 16},
    }
    code, summary = run_cli(tmp_path, cfg)
    assert code == EXIT_OK, summary
    assert summary["indexType"] == "ivfFlat"
    assert summary["recall"] >= 0.95
    assert summary["nprobe"] == 16
    assert summary["efSearch"] is None
    manifest = json.loads((tmp_path / "idx/manifest.json").read_text())
    assert manifest["index"]["nlist"] == 64
    assert manifest["index"]["nprobeTuned"] is False
    curve = manifest["validation"]["curve"]
    assert [p["nprobe"] for p in curve] == [1, 2, 4, 8, 16, 32, 64]  # capped at nlist
    assert curve[0]["recall"] < curve[-1]["recall"] == 1.0  # every list probed: exact
    index, _ = load_index(Store({}), uri)
    inner = faiss.downcast_index(index.index)
    assert isinstance(inner, faiss.IndexIVFFlat)
    assert (inner.nlist, inner.nprobe, inner.ntotal) == (64, 16, 5_000)
    assert ann_index.index_kind(index) == "ivfFlat"
    vectors = np.load(Path(model) / "embeddings/item_embeddings.npy")
    ids = np.load(Path(model) / "embeddings/item_ids.npy")
    q = clustered(100, 16, 9)
    _, found = ann_index.search(index, q, 10)
    assert set(np.unique(found)) <= set(ids.tolist())
    assert ann_index.recall_at_k(found, ann_index.exact_top_k(vectors, ids, q, 10)) >= 0.9


def test_too_low_nprobe_is_raised_until_recall_passes(model: str, tmp_path: Path) -> None:
    cfg = {
        "modelArtifactUri": model,
        "indexUri": str(tmp_path / "idx"),
        "index": {"kind": "ivfFlat", "nlist": 128, "nprobe": 1},
    }
    code, summary = run_cli(tmp_path, cfg)
    assert code == EXIT_OK, summary
    assert summary["nprobe"] > 1
    assert summary["recall"] >= 0.95
    assert json.loads((tmp_path / "idx/manifest.json").read_text())["index"]["nprobeTuned"]


def test_unreachable_ivf_recall_names_nprobe_and_nlist(model: str, tmp_path: Path) -> None:
    cfg = {
        "modelArtifactUri": model,
        "indexUri": str(tmp_path / "idx"),
        "index": {"kind": "ivfFlat", "nlist": 256, "nprobe": 1},
        "validation": {"minRecall": 0.99, "nprobeCurve": [1]},
    }
    code, summary = run_cli(tmp_path, cfg)
    assert code == EXIT_BAD_INPUT
    assert "at nprobe 1" in summary["message"]
    assert "raise index.nprobe or lower index.nlist" in summary["message"]
    assert not (tmp_path / "idx").exists()


def test_ivf_lists_are_capped_by_the_catalogue() -> None:
    vectors = clustered(50, 8, 3)
    ids = np.arange(50, dtype=np.int64)
    params = ann_index.IndexParams(kind="ivfFlat", nlist=1024, nprobe=2000)
    index = ann_index.build_index(vectors, ids, params)
    inner = faiss.downcast_index(index.index)
    assert (inner.nlist, inner.nprobe) == (50, 50)
    _, found = ann_index.search(index, vectors[:5], 1)
    assert found[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_unreachable_recall_fails_without_publishing(model: str, tmp_path: Path) -> None:
    cfg = {
        "modelArtifactUri": model,
        "indexUri": str(tmp_path / "idx"),
        "index": {"kind": "hnsw", "hnswM": 4, "efConstruction": 8, "efSearch": 1},
        "validation": {"minRecall": 1.0, "efSearchCurve": [1], "k": 50},
    }
    code, summary = run_cli(tmp_path, cfg)
    assert code == EXIT_BAD_INPUT
    assert "validation.minRecall" in summary["message"]
    assert "raise index.efSearch" in summary["message"]
    assert not (tmp_path / "idx").exists()


def test_without_held_out_queries_jittered_items_are_used(tmp_path: Path) -> None:
    uri = model_artifact(tmp_path, clustered(3_000, 8, 6), np.arange(3_000, dtype=np.int64))
    cfg = {"modelArtifactUri": uri, "indexUri": str(tmp_path / "idx"), "index": {"kind": "hnsw"}}
    code, summary = run_cli(tmp_path, cfg)
    assert code == EXIT_OK, summary
    manifest = json.loads((tmp_path / "idx/manifest.json").read_text())
    assert manifest["validation"]["querySource"] == "jittered item vectors"


@pytest.mark.parametrize(
    ("vectors", "ids", "message"),
    [
        (np.full((10, 4), np.nan, np.float32), np.arange(10), "NaN or infinite"),
        (np.ones((10, 4), np.float32), np.arange(9), "9 item ids but 10 embeddings"),
        (np.ones((3, 4), np.float32), np.array([1, 1, 2]), "duplicate ids"),
        (np.ones(4, np.float32), np.arange(4), "non-empty 2-D array"),
        (np.ones((4, 4), np.float32), np.array(["a", "b", "c", "d"]), "1-D integer array"),
    ],
    ids=["nan", "count-mismatch", "duplicates", "1-d", "string-ids"],
)
def test_bad_embeddings_are_refused(
    tmp_path: Path, vectors: np.ndarray, ids: np.ndarray, message: str
) -> None:
    uri = model_artifact(tmp_path, vectors, ids)
    code, summary = run_cli(tmp_path, {"modelArtifactUri": uri, "indexUri": str(tmp_path / "idx")})
    assert code == EXIT_BAD_INPUT
    assert message in summary["message"]


def test_unpublished_or_tampered_model_artifact_is_refused(model: str, tmp_path: Path) -> None:
    half = tmp_path / "half"
    half.mkdir()
    code, summary = run_cli(
        tmp_path, {"modelArtifactUri": str(half), "indexUri": str(tmp_path / "i1")}
    )
    assert code == EXIT_BAD_INPUT
    assert "is not published" in summary["message"]
    copy = tmp_path / "copy"
    shutil.copytree(model, copy)
    np.save(copy / "embeddings/item_embeddings.npy", np.zeros((5_000, 16), np.float32))
    code, summary = run_cli(
        tmp_path, {"modelArtifactUri": str(copy), "indexUri": str(tmp_path / "i2")}, "t"
    )
    assert code == EXIT_BAD_INPUT
    assert "does not match the sha256" in summary["message"]


@pytest.mark.parametrize(
    ("cfg", "field"),
    [
        ({"indexUri": "/x"}, "modelArtifactUri: required field is missing"),
        (
            {"modelArtifactUri": "/m", "indexUri": "/x", "index": {"hnswm": 8}},
            "index.hnswm: unknown field",
        ),
        (
            {"modelArtifactUri": "/m", "indexUri": "/x", "validation": {"minRecall": 2}},
            "validation.minRecall",
        ),
    ],
)
def test_bad_config_names_the_field(tmp_path: Path, cfg: dict[str, Any], field: str) -> None:
    code, summary = run_cli(tmp_path, cfg)
    assert code == EXIT_BAD_INPUT
    assert field in summary["message"]


def test_unreachable_store_is_transient(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = {
        "modelArtifactUri": "s3://models/m1",
        "indexUri": "s3://indexes/i1",
        "storageOptions": {
            "anon": True,
            "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"},
            "config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 1}},
        },
    }
    code, summary = run_cli(tmp_path, cfg)
    assert code == EXIT_TRANSIENT
    assert "unreachable" in summary["message"]


def encoders(user: list[FeatureSpec], item: list[FeatureSpec]) -> dict[str, Any]:
    def entity(name: str, features: list[FeatureSpec]) -> EntityEncoder:
        return EntityEncoder(name, f"{name}_id", IdVocabulary(np.arange(3)), tuple(features))

    return {"user": entity("user", user).to_json(), "item": entity("item", item).to_json()}


def test_the_trained_feature_schema_is_reported_and_kept_with_the_index(tmp_path: Path) -> None:
    """What the rollout checks against the gateway's features: each user and item feature of
    the model's encoders, with its kind, in the summary and the index manifest (so a rerun
    that finds the index published reports it too)."""
    enc = encoders(
        [
            FeatureSpec("age", "numeric", boundaries=(20.0, 40.0)),
            FeatureSpec("gender", "categorical", ("F", "M")),
        ],
        [FeatureSpec("genres", "multi_hot", ("a", "b"), max_len=2)],
    )
    uri = model_artifact(tmp_path, clustered(50, 8, 1), np.arange(50, dtype=np.int64), encoders=enc)
    cfg = {"modelArtifactUri": uri, "indexUri": str(tmp_path / "idx")}
    want = {
        "user": [{"name": "age", "kind": "numeric"}, {"name": "gender", "kind": "categorical"}],
        "item": [{"name": "genres", "kind": "multi_hot"}],
    }
    code, summary = run_cli(tmp_path, cfg)
    assert code == EXIT_OK, summary
    assert summary["features"] == want
    code, again = run_cli(tmp_path, cfg, "again")
    assert (again["alreadyPublished"], again["features"]) == (True, want)
    parsed = IndexSummary.model_validate(summary)
    assert parsed.features is not None
    assert parsed.features.digest() == FeatureSchema.model_validate(want).digest()
    swapped = {"user": want["user"][::-1], "item": want["item"]}
    assert FeatureSchema.model_validate(swapped).digest() != parsed.features.digest()


def test_a_schema_too_wide_for_the_termination_message_is_left_out(tmp_path: Path) -> None:
    wide = [FeatureSpec(f"feature_with_a_long_name_{n:03d}", "numeric") for n in range(200)]
    uri = model_artifact(
        tmp_path, clustered(50, 8, 1), np.arange(50, dtype=np.int64), encoders=encoders(wide, [])
    )
    code, summary = run_cli(tmp_path, {"modelArtifactUri": uri, "indexUri": str(tmp_path / "i")})
    assert code == EXIT_OK, summary
    assert "features" in summary
    assert summary["features"] is None
    assert summary["recall"] == 1.0  # the rest of the summary is whole
    manifest = json.loads((tmp_path / "i/manifest.json").read_text())
    assert len(manifest["model"]["features"]["user"]) == 200


def test_an_artifact_without_encoders_reports_no_schema(model: str, tmp_path: Path) -> None:
    code, summary = run_cli(tmp_path, {"modelArtifactUri": model, "indexUri": str(tmp_path / "x")})
    assert code == EXIT_OK, summary
    assert summary.get("features") is None


@pytest.mark.parametrize("kind", ["flat", "ivfFlat", "hnsw"])
def test_a_served_index_gives_each_item_vector_back_by_id(kind: str) -> None:
    """Similar items look an item's vector up in the serving index: every kind gives it
    back exactly (IVF once its direct map is made), and an unknown id gives None."""
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((500, 8)).astype(np.float32)
    ids = np.arange(1000, 1500, dtype=np.int64)
    index = ann_index.build_index(vectors, ids, ann_index.IndexParams(kind=kind, nlist=8))
    ann_index.enable_reconstruct(index)
    empty = Candidates(np.array([], np.int64), np.array([], np.float32))
    loaded = LoadedIndex("file:///ix", "v1", index, 500, empty)
    got = loaded.vector(1042)
    assert got is not None
    np.testing.assert_array_equal(got, vectors[42])
    assert loaded.vector(7) is None
