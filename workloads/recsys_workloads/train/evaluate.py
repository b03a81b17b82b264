"""Offline evaluation on the time-based holdout, against baselines run on the same split.

Protocol (the numbers in ``metrics.json`` mean exactly this):

- Train on interactions before the cutoff, test on those at or after it (``data.time_split``);
  or, with ``evaluation.split: perUser``, test on each user's last interactions
  (``data.per_user_split``).
- Evaluated users: those with test interactions; ``warm`` (default) keeps only users who also
  have training interactions, the users an ALS peer can score at all.
- Catalog: the items seen in training. A user's relevant set is their test items that are in
  the catalog and not already in their training history; training-history items are removed
  from every method's ranking. Test interactions with items outside the catalog are counted in
  ``split.testOutsideCatalog`` (no method could retrieve them).
- Retrieval: Recall@K = hits in top K / |relevant|; NDCG@K with binary gains, ideal DCG over
  min(|relevant|, K); both averaged over users.
- Ranking: each user's relevant items plus ``rankingNegatives`` catalog items drawn uniformly
  (seeded) are scored; AUC over all (user, item) pairs, per-user AUC averaged, and NDCG@K over
  each user's candidate list. Ties are broken against the relevant items (pessimistic), so a
  constant scorer earns no credit.
- Served (end to end): each user's two-tower top ``evaluation.candidates`` outside their
  history, scored as the gateway scores them (``scoring.fuse``: the ranker's logit fused with
  the retrieval score, by weights ``choose_fusion`` picks on a validation split carved from
  training, never the test split) and ordered by the gateway's ``rules.final_list``; Recall@K
  and NDCG@K of that final list, beside the candidates in retrieval order and the baselines'
  lists, each metric with its standard error over users (``<metric>.se``).
- Baselines: popularity (training interaction count) and ``implicit``'s ALS on the binary
  user×item matrix, with ``evaluation.als`` hyper-parameters and the same seed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from recsys_contract.gateway import Ordering
from recsys_contract.train import (
    FINAL,
    RANKER,
    RETRIEVAL_ORDER,
    STANDARD_ERROR,
    TWO_TOWER,
    AlsConfig,
    TrainConfig,
)
from recsys_workloads import scoring
from recsys_workloads.gateway import rules
from recsys_workloads.runtime import BadInputError
from recsys_workloads.scoring import ScoreFusion
from recsys_workloads.train.dataset import Prepared, validation_view
from recsys_workloads.train.models import HISTORY, Ranker, TwoTower
from recsys_workloads.train.profile import SCORE_CANDIDATES, SCORE_TOP_K
from recsys_workloads.train.trainer import FeatureTables

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

#: Users whose served-like scores go into the profile (bounds the ranker calls to 400k pairs).
SCORE_MAX_USERS = 2000


# --- pure metric functions -------------------------------------------------------------------


def per_user_retrieval(
    hits: BoolArray, n_relevant: IntArray, ks: Sequence[int]
) -> dict[str, FloatArray]:
    """Each user's Recall@K and NDCG@K from a users × rank hit matrix (True where relevant)."""
    out: dict[str, FloatArray] = {}
    for k in ks:
        top = hits[:, :k]
        discounts = 1.0 / np.log2(np.arange(k) + 2.0)
        recall = top.sum(axis=1) / np.maximum(n_relevant, 1)
        dcg = (top * discounts[: top.shape[1]]).sum(axis=1)
        idcg = np.cumsum(discounts)[np.clip(np.minimum(n_relevant, k), 1, k) - 1]
        out[f"recall@{k}"] = np.asarray(recall, dtype=np.float64)
        out[f"ndcg@{k}"] = np.asarray(dcg / idcg, dtype=np.float64)
    return out


def retrieval_metrics(hits: BoolArray, n_relevant: IntArray, ks: Sequence[int]) -> dict[str, float]:
    """Mean Recall@K and NDCG@K from a users × rank hit matrix (True where relevant)."""
    if hits.shape[0] == 0:
        return {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg")}
    return {name: float(v.mean()) for name, v in per_user_retrieval(hits, n_relevant, ks).items()}


def with_standard_errors(per_user: dict[str, FloatArray]) -> dict[str, float]:
    """Means over users, each beside its standard error (``<metric>.se``: the sample standard
    deviation over users / sqrt(users)); the error says whether two lists' gap is real."""
    out: dict[str, float] = {}
    for name, values in per_user.items():
        n = values.size
        out[name] = float(values.mean()) if n else 0.0
        out[name + STANDARD_ERROR] = float(values.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    return out


def auc(scores: FloatArray, labels: BoolArray) -> float:
    """Area under the ROC curve (Mann-Whitney U), ties counting one half."""
    n_pos = int(labels.sum())
    n_neg = int(labels.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)
    avg_rank = upper - (counts - 1) / 2.0
    ranks = avg_rank[inverse]
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def grouped_ranking_metrics(
    groups: IntArray, scores: FloatArray, labels: BoolArray, ks: Sequence[int]
) -> dict[str, float]:
    """AUC (global and per-group mean) and NDCG@K per group, ties broken against positives."""
    out = {"auc": auc(scores, labels)}
    order = np.lexsort((labels, -scores, groups))
    g, lab = groups[order], labels[order]
    starts = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1]
    sizes = np.diff(np.r_[starts, g.size])
    rank = np.arange(g.size) - np.repeat(starts, sizes)
    n_pos = np.add.reduceat(lab.astype(np.int64), starts)
    gain = np.where(lab, 1.0 / np.log2(rank + 2.0), 0.0)
    user_aucs = []
    for s, size in zip(starts, sizes, strict=True):
        a = auc(scores[order][s : s + size], lab[s : s + size])
        if not np.isnan(a):
            user_aucs.append(a)
    out["userAuc"] = float(np.mean(user_aucs)) if user_aucs else float("nan")
    for k in ks:
        dcg = np.add.reduceat(np.where(rank < k, gain, 0.0), starts)
        full = np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))
        ideal = full[np.clip(np.minimum(n_pos, k), 1, k) - 1]
        valid = n_pos > 0
        out[f"ndcg@{k}"] = float((dcg[valid] / ideal[valid]).mean()) if valid.any() else 0.0
    return out


def hit_matrix(
    top_items: IntArray, relevant_users: IntArray, relevant_items: IntArray
) -> BoolArray:
    """hits[u, r] = top_items[u, r] is in user u's relevant set (given as (user, item) pairs)."""
    n_items = int(max(top_items.max(initial=0), relevant_items.max(initial=0))) + 1
    rows = np.repeat(np.arange(top_items.shape[0]), top_items.shape[1]).reshape(top_items.shape)
    keys = rows.astype(np.int64) * n_items + top_items
    truth = relevant_users.astype(np.int64) * n_items + relevant_items
    return np.isin(keys, truth) & (top_items >= 0)


# --- the evaluation set ----------------------------------------------------------------------


@dataclass(frozen=True)
class EvalSet:
    """Users to evaluate and what counts as relevant, all in catalog positions."""

    user_ids: IntArray
    user_rows: IntArray
    #: (user position, catalog position) pairs: training history, masked from rankings
    seen_users: IntArray
    seen_items: IntArray
    #: (user position, catalog position) pairs: the relevant test items
    rel_users: IntArray
    rel_items: IntArray
    test_outside_catalog: int

    @property
    def n_relevant(self) -> IntArray:
        return np.bincount(self.rel_users, minlength=self.user_ids.size).astype(np.int64)


def build_eval_set(p: Prepared, users: str) -> EvalSet:
    catalog = p.catalog_item_ids
    test = p.split.test
    pos = np.searchsorted(catalog, test.item_ids)
    pos_c = np.minimum(pos, max(catalog.size - 1, 0))
    in_catalog = catalog[pos_c] == test.item_ids if catalog.size else np.zeros(len(test), bool)
    train_users = np.unique(p.split.train.user_ids)
    candidates = np.unique(test.user_ids[in_catalog])
    if users == "warm":
        candidates = candidates[np.isin(candidates, train_users)]
    # features as known at each user's first test interaction (point in time)
    first_idx = np.unique(test.user_ids, return_index=True)
    first_time = dict(zip(first_idx[0].tolist(), test.times_us[first_idx[1]].tolist(), strict=True))
    times = np.array([first_time[u] for u in candidates.tolist()], dtype=np.int64)
    user_rows = p.users.rows_at(candidates, times)

    def pairs(user_ids: IntArray, item_ids: IntArray) -> tuple[IntArray, IntArray]:
        upos = np.searchsorted(candidates, user_ids)
        upos_c = np.minimum(upos, max(candidates.size - 1, 0))
        ipos = np.searchsorted(catalog, item_ids)
        ipos_c = np.minimum(ipos, max(catalog.size - 1, 0))
        ok = (candidates[upos_c] == user_ids) & (catalog[ipos_c] == item_ids)
        keys = np.unique(upos_c[ok].astype(np.int64) * max(catalog.size, 1) + ipos_c[ok])
        return keys // max(catalog.size, 1), keys % max(catalog.size, 1)

    seen_u, seen_i = pairs(p.split.train.user_ids, p.split.train.item_ids)
    rel_u, rel_i = pairs(test.user_ids, test.item_ids)
    seen_keys = seen_u * max(catalog.size, 1) + seen_i
    fresh = ~np.isin(rel_u * max(catalog.size, 1) + rel_i, seen_keys)
    return EvalSet(
        user_ids=candidates,
        user_rows=user_rows,
        seen_users=seen_u,
        seen_items=seen_i,
        rel_users=rel_u[fresh],
        rel_items=rel_i[fresh],
        test_outside_catalog=int((~in_catalog).sum()),
    )


# --- scorers: (user positions) -> scores over the catalog ------------------------------------

Scorer = Callable[[IntArray], FloatArray]


@torch.no_grad()
def user_vectors(
    model: TwoTower, p: Prepared, user_ids: IntArray, user_rows: IntArray, batch: int = 4096
) -> npt.NDArray[np.float32]:
    device = next(model.parameters()).device
    tables = FeatureTables(p.users, device)
    idx = torch.as_tensor(p.users.encoder.ids.encode(user_ids), device=device)
    rows = torch.as_tensor(user_rows, device=device)
    history = torch.as_tensor(p.history_of(user_ids), device=device)
    out = [
        model.user_tower(
            idx[s : s + batch],
            _with_history(tables.gather(rows[s : s + batch]), history, s, batch, p),
        )
        for s in range(0, idx.shape[0], batch)
    ]
    if not out:
        return np.zeros((0, model.embedding_dim), dtype=np.float32)
    return torch.cat(out).float().cpu().numpy()


def _with_history(
    feats: dict[str, Tensor], history: Tensor, start: int, batch: int, p: Prepared
) -> dict[str, Tensor]:
    if p.history_length:
        feats[HISTORY] = history[start : start + batch]
    return feats


@torch.no_grad()
def item_vectors(
    model: TwoTower, p: Prepared, item_ids: IntArray, item_rows: IntArray, batch: int = 8192
) -> npt.NDArray[np.float32]:
    device = next(model.parameters()).device
    tables = FeatureTables(p.items, device)
    idx = torch.as_tensor(p.items.encoder.ids.encode(item_ids), device=device)
    rows = torch.as_tensor(item_rows, device=device)
    out = [
        model.item_tower(idx[s : s + batch], tables.gather(rows[s : s + batch]))
        for s in range(0, idx.shape[0], batch)
    ]
    return torch.cat(out).float().cpu().numpy()


def top_k(scores_for: Scorer, ev: EvalSet, n_users: int, k: int, chunk: int = 1024) -> IntArray:
    """Top-k catalog positions per user with training history masked out."""
    out = []
    for s in range(0, n_users, chunk):
        users = np.arange(s, min(s + chunk, n_users))
        scores = np.array(scores_for(users), dtype=np.float64, copy=True)
        sel = (ev.seen_users >= s) & (ev.seen_users < s + chunk)
        scores[ev.seen_users[sel] - s, ev.seen_items[sel]] = -np.inf
        kk = min(k, scores.shape[1])
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        part_scores = np.take_along_axis(scores, part, axis=1)
        order = np.lexsort((part, -part_scores), axis=1)
        ranked = np.take_along_axis(part, order, axis=1)
        ranked_scores = np.take_along_axis(part_scores, order, axis=1)
        out.append(np.where(np.isfinite(ranked_scores), ranked, -1))
    if not out:
        return np.zeros((0, k), dtype=np.int64)
    return np.asarray(np.concatenate(out), dtype=np.int64)


def catalog_positions(p: Prepared, item_ids: IntArray) -> tuple[BoolArray, IntArray]:
    """Which of ``item_ids`` are catalog items, and the catalog positions of those. Every
    training item is one in a cold run; a warm start's catalog (the checkpoint's items and
    the window's) may lack an item seen only between the two."""
    catalog = p.catalog_item_ids
    if catalog.size == 0:
        return np.zeros(item_ids.size, dtype=bool), np.zeros(0, dtype=np.int64)
    pos = np.minimum(np.searchsorted(catalog, item_ids), catalog.size - 1)
    hit = catalog[pos] == item_ids
    return hit, pos[hit].astype(np.int64)


def popularity_scores(p: Prepared) -> npt.NDArray[np.float64]:
    _, pos = catalog_positions(p, p.split.train.item_ids)
    return np.bincount(pos, minlength=p.catalog_item_ids.size).astype(np.float64)


@dataclass
class AlsModel:
    user_factors: npt.NDArray[np.float32]
    item_factors: npt.NDArray[np.float32]
    #: row of each evaluated user in the factor matrix
    user_pos: IntArray
    seconds: float


def fit_als(p: Prepared, ev: EvalSet, cfg: AlsConfig, seed: int) -> AlsModel:
    """implicit's ALS on the binary training matrix (rows: evaluated users first, then others)."""
    import time

    import scipy.sparse as sp
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    train = p.split.train
    hit, ipos = catalog_positions(p, train.item_ids)
    train_users = np.unique(train.user_ids[hit])
    others = train_users[~np.isin(train_users, ev.user_ids)]
    order = np.concatenate([ev.user_ids, others])
    sorter = np.argsort(order)
    upos = sorter[np.searchsorted(order, train.user_ids[hit], sorter=sorter)]
    matrix = sp.csr_matrix(
        (np.full(upos.size, cfg.alpha, dtype=np.float32), (upos, ipos)),
        shape=(order.size, p.catalog_item_ids.size),
    )
    matrix.sum_duplicates()
    matrix.data = np.minimum(matrix.data, cfg.alpha).astype(np.float32)
    # implicit parallelises itself; a second BLAS thread pool underneath only thrashes
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=cfg.factors,
            regularization=cfg.regularization,
            iterations=cfg.iterations,
            random_state=seed,
        )
        started = time.perf_counter()
        model.fit(matrix, show_progress=False)
    return AlsModel(
        np.asarray(model.user_factors),
        np.asarray(model.item_factors),
        np.arange(ev.user_ids.size),
        time.perf_counter() - started,
    )


@torch.no_grad()
def ranker_scores(
    model: Ranker,
    p: Prepared,
    ev: EvalSet,
    users: IntArray,
    items: IntArray,
    batch: int = 65536,
) -> FloatArray:
    """Ranker logits for (user position, catalog position) pairs."""
    device = next(model.parameters()).device
    ut, it = FeatureTables(p.users, device), FeatureTables(p.items, device)
    u_idx = torch.as_tensor(p.users.encoder.ids.encode(ev.user_ids[users]), device=device)
    u_row = torch.as_tensor(ev.user_rows[users], device=device)
    u_hist = torch.as_tensor(p.history_of(ev.user_ids)[users], device=device)
    i_idx = torch.as_tensor(p.items.encoder.ids.encode(p.catalog_item_ids[items]), device=device)
    i_row = torch.as_tensor(p.catalog_item_rows[items], device=device)
    out: list[Tensor] = []
    for s in range(0, users.size, batch):
        sl = slice(s, s + batch)
        u_feats = _with_history(ut.gather(u_row[sl]), u_hist, s, batch, p)
        out.append(model(u_idx[sl], u_feats, i_idx[sl], it.gather(i_row[sl])))
    if not out:
        return np.zeros(0)
    return torch.cat(out).double().cpu().numpy()


def sample_ranking_candidates(
    ev: EvalSet, n_catalog: int, negatives: int, seed: int
) -> tuple[IntArray, IntArray, BoolArray]:
    """Each user's relevant items plus ``negatives`` uniform catalog items they never touched."""
    rng = np.random.default_rng(seed)
    n_users = ev.user_ids.size
    neg_u = np.repeat(np.arange(n_users), negatives)
    neg_i = rng.integers(0, n_catalog, size=neg_u.size)
    known = np.concatenate(
        [ev.seen_users * n_catalog + ev.seen_items, ev.rel_users * n_catalog + ev.rel_items]
    )
    keep = ~np.isin(neg_u * n_catalog + neg_i, known)
    keys = np.unique(neg_u[keep] * n_catalog + neg_i[keep])
    neg_u, neg_i = keys // n_catalog, keys % n_catalog
    users = np.concatenate([ev.rel_users, neg_u])
    items = np.concatenate([ev.rel_items, neg_i])
    labels = np.concatenate([np.ones(ev.rel_users.size, bool), np.zeros(neg_u.size, bool)])
    return users.astype(np.int64), items.astype(np.int64), labels


def served_scores(
    model: Ranker,
    p: Prepared,
    ev: EvalSet,
    uvec: npt.NDArray[np.float32],
    ivec: npt.NDArray[np.float32],
    *,
    candidates: int,
    k: int,
    max_users: int,
    seed: int,
    fusion: ScoreFusion = scoring.RANKER_ONLY,
    chunk: int = 256,
) -> tuple[FloatArray, IntArray, int]:
    """The scores serving would log: per user (at most ``max_users``, drawn with ``seed``), the
    final scores (``scoring.fuse`` of the ranker's logits and the retrieval scores) of its top
    ``k`` among the two-tower's ``candidates`` best items outside the user's training history.
    Returns the scores, each one's rank (0 = first served) and the number of users."""
    n = ev.user_ids.size
    chosen = np.sort(np.random.default_rng(seed).permutation(n)[:max_users])
    c = min(candidates, p.catalog_item_ids.size)
    if chosen.size == 0 or c == 0:
        return np.zeros(0), np.zeros(0, np.int64), 0
    users, items = [], []
    for s in range(0, chosen.size, chunk):
        part = chosen[s : s + chunk]
        scores = (uvec[part] @ ivec.T).astype(np.float64)
        row = np.minimum(np.searchsorted(part, ev.seen_users), part.size - 1)
        mine = part[row] == ev.seen_users
        scores[row[mine], ev.seen_items[mine]] = -np.inf
        top = np.argpartition(-scores, c - 1, axis=1)[:, :c]
        ok = np.isfinite(np.take_along_axis(scores, top, axis=1))
        users.append(np.repeat(part, c).reshape(top.shape)[ok])
        items.append(top[ok])
    u, i = np.concatenate(users), np.concatenate(items)
    if u.size == 0:
        return np.zeros(0), np.zeros(0, np.int64), 0
    retrieval = np.einsum("ij,ij->i", uvec[u], ivec[i]).astype(np.float32)
    logits = ranker_scores(model, p, ev, u, i) if fusion.uses_ranker else None
    final = scoring.fuse(fusion, logits, retrieval).astype(np.float64)
    # the top k scores of each user: sort by (user, -score), keep ranks below k
    order = np.lexsort((-final, u))
    u_sorted = u[order]
    starts = np.r_[0, np.flatnonzero(u_sorted[1:] != u_sorted[:-1]) + 1]
    rank = np.arange(u_sorted.size) - np.repeat(starts, np.diff(np.r_[starts, u_sorted.size]))
    keep = rank < k
    return final[order][keep], rank[keep].astype(np.int64), int(starts.size)


@dataclass(frozen=True)
class CandidateScores:
    """Users' retrieval candidates with both scores the final score is fused from: one
    ranker pass serves every fusion of the grid (``choose_fusion``)."""

    #: pairs of row r (a position in the users given) are ``starts[r]:starts[r + 1]``, in
    #: retrieval order
    starts: IntArray
    #: catalog position of each pair's item
    items: IntArray
    #: the ranker's logit of each pair (None without a ranker)
    logits: FloatArray | None
    #: the two-tower inner product of each pair: what the ANN search gives the gateway
    retrieval: npt.NDArray[np.float32]


def candidate_scores(
    ranker: Ranker | None,
    p: Prepared,
    ev: EvalSet,
    users: IntArray,
    candidates: IntArray,
    uvec: npt.NDArray[np.float32],
    ivec: npt.NDArray[np.float32],
) -> CandidateScores:
    """Both scores of every (user, candidate) pair: ``candidates`` are catalog positions,
    best first, -1 padding (history already removed, as the gateway's seen filter does)."""
    ok = candidates >= 0
    pair_u = np.repeat(np.arange(users.size), candidates.shape[1]).reshape(candidates.shape)[ok]
    pair_i = candidates[ok].astype(np.int64)
    retrieval = np.einsum("ij,ij->i", uvec[users[pair_u]], ivec[pair_i]).astype(np.float32)
    logits = (
        ranker_scores(ranker, p, ev, users[pair_u], pair_i)
        if ranker is not None and pair_i.size
        else None
    )
    starts = np.r_[0, np.cumsum(ok.sum(axis=1))].astype(np.int64)
    return CandidateScores(starts, pair_i, logits, retrieval)


def fused_lists(scores: CandidateScores, fusion: ScoreFusion, k: int) -> IntArray:
    """The list the gateway would serve each user: the candidates' final scores
    (``scoring.fuse``, the gateway's own formula) put in order by ``rules.final_list``, the
    gateway's own ordering code, with the Recommender's default ordering (no boosts, no
    diversity: those read item rows from the feature store, which the training Job does not
    hold). Returns [users, k] catalog positions, -1 where the list is shorter."""
    n_rows = scores.starts.size - 1
    out = np.full((n_rows, k), -1, dtype=np.int64)
    if scores.items.size == 0:
        return out
    final = scoring.fuse(fusion, scores.logits, scores.retrieval)
    rule = Ordering()
    for row in range(n_rows):
        sl = slice(scores.starts[row], scores.starts[row + 1])
        listed = rules.final_list(scores.items[sl], final[sl], rule, {}, k)
        out[row, : len(listed)] = [s.item_id for s in listed]
    return out


def served_lists(
    ranker: Ranker,
    p: Prepared,
    ev: EvalSet,
    users: IntArray,
    candidates: IntArray,
    k: int,
    *,
    uvec: npt.NDArray[np.float32],
    ivec: npt.NDArray[np.float32],
    fusion: ScoreFusion,
) -> IntArray:
    """``fused_lists`` of the users' ``candidates`` (see ``candidate_scores``)."""
    return fused_lists(candidate_scores(ranker, p, ev, users, candidates, uvec, ivec), fusion, k)


def fusion_label(fusion: ScoreFusion) -> str:
    """A grid point's name in metrics.json."""
    if fusion == scoring.RETRIEVAL_ONLY:
        return "retrievalOnly"
    if fusion == scoring.RANKER_ONLY:
        return "rankerOnly"
    return f"ranker+{fusion.retrieval_weight:g}*retrieval"


def selection_k(ks: Sequence[int]) -> int:
    """The K of the NDCG the fusion is chosen by: 20, the issue's cut-off, when evaluated,
    else the largest K."""
    return 20 if 20 in ks else max(ks)


def grid_ndcg(
    scores: CandidateScores, rel_users: IntArray, rel_items: IntArray, n_rel: IntArray, k: int
) -> dict[str, float]:
    """Mean NDCG@k of each grid fusion's lists (rows of ``scores`` are the users of
    ``n_rel``, every one with relevant items)."""
    out: dict[str, float] = {}
    for fusion in scoring.FUSION_GRID:
        hits = hit_matrix(fused_lists(scores, fusion, k), rel_users, rel_items)
        out[fusion_label(fusion)] = float(per_user_retrieval(hits, n_rel, [k])[f"ndcg@{k}"].mean())
    return out


def best_of_grid(ndcg: dict[str, float]) -> ScoreFusion:
    """The grid point with the highest NDCG; on a tie the earlier one (ranker only first)."""
    best = scoring.FUSION_GRID[0]
    for fusion in scoring.FUSION_GRID[1:]:
        if ndcg[fusion_label(fusion)] > ndcg[fusion_label(best)]:
            best = fusion
    return best


def _candidates_and_relevance(
    p: Prepared, ev: EvalSet, uvec: npt.NDArray[np.float32], ivec: npt.NDArray[np.float32], c: int
) -> tuple[IntArray, IntArray, IntArray, IntArray]:
    """Users with relevant items, their top ``c`` retrieval candidates, and the relevant pairs
    renumbered to those users' rows."""
    n_rel = ev.n_relevant
    users = np.flatnonzero(n_rel > 0)
    top = top_k(lambda u: uvec[u] @ ivec.T, ev, ev.user_ids.size, c)[users]
    row_of = np.full(ev.user_ids.size, -1, dtype=np.int64)
    row_of[users] = np.arange(users.size)
    return users, top, row_of[ev.rel_users], n_rel[users]


def choose_fusion(
    cfg: TrainConfig, p: Prepared, two_tower: TwoTower, ranker: Ranker
) -> tuple[ScoreFusion, dict[str, Any]]:
    """The grid's best fusion by NDCG on a validation split of the training interactions
    (``dataset.validation_view``: the same kind of split, carved from training; history and
    seen items as of the carve). Both networks were trained on the validation interactions
    too, so the split is optimistic for both; it never touches the test split. Without a
    usable validation split: ranker only, as before fusion existed."""
    ec = cfg.evaluation
    k = selection_k(ec.k)
    try:
        pv = validation_view(p, ec.split, ec.holdout_fraction)
    except BadInputError as exc:
        return scoring.RANKER_ONLY, {"chosenOn": f"default: no validation split ({exc})"}
    ev = build_eval_set(pv, ec.users)
    if not (ev.n_relevant > 0).any():
        return scoring.RANKER_ONLY, {"chosenOn": "default: no validation user"}
    uvec = user_vectors(two_tower, pv, ev.user_ids, ev.user_rows)
    ivec = item_vectors(two_tower, pv, pv.catalog_item_ids, pv.catalog_item_rows)
    c = max(min(ec.candidates, pv.catalog_item_ids.size), k)
    users, top, rel_rows, n_rel = _candidates_and_relevance(pv, ev, uvec, ivec, c)
    scores = candidate_scores(ranker, pv, ev, users, top, uvec, ivec)
    ndcg = grid_ndcg(scores, rel_rows, ev.rel_items, n_rel, k)
    return best_of_grid(ndcg), {
        "chosenOn": "validation",
        "validationUsers": int(users.size),
        f"validationNdcg@{k}": ndcg,
    }


# --- the whole evaluation --------------------------------------------------------------------


@dataclass
class Evaluation:
    metrics: dict[str, Any]
    eval_set: EvalSet
    #: two-tower vectors of the evaluated users: held-out queries for the index's recall check
    query_vectors: npt.NDArray[np.float32]
    catalog_vectors: npt.NDArray[np.float32]
    #: the ranker's served-like scores, their ranks and how many users they came from
    #: (``served_scores``)
    served_scores: FloatArray | None = None
    served_score_ranks: IntArray | None = None
    served_score_users: int = 0
    #: how the final list's scores are made (chosen on validation; ``scoring.json``)
    fusion: ScoreFusion = scoring.RANKER_ONLY


def evaluate(
    cfg: TrainConfig, p: Prepared, two_tower: TwoTower, ranker: Ranker | None
) -> Evaluation:
    ec = cfg.evaluation
    ks = sorted(set(ec.k))
    kmax = ks[-1]
    ev = build_eval_set(p, ec.users)
    n_users = ev.user_ids.size
    n_rel = ev.n_relevant
    has_rel = n_rel > 0
    uvec = user_vectors(two_tower, p, ev.user_ids, ev.user_rows)
    ivec = item_vectors(two_tower, p, p.catalog_item_ids, p.catalog_item_rows)

    def restrict(hits: BoolArray) -> BoolArray:
        return hits[has_rel]

    retrieval: dict[str, dict[str, float]] = {}
    scorers: dict[str, Scorer] = {TWO_TOWER: lambda u: uvec[u] @ ivec.T}
    pop = popularity_scores(p)
    if "popularity" in ec.baselines:
        scorers["popularity"] = lambda u: np.broadcast_to(pop, (u.size, pop.size))
    als: AlsModel | None = None
    if "als" in ec.baselines:
        als = fit_als(p, ev, ec.als, cfg.seed)
        fitted = als
        scorers["als"] = lambda u: fitted.user_factors[fitted.user_pos[u]] @ fitted.item_factors.T
    fusion, fusion_report = (
        choose_fusion(cfg, p, two_tower, ranker)
        if ranker is not None
        else (scoring.RANKER_ONLY, {})
    )
    served: dict[str, Any] = {}
    n_candidates = max(min(ec.candidates, p.catalog_item_ids.size), kmax)
    for name, scorer in scorers.items():
        top = top_k(scorer, ev, n_users, n_candidates if name == TWO_TOWER else kmax)
        hits = hit_matrix(top[:, :kmax], ev.rel_users, ev.rel_items)
        retrieval[name] = retrieval_metrics(restrict(hits), n_rel[has_rel], ks)
        per_user = per_user_retrieval(restrict(hits), n_rel[has_rel], ks)
        served[RETRIEVAL_ORDER if name == TWO_TOWER else name] = with_standard_errors(per_user)
        if name == TWO_TOWER and ranker is not None:
            users = np.flatnonzero(has_rel)
            final = np.full((n_users, kmax), -1, dtype=np.int64)
            pairs = candidate_scores(ranker, p, ev, users, top[users], uvec, ivec)
            final[users] = fused_lists(pairs, fusion, kmax)
            final_hits = restrict(hit_matrix(final, ev.rel_users, ev.rel_items))
            served[FINAL] = with_standard_errors(per_user_retrieval(final_hits, n_rel[has_rel], ks))
            # the whole grid on the test split: a diagnostic of the choice, never its input
            row_of = np.full(n_users, -1, dtype=np.int64)
            row_of[users] = np.arange(users.size)
            k_sel = selection_k(ks)
            fusion_report[f"testNdcg@{k_sel}"] = grid_ndcg(
                pairs, row_of[ev.rel_users], ev.rel_items, n_rel[users], k_sel
            )

    ranking: dict[str, dict[str, float]] = {}
    cu, ci, labels = sample_ranking_candidates(
        ev, p.catalog_item_ids.size, ec.ranking_negatives, cfg.seed
    )
    rank_scores: dict[str, FloatArray] = {
        TWO_TOWER: np.einsum("ij,ij->i", uvec[cu], ivec[ci]).astype(np.float64),
        "popularity": pop[ci],
    }
    if ranker is not None:
        rank_scores[RANKER] = ranker_scores(ranker, p, ev, cu, ci)
    if als is not None:
        rank_scores["als"] = np.einsum(
            "ij,ij->i", als.user_factors[als.user_pos[cu]], als.item_factors[ci]
        ).astype(np.float64)
    for name, scores in rank_scores.items():
        ranking[name] = grouped_ranking_metrics(cu, scores, labels, ks)

    metrics: dict[str, Any] = {
        "protocol": "time-split holdout; see recsys_workloads.train.evaluate",
        "split": {
            "cutoff": int(p.split.cutoff_us),
            "trainInteractions": len(p.split.train),
            **(
                {"trainedInteractions": len(p.trained), "windowSince": p.window_since_us}
                if p.window_since_us is not None
                else {}
            ),
            "testInteractions": len(p.split.test),
            "testOutsideCatalog": ev.test_outside_catalog,
            "evaluatedUsers": int(has_rel.sum()),
            "users": ec.users,
            "split": ec.split,
            "catalogItems": int(p.catalog_item_ids.size),
            "rankingNegatives": ec.ranking_negatives,
        },
        "retrieval": retrieval,
        "ranking": ranking,
        "served": {
            "candidates": n_candidates,
            "ordering": (
                "final scores (recsys_workloads.scoring), no boosts or diversity "
                "(recsys_workloads.gateway.rules)"
            ),
            **({"fusion": {**fusion.to_json(), **fusion_report}} if ranker is not None else {}),
            **served,
        },
    }
    if als is not None:
        metrics["baselineParams"] = {"als": ec.als.model_dump(by_alias=True)}
    out = Evaluation(metrics, ev, uvec, ivec, fusion=fusion)
    if ranker is not None:
        out.served_scores, out.served_score_ranks, out.served_score_users = served_scores(
            ranker,
            p,
            ev,
            uvec,
            ivec,
            candidates=SCORE_CANDIDATES,
            k=SCORE_TOP_K,
            max_users=SCORE_MAX_USERS,
            seed=cfg.seed,
            fusion=fusion,
        )
    return out
