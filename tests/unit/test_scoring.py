"""The final score's one formula (``recsys_workloads.scoring``), its artifact file, and the
gateway's stage 3 applying it with the version's weights."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio

from recsys_workloads import ann_index
from recsys_workloads.artifact_store import ArtifactWriter, Store
from recsys_workloads.gateway.config import parse_gateway_config
from recsys_workloads.gateway.index_pool import Candidates, LoadedIndex, load_serving_index
from recsys_workloads.gateway.metrics import GatewayMetrics
from recsys_workloads.gateway.pipeline import RecommendationService, ResolvedVariant
from recsys_workloads.gateway.served_log import StreamWriter
from recsys_workloads.gateway.store import FilterSets
from recsys_workloads.gateway.triton_client import TritonUnavailable
from recsys_workloads.index_build import main as index_build_main
from recsys_workloads.scoring import (
    FUSION_GRID,
    RANKER_ONLY,
    RETRIEVAL_ONLY,
    SCORING_FILE,
    ScoreFusion,
    fuse,
)
from recsys_workloads.train.evaluate import best_of_grid, fusion_label

LOGITS = np.array([2.0, -1.0, 0.5], dtype=np.float32)
RETRIEVAL = np.array([0.1, 0.9, 0.5], dtype=np.float32)


@pytest.mark.parametrize(
    ("fusion", "want"),
    [
        (RANKER_ONLY, [2.0, -1.0, 0.5]),
        (RETRIEVAL_ONLY, [0.1, 0.9, 0.5]),
        (ScoreFusion(1.0, 10.0), [3.0, 8.0, 5.5]),
        (ScoreFusion(0.5, 2.0), [1.2, 1.3, 1.25]),
    ],
)
def test_fuse_by_hand(fusion: ScoreFusion, want: list[float]) -> None:
    got = fuse(fusion, LOGITS, RETRIEVAL)
    assert got.dtype == np.float32
    assert got.tolist() == pytest.approx(want, rel=1e-6)


def test_retrieval_only_needs_no_logits_and_the_others_do() -> None:
    assert fuse(RETRIEVAL_ONLY, None, RETRIEVAL).tolist() == pytest.approx(RETRIEVAL.tolist())
    assert not RETRIEVAL_ONLY.uses_ranker
    with pytest.raises(ValueError, match="needs the ranker"):
        fuse(RANKER_ONLY, None, RETRIEVAL)
    with pytest.raises(ValueError, match="2 logits for 3 retrieval scores"):
        fuse(ScoreFusion(1.0, 1.0), LOGITS[:2], RETRIEVAL)


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ({"rankerWeight": 1, "retrievalWeight": 5}, None),
        ({"rankerWeight": 0, "retrievalWeight": 1}, None),
        ({"rankerWeight": 0, "retrievalWeight": 0}, "at least one weight"),
        ({"rankerWeight": -1, "retrievalWeight": 1}, "must not be negative"),
        ({"rankerWeight": float("nan"), "retrievalWeight": 1}, "finite"),
        ({"rankerWeight": 1}, "retrievalWeight"),
    ],
)
def test_scoring_file_is_checked(raw: dict[str, Any], error: str | None) -> None:
    if error is None:
        fusion = ScoreFusion.from_json(raw)
        assert ScoreFusion.from_json(fusion.to_json()) == fusion
        return
    with pytest.raises((ValueError, KeyError), match=error):
        ScoreFusion.from_json(raw)


def test_the_grid_holds_both_pure_scores_and_ties_keep_ranker_only() -> None:
    assert RANKER_ONLY in FUSION_GRID
    assert RETRIEVAL_ONLY in FUSION_GRID
    flat = {fusion_label(f): 0.3 for f in FUSION_GRID}
    assert best_of_grid(flat) == RANKER_ONLY  # nothing gained: keep what versions did
    better = {**flat, "ranker+10*retrieval": 0.31, "retrievalOnly": 0.305}
    assert best_of_grid(better) == ScoreFusion(1.0, 10.0)
    assert best_of_grid({**flat, "retrievalOnly": 0.4}) == RETRIEVAL_ONLY


# --- the gateway's stage 3 -----------------------------------------------------------------

ITEMS = np.arange(100, 110, dtype=np.int64)


def unit(v: np.ndarray[Any, Any]) -> np.ndarray[Any, np.dtype[np.float32]]:
    return np.asarray(v / np.linalg.norm(v, axis=-1, keepdims=True), dtype=np.float32)


VECTORS = unit(np.random.default_rng(3).standard_normal((ITEMS.size, 8)))
USER = unit(np.random.default_rng(4).standard_normal(8))


class FakeStore:
    def __init__(self, seen: frozenset[int]) -> None:
        self.seen = seen

    async def request_reads(self, user_id: int, **_: Any) -> tuple[None, FilterSets]:
        return None, FilterSets(self.seen, frozenset())


class FakeTriton:
    """The user tower gives USER; the ranker gives each item's id minus 100 as its logit,
    or fails."""

    def __init__(self, ranker_fails: bool = False) -> None:
        self.ranked: list[list[int]] = []
        self.ranker_fails = ranker_fails

    async def embed_user(self, *_: Any) -> np.ndarray[Any, np.dtype[np.float32]]:
        return USER

    async def rank(
        self,
        endpoint: str,
        version: str,
        user_id: int,
        features: Mapping[str, Any] | None,
        history: Sequence[int],
        item_ids: np.ndarray[Any, np.dtype[np.int64]],
        timeout: float,  # noqa: ASYNC109 - TritonClient.rank's signature
    ) -> np.ndarray[Any, np.dtype[np.float32]]:
        self.ranked.append(item_ids.tolist())
        if self.ranker_fails:
            raise TritonUnavailable("triton-error")
        return (item_ids - 100).astype(np.float32)


def service(triton: FakeTriton, seen: frozenset[int]) -> RecommendationService:
    cfg = parse_gateway_config(
        {
            "recommender": "ns.rec",
            "routing": {"stable": {"modelVersion": "m-v1", "triton": "t:1", "index": "mem://a"}},
            "redisUrl": "redis://127.0.0.1:1/0",
            "candidates": 6,
            "topK": 3,
        }
    )
    client = redis.asyncio.Redis()
    return RecommendationService(
        cfg,
        FakeStore(seen),  # type: ignore[arg-type]
        triton,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        GatewayMetrics(),
        StreamWriter(client, "s", 1000, lambda r, n: None),
    )


def variant(fusion: ScoreFusion) -> ResolvedVariant:
    index = ann_index.build_index(VECTORS, ITEMS, ann_index.IndexParams(kind="flat"))
    popular = Candidates(ITEMS[:2], np.array([9.0, 8.0], dtype=np.float32))
    return ResolvedVariant(
        "stable", "m-v1", "t:1", LoadedIndex("mem://a", "m-v1", index, ITEMS.size, popular, fusion)
    )


@pytest.mark.parametrize("fusion", [RANKER_ONLY, RETRIEVAL_ONLY, ScoreFusion(1.0, 10.0)])
async def test_stage_3_fuses_the_rankers_logits_with_the_ann_scores(fusion: ScoreFusion) -> None:
    triton = FakeTriton()
    seen = frozenset({int(ITEMS[np.argmax(VECTORS @ USER)])})  # the best item is filtered
    found = await service(triton, seen).candidate_stages(variant(fusion), 7, {})
    # retrieval by brute force: the 6 best unseen items by inner product
    inner = VECTORS @ USER
    order = [i for i in np.argsort(-inner) if int(ITEMS[i]) not in seen][:6]
    assert found.kept.ids.tolist() == ITEMS[order].tolist()
    retrieval = inner[order]
    logits = (ITEMS[order] - 100).astype(np.float64)
    want = fusion.ranker_weight * logits + fusion.retrieval_weight * retrieval
    assert found.scored.ids.tolist() == found.kept.ids.tolist()
    assert found.scored.scores.tolist() == pytest.approx(want.tolist(), rel=1e-5, abs=1e-6)
    assert found.fallback is None
    # a retrieval-only version never calls the ranker
    assert triton.ranked == ([] if fusion == RETRIEVAL_ONLY else [ITEMS[order].tolist()])


async def test_a_failed_ranker_serves_retrieval_scores() -> None:
    triton = FakeTriton(ranker_fails=True)
    found = await service(triton, frozenset()).candidate_stages(
        variant(ScoreFusion(1.0, 10.0)), 7, {}
    )
    assert found.fallback == "triton-error"
    assert found.scored.scores.tolist() == pytest.approx(found.kept.scores.tolist())
    assert (np.diff(found.scored.scores) <= 1e-6).all()  # retrieval order


# --- the version's weights reach the gateway -------------------------------------------------


def index_of(tmp_path: Path, scoring: dict[str, Any] | None) -> str:
    model = str(tmp_path / "model")
    writer = ArtifactWriter(Store({}), model, "model")
    writer.put_npy("embeddings/item_ids.npy", ITEMS)
    writer.put_npy("embeddings/item_embeddings.npy", VECTORS)
    writer.put_json("popular_items.json", [{"itemId": 101, "count": 4}])
    if scoring is not None:
        writer.put_json(SCORING_FILE, scoring)
    writer.publish({"version": "m1"})
    config = tmp_path / "index.json"
    index = str(tmp_path / "index")
    config.write_text(json.dumps({"modelArtifactUri": model, "indexUri": index}))
    code = index_build_main(["--config", str(config), "--termination-log", str(tmp_path / "term")])
    assert code == 0, (tmp_path / "term").read_text()
    return index


@pytest.mark.parametrize(
    ("scoring", "want"),
    [
        (None, RANKER_ONLY),  # exported before scoring.json: scored as it was evaluated
        ({"rankerWeight": 1.0, "retrievalWeight": 20.0}, ScoreFusion(1.0, 20.0)),
        ({"rankerWeight": 0.0, "retrievalWeight": 1.0}, RETRIEVAL_ONLY),
    ],
)
def test_the_served_index_carries_its_versions_fusion(
    tmp_path: Path, scoring: dict[str, Any] | None, want: ScoreFusion
) -> None:
    loaded = load_serving_index(Store({}), index_of(tmp_path, scoring))
    assert loaded.fusion == want
    assert loaded.popular.ids.tolist() == [101]


def test_a_bad_scoring_file_fails_the_load(tmp_path: Path) -> None:
    uri = index_of(tmp_path, {"rankerWeight": 0.0, "retrievalWeight": 0.0})
    with pytest.raises(ValueError, match="at least one weight"):
        load_serving_index(Store({}), uri)
