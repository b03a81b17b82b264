"""How the gateway's item-to-item lists agree with co-occurrence neighbours (MovieLens-100k).

``GET /v1/items/{id}/similar`` answers with the item's nearest items by inner product in the
item tower's space, the vectors a version exports and indexes. This trains a two-tower with
the training Job's own code (TrainConfig defaults, the time split's training side), takes
those vectors, and compares each item's top-k with its top-k co-occurrence neighbours: the
cosine between the items' columns of the binary user-item training matrix ("people who
watched X also watched"), the classic item-to-item list. References on the same items:
ALS's item factors (cosine; implicit at its defaults) and "most popular first" (the same k
items for every item), so the figure has a floor and a peer. Exact search over the catalog
here: the served index approximates it (its recall is in benchmarks/README.md, "ANN index").

    .venv/bin/python benchmarks/similar_items.py --threads 1
    .venv/bin/python benchmarks/similar_items.py --threads 1 --seed 1

Items evaluated: those with at least ``--min-users`` training users (co-occurrence means
little below that); overlap@k = |both lists| / k, mean ± standard error over items, overall
and for the head (the most interacted tenth of those items) and the rest.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch
import train_quality as tq  # benchmarks/ is on sys.path when run as a script

from recsys_contract.train import AlsConfig
from recsys_workloads.artifact_store import Store
from recsys_workloads.train.dataset import prepare
from recsys_workloads.train.evaluate import (
    build_eval_set,
    catalog_positions,
    fit_als,
    item_vectors,
)
from recsys_workloads.train.trainer import Distributed, train

Array = npt.NDArray[Any]


def top_neighbours(similarity: Array, rows: Array, k: int) -> Array:
    """Each row item's k most similar catalog positions, itself excluded."""
    sims = np.array(similarity[rows], dtype=np.float64, copy=True)
    sims[np.arange(rows.size), rows] = -np.inf
    part = np.argpartition(-sims, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def cosine(vectors: Array) -> Array:
    v = np.asarray(vectors, dtype=np.float64)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return v @ v.T


def overlap(a: Array, b: Array) -> Array:
    return np.array([len(set(x) & set(y)) / a.shape[1] for x, y in zip(a, b, strict=True)])


def mean_se(values: Array) -> dict[str, float]:
    return {
        "mean": float(values.mean()),
        "se": float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--min-users", type=int, default=20)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    interactions, users, items = tq.load_movielens()
    cfg = tq.config(tq.CANDIDATES[0], {"training": {"epochs": 10}}, seed=args.seed)
    p = prepare(cfg, interactions, users, items)
    result = train(cfg, p, Store({}), Distributed())
    with torch.no_grad():
        tower = item_vectors(result.two_tower, p, p.catalog_item_ids, p.catalog_item_rows)

    trained = p.split.train
    hit, ipos = catalog_positions(p, trained.item_ids)
    _, upos = np.unique(trained.user_ids[hit], return_inverse=True)
    matrix = sp.csr_matrix(
        (np.ones(upos.size, dtype=np.float64), (upos, ipos)),
        shape=(int(upos.max()) + 1, p.catalog_item_ids.size),
    )
    matrix.data = np.minimum(matrix.data, 1.0)  # a user's repeated interactions count once
    users_per_item = np.asarray(matrix.sum(axis=0)).ravel()
    co = (matrix.T @ matrix).toarray()
    co_cosine = co / np.sqrt(np.outer(users_per_item, users_per_item)).clip(min=1e-12)

    rows = np.flatnonzero(users_per_item >= args.min_users)
    head = rows[np.argsort(-users_per_item[rows], kind="stable")][: max(1, rows.size // 10)]
    is_head = np.isin(rows, head)
    truth = top_neighbours(co_cosine, rows, args.k)

    als = fit_als(p, build_eval_set(p, "warm"), AlsConfig(), args.seed)
    popular = np.tile(np.argsort(-users_per_item, kind="stable")[: args.k + 1], (rows.size, 1))
    popular = np.array(
        [[i for i in r if i != own][: args.k] for r, own in zip(popular, rows, strict=True)]
    )
    lists = {
        "twoTower": top_neighbours(cosine(tower), rows, args.k),
        "als": top_neighbours(cosine(als.item_factors), rows, args.k),
        "popularity": popular,
    }
    report: dict[str, Any] = {
        "seed": args.seed,
        "k": args.k,
        "minUsers": args.min_users,
        "items": int(rows.size),
        "headItems": int(head.size),
        "catalog": int(p.catalog_item_ids.size),
    }
    for name, top in lists.items():
        o = overlap(top, truth)
        report[name] = {
            "all": mean_se(o),
            "head": mean_se(o[is_head]),
            "rest": mean_se(o[~is_head]),
        }
    report["seconds"] = round(time.perf_counter() - started, 1)
    tq.RESULTS.mkdir(exist_ok=True)
    path = tq.RESULTS / f"similar_items-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(
        f"MovieLens-100k, seed {args.seed}: {rows.size} items with >= {args.min_users} users "
        f"(head {head.size}), overlap@{args.k} with co-occurrence neighbours"
    )
    print("| list | all | head | rest |\n|---|---|---|---|")
    for name in lists:
        cells = [
            f"{report[name][c]['mean']:.3f} ± {report[name][c]['se']:.3f}" for c in report[name]
        ]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"raw results: {path} ({report['seconds']} s)")


if __name__ == "__main__":
    main()
