"""Offline metrics against hand-computed and brute-force values."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from offline_frames import tiny_tables

from recsys_contract.train import AlsConfig
from recsys_workloads.scoring import FUSION_GRID, RANKER_ONLY, RETRIEVAL_ONLY, ScoreFusion
from recsys_workloads.train.config import parse_train_config
from recsys_workloads.train.data import validate_interactions
from recsys_workloads.train.dataset import prepare, validation_view
from recsys_workloads.train.evaluate import (
    auc,
    build_eval_set,
    candidate_scores,
    choose_fusion,
    fit_als,
    fused_lists,
    fusion_label,
    grouped_ranking_metrics,
    hit_matrix,
    item_vectors,
    popularity_scores,
    ranker_scores,
    retrieval_metrics,
    sample_ranking_candidates,
    served_lists,
    served_scores,
    top_k,
    user_vectors,
    with_standard_errors,
)
from recsys_workloads.train.models import Ranker, TwoTower


def test_recall_and_ndcg_by_hand() -> None:
    # user 0: relevant {a, b}, ranked a x b ...; user 1: relevant {c}, ranked x x x c
    hits = np.array([[True, False, True, False], [False, False, False, True]])
    n_rel = np.array([2, 1])
    m = retrieval_metrics(hits, n_rel, [1, 3, 4])
    assert m["recall@1"] == pytest.approx((0.5 + 0) / 2)
    assert m["recall@3"] == pytest.approx((1.0 + 0) / 2)
    assert m["recall@4"] == pytest.approx((1.0 + 1.0) / 2)
    d = lambda r: 1 / math.log2(r + 1)  # noqa: E731 - rank r is 1-based
    ndcg_u0 = (d(1) + d(3)) / (d(1) + d(2))
    ndcg_u1 = d(4) / d(1)
    assert m["ndcg@4"] == pytest.approx((ndcg_u0 + ndcg_u1) / 2)
    assert m["ndcg@1"] == pytest.approx((1.0 + 0.0) / 2)


def test_auc_matches_pairwise_count_with_ties() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 60).astype(float)  # many ties
    labels = rng.random(60) < 0.3
    pos, neg = scores[labels], scores[~labels]
    expected = sum((p > n) + 0.5 * (p == n) for p, n in itertools.product(pos, neg)) / (
        pos.size * neg.size
    )
    assert auc(scores, labels) == pytest.approx(expected)
    assert math.isnan(auc(scores, np.zeros(60, bool)))


def test_grouped_ndcg_breaks_ties_against_relevant_items() -> None:
    groups = np.array([0, 0, 0, 1, 1])
    labels = np.array([True, False, False, True, False])
    constant = grouped_ranking_metrics(groups, np.zeros(5), labels, [1])
    assert constant["ndcg@1"] == 0.0  # a constant scorer earns nothing
    perfect = grouped_ranking_metrics(groups, labels.astype(float), labels, [1, 3])
    assert perfect["ndcg@1"] == 1.0
    assert perfect["auc"] == 1.0
    assert perfect["userAuc"] == 1.0
    # group 0 ranks its positive second of three
    scores = np.array([0.5, 0.9, 0.1, 1.0, 0.0])
    m = grouped_ranking_metrics(groups, scores, labels, [3])
    assert m["ndcg@3"] == pytest.approx(((1 / math.log2(3)) + 1.0) / 2)


def test_hit_matrix_marks_relevant_pairs_only() -> None:
    top = np.array([[3, 1, -1], [0, 3, 2]])
    hits = hit_matrix(top, np.array([0, 1, 1]), np.array([1, 2, 3]))
    assert hits.tolist() == [[False, True, False], [False, True, True]]


@pytest.fixture(scope="module")
def prepared():  # type: ignore[no-untyped-def]
    tables = tiny_tables()
    cfg = parse_train_config(
        {
            "data": {"interactionsUri": "-"},
            "artifactUri": "memory://x",
            "evaluation": {"holdoutFraction": 0.25},
        }
    )
    return prepare(
        cfg, validate_interactions(tables["interactions"]), tables["users"], tables["items"]
    )


def test_eval_set_excludes_history_and_items_outside_the_catalog(prepared) -> None:  # type: ignore[no-untyped-def]
    ev = build_eval_set(prepared, "warm")
    train_pairs = set(
        zip(
            prepared.split.train.user_ids.tolist(),
            prepared.split.train.item_ids.tolist(),
            strict=True,
        )
    )
    rel = {
        (int(ev.user_ids[u]), int(prepared.catalog_item_ids[i]))
        for u, i in zip(ev.rel_users, ev.rel_items, strict=True)
    }
    assert rel
    assert not rel & train_pairs
    test_pairs = set(
        zip(
            prepared.split.test.user_ids.tolist(),
            prepared.split.test.item_ids.tolist(),
            strict=True,
        )
    )
    assert rel <= test_pairs
    assert set(ev.user_ids.tolist()) <= set(prepared.split.train.user_ids.tolist())


def test_top_k_never_recommends_history(prepared) -> None:  # type: ignore[no-untyped-def]
    ev = build_eval_set(prepared, "warm")
    pop = popularity_scores(prepared)
    top = top_k(
        lambda u: np.broadcast_to(pop, (u.size, pop.size)), ev, ev.user_ids.size, 10, chunk=7
    )
    seen = set(zip(ev.seen_users.tolist(), ev.seen_items.tolist(), strict=True))
    for u, row in enumerate(top):
        assert not {(u, int(i)) for i in row if i >= 0} & seen
        valid = row[row >= 0]
        assert np.all(np.diff(pop[valid]) <= 0)  # ordered by score


def test_ranking_candidates_hold_relevant_items_and_unseen_negatives(prepared) -> None:  # type: ignore[no-untyped-def]
    ev = build_eval_set(prepared, "warm")
    n = prepared.catalog_item_ids.size
    users, items, labels = sample_ranking_candidates(ev, n, 5, seed=0)
    assert labels.sum() == ev.rel_users.size
    known = set((ev.seen_users * n + ev.seen_items).tolist()) | set(
        (ev.rel_users * n + ev.rel_items).tolist()
    )
    negatives = set((users[~labels] * n + items[~labels]).tolist())
    assert negatives
    assert not negatives & known


def test_als_learns_the_taste_groups(prepared) -> None:  # type: ignore[no-untyped-def]
    ev = build_eval_set(prepared, "warm")
    als = fit_als(prepared, ev, AlsConfig(factors=4, iterations=10, regularization=0.1), seed=0)
    top = top_k(
        lambda u: als.user_factors[als.user_pos[u]] @ als.item_factors.T, ev, ev.user_ids.size, 5
    )
    # users are in the group of their id parity, items (id - 101) likewise
    user_group = (ev.user_ids - 1) % 2
    item_group = (prepared.catalog_item_ids[top] - 101) % 2
    agreement = (item_group == user_group[:, None]).mean()
    assert agreement > 0.8


def test_served_scores_are_the_rankers_top_k_of_the_best_unseen_items(prepared) -> None:  # type: ignore[no-untyped-def]
    cfg = parse_train_config({"data": {"interactionsUri": "-"}, "artifactUri": "memory://x"})
    torch.manual_seed(0)
    shape = prepared.model_shape(cfg)
    two_tower, ranker = TwoTower(shape).eval(), Ranker(shape).eval()
    ev = build_eval_set(prepared, "warm")
    uvec = user_vectors(two_tower, prepared, ev.user_ids, ev.user_rows)
    ivec = item_vectors(two_tower, prepared, prepared.catalog_item_ids, prepared.catalog_item_rows)
    got, ranks, users = served_scores(
        ranker, prepared, ev, uvec, ivec, candidates=12, k=3, max_users=5, seed=1, chunk=2
    )
    assert users == 5
    assert got.size == 15
    assert np.bincount(ranks).tolist() == [5, 5, 5]
    # brute force for the same five users (the same draw of the seed)
    chosen = np.sort(np.random.default_rng(1).permutation(ev.user_ids.size)[:5])
    seen = set(zip(ev.seen_users.tolist(), ev.seen_items.tolist(), strict=True))
    want = []
    for u in chosen.tolist():
        scores = uvec[u] @ ivec.T
        unseen = [i for i in np.argsort(-scores, kind="stable") if (u, int(i)) not in seen]
        best = np.array(unseen[:12])
        logits = ranker_scores(ranker, prepared, ev, np.full(best.size, u), best)
        want += sorted(logits.tolist(), reverse=True)[:3]
    assert sorted(got.tolist()) == pytest.approx(sorted(want), rel=1e-6)
    # ranks count down each user's logits
    for r in (0, 1):
        assert np.all(got[ranks == r] >= got[ranks == r + 1])


def test_standard_errors_are_the_spread_over_users_by_hand() -> None:
    got = with_standard_errors({"recall@2": np.array([0.0, 0.5, 1.0, 0.5])})
    assert got["recall@2"] == pytest.approx(0.5)
    # sample standard deviation sqrt(1/6), over sqrt(4) users
    assert got["recall@2.se"] == pytest.approx(math.sqrt(1 / 6) / 2)
    assert with_standard_errors({"ndcg@2": np.array([0.3])})["ndcg@2.se"] == 0.0


def test_served_lists_are_the_rankers_order_of_the_candidates(prepared) -> None:  # type: ignore[no-untyped-def]
    cfg = parse_train_config({"data": {"interactionsUri": "-"}, "artifactUri": "memory://x"})
    torch.manual_seed(0)
    shape = prepared.model_shape(cfg)
    ranker, two_tower = Ranker(shape).eval(), TwoTower(shape).eval()
    ev = build_eval_set(prepared, "warm")
    uvec = user_vectors(two_tower, prepared, ev.user_ids, ev.user_rows)
    ivec = item_vectors(two_tower, prepared, prepared.catalog_item_ids, prepared.catalog_item_rows)
    users = np.array([0, 2, 3])
    candidates = np.array([[5, 1, 7, 9], [4, 8, -1, -1], [-1, -1, -1, -1]])
    got = served_lists(
        ranker, prepared, ev, users, candidates, k=3, uvec=uvec, ivec=ivec, fusion=RANKER_ONLY
    )
    assert got.shape == (3, 3)
    for row, u in enumerate(users.tolist()):
        valid = candidates[row][candidates[row] >= 0]
        if valid.size == 0:
            assert got[row].tolist() == [-1, -1, -1], "no candidates, an empty list"
            continue
        logits = ranker_scores(ranker, prepared, ev, np.full(valid.size, u), valid)
        want = valid[np.argsort(-logits, kind="stable")][:3].tolist()
        assert got[row][got[row] >= 0].tolist() == want


def test_fused_lists_order_candidates_by_the_gateways_formula(prepared) -> None:  # type: ignore[no-untyped-def]
    cfg = parse_train_config({"data": {"interactionsUri": "-"}, "artifactUri": "memory://x"})
    torch.manual_seed(0)
    shape = prepared.model_shape(cfg)
    ranker, two_tower = Ranker(shape).eval(), TwoTower(shape).eval()
    ev = build_eval_set(prepared, "warm")
    uvec = user_vectors(two_tower, prepared, ev.user_ids, ev.user_rows)
    ivec = item_vectors(two_tower, prepared, prepared.catalog_item_ids, prepared.catalog_item_rows)
    users = np.array([0, 2])
    candidates = np.array([[5, 1, 7, 9, 3], [4, 8, 2, -1, -1]])
    pairs = candidate_scores(ranker, prepared, ev, users, candidates, uvec, ivec)
    assert pairs.starts.tolist() == [0, 5, 8]
    lists = {
        f: fused_lists(pairs, f, k=4) for f in (RANKER_ONLY, RETRIEVAL_ONLY, ScoreFusion(1, 10))
    }
    for row, u in enumerate(users.tolist()):
        valid = candidates[row][candidates[row] >= 0]
        logits = ranker_scores(ranker, prepared, ev, np.full(valid.size, u), valid)
        retrieval = (uvec[u] @ ivec[valid].T).astype(np.float64)
        for fusion, want_scores in (
            (RANKER_ONLY, logits),
            (RETRIEVAL_ONLY, retrieval),
            (ScoreFusion(1, 10), logits + 10 * retrieval),
        ):
            want = valid[np.argsort(-want_scores, kind="stable")][:4].tolist()
            assert lists[fusion][row][lists[fusion][row] >= 0].tolist() == want, fusion
    # retrieval only is the candidates' own retrieval order
    assert lists[RETRIEVAL_ONLY][1][:3].tolist() == sorted(
        [4, 8, 2], key=lambda i: -float(uvec[2] @ ivec[i])
    )


def test_the_validation_view_is_carved_from_training_only(prepared) -> None:  # type: ignore[no-untyped-def]
    view = validation_view(prepared, "time", 0.25)
    train, test = prepared.split.train, prepared.split.test
    inner = view.split
    assert len(inner.train) + len(inner.test) == len(train)
    assert inner.train.times_us.max() < inner.cutoff_us <= inner.test.times_us.min()
    assert inner.test.times_us.max() < test.times_us.min()  # never the test split
    # histories stop at the carve: no validation item is in a user's history input
    users = np.unique(inner.test.user_ids)
    hist = view.history_of(users)
    for row, u in enumerate(users.tolist()):
        before = inner.train.item_ids[inner.train.user_ids == u]
        got = prepared.items.encoder.ids.encode(before)
        assert set(hist[row][hist[row] > 0].tolist()) <= set(got.tolist())
    ev = build_eval_set(view, "warm")
    assert ev.rel_users.size > 0
    per_user = validation_view(prepared, "perUser", 0.25)
    assert len(per_user.split.train) + len(per_user.split.test) == len(train)


def test_the_chosen_fusion_is_the_best_of_the_grid_on_validation(prepared) -> None:  # type: ignore[no-untyped-def]
    cfg = parse_train_config(
        {
            "data": {"interactionsUri": "-"},
            "artifactUri": "memory://x",
            "evaluation": {"holdoutFraction": 0.25, "k": [5]},
        }
    )
    torch.manual_seed(0)
    shape = prepared.model_shape(cfg)
    fusion, report = choose_fusion(cfg, prepared, TwoTower(shape).eval(), Ranker(shape).eval())
    assert report["chosenOn"] == "validation"
    grid = report["validationNdcg@5"]
    assert set(grid) == {fusion_label(f) for f in FUSION_GRID}
    assert grid[fusion_label(fusion)] == max(grid.values())
