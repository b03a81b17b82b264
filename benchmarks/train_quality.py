"""The served list's quality on MovieLens-100k (and a synthetic set): the final list (two-tower
candidates, ranker, ordering rules) vs retrieval order vs popularity vs implicit's ALS.

Protocol (honest tuning: the test split is touched once per seed, at the end):

1. MovieLens-100k converted by ``recsys_workloads.datasets.movielens`` (the recbole wheel's copy).
2. Test splits: the training Job's own, ``evaluation.split``: ``time`` (the global cut, last 10%
   of interactions by time; few users are active on both sides) and ``perUser`` (each user's
   last 10%; every user counts). Validation split: the time cut applied again to the
   interactions *before* the test cutoff (tuning uses the time split only).
3. Tuning on validation only: ALS over a grid of factors × regularisation × alpha (averaged
   over the seeds), the two-tower over a short list of candidate configs (``CANDIDATES``),
   each picked by validation Recall@20; then the ranker's share of hard negatives
   (``HARD_NEGATIVES``) by the validation NDCG@20 of the final served list.
4. Final: for every split and seed, train with the training Job's own code (``prepare`` →
   ``train`` → ``evaluate``), ALS at its chosen hyper-parameters and popularity on the same
   split and users (``warm`` users: those with training history, the only ones ALS can
   score). ``served`` is the end-to-end evaluation (``recsys_workloads.train.evaluate``).
   Tables: mean over seeds ± the standard error over users (averaged over seeds), and the
   final list's lift over ALS and popularity.

    .venv/bin/python benchmarks/train_quality.py                # tune, then 3 seeds, both splits
    .venv/bin/python benchmarks/train_quality.py --no-tune      # TrainConfig's defaults
    .venv/bin/python benchmarks/train_quality.py --no-tune --synthetic 20000,5000,400000

Raw results go to benchmarks/results/train_quality-<time>.json; the tables are printed.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from recsys_contract.train import AlsConfig, TrainConfig
from recsys_workloads.artifact_store import Store
from recsys_workloads.datasets import movielens, synthetic
from recsys_workloads.train.config import parse_train_config
from recsys_workloads.train.data import Interactions, time_split, validate_interactions
from recsys_workloads.train.dataset import Prepared, prepare
from recsys_workloads.train.evaluate import (
    build_eval_set,
    evaluate,
    fit_als,
    hit_matrix,
    retrieval_metrics,
    top_k,
)
from recsys_workloads.train.trainer import Distributed, train

RESULTS = Path(__file__).parent / "results"
KS = [10, 20, 50]
HOLDOUT = 0.1

#: Two-tower candidates tried on validation (partial configs merged over BASE); each is
#: trained up to MAX_EPOCHS and evaluated after every epoch, so the epoch count is tuned too.
CANDIDATES: list[dict[str, Any]] = [
    {"model": {"historyLength": 50, "temperature": 0.1}},
    {"model": {"historyLength": 50, "temperature": 0.05}},
    {"model": {"historyLength": 0, "temperature": 0.1}},
]
MAX_EPOCHS = 12
#: shares of the ranker's negatives drawn from the retrieval candidates, tried on validation
HARD_NEGATIVES = [0.0, 0.5, 1.0]
#: lists of the end-to-end evaluation, in table order
SERVED_LISTS = ["final", "retrievalOrder", "popularity", "als"]
SPLITS = ["time", "perUser"]
BASE: dict[str, Any] = {
    "version": "bench",
    "data": {"interactionsUri": "-", "usersUri": "-", "itemsUri": "-"},
    "artifactUri": "memory://bench/unused",
    "model": {"embeddingDim": 64, "featureDim": 16, "towerHidden": [128]},
    "training": {"batchSize": 1024, "learningRate": 0.003, "device": "auto"},
    "evaluation": {"k": KS, "holdoutFraction": HOLDOUT},
}
ALS_GRID = {
    "factors": [16, 32, 64, 128],
    "regularization": [0.01, 0.1, 1.0, 10.0],
    "alpha": [1.0, 5.0, 20.0],
}


def merged(*parts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merged(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
    return out


def config(*parts: dict[str, Any], seed: int) -> TrainConfig:
    return parse_train_config(
        merged(BASE, *parts, {"seed": seed, "checkpointUri": f"memory://bench/{uuid.uuid4().hex}"})
    )


def als_metrics(p: Prepared, als: AlsConfig, seed: int) -> dict[str, float]:
    ev = build_eval_set(p, "warm")
    n_rel = ev.n_relevant
    keep = n_rel > 0
    model = fit_als(p, ev, als, seed)
    top = top_k(
        lambda u: model.user_factors[model.user_pos[u]] @ model.item_factors.T,
        ev,
        ev.user_ids.size,
        max(KS),
    )
    return retrieval_metrics(hit_matrix(top, ev.rel_users, ev.rel_items)[keep], n_rel[keep], KS)


def two_tower_run(p: Prepared, cfg: TrainConfig, with_baselines: bool) -> dict[str, Any]:
    started = time.perf_counter()
    result = train(cfg, p, Store({}), Distributed())
    if not with_baselines:
        cfg = cfg.model_copy(
            update={"evaluation": cfg.evaluation.model_copy(update={"baselines": []})}
        )
    evaluation = evaluate(cfg, p, result.two_tower, result.ranker)
    return {
        **evaluation.metrics,
        "seconds": round(time.perf_counter() - started, 1),
        "samplesPerSecond": round(result.samples / max(result.seconds, 1e-9), 1),
    }


def tune(
    val: Interactions, users: Any, items: Any, seeds: list[int], log: list[str]
) -> tuple[AlsConfig, dict[str, Any], dict[str, Any]]:
    p = prepare(config(seed=0), val, users, items)
    als_scores = []
    for f, reg, alpha in itertools.product(*ALS_GRID.values()):
        als = AlsConfig(factors=f, regularization=reg, alpha=alpha, iterations=15)
        r20 = float(np.mean([als_metrics(p, als, s)["recall@20"] for s in seeds]))
        als_scores.append((r20, als))
        log.append(f"val ALS factors={f} reg={reg} alpha={alpha}: recall@20={r20:.4f}")
    best_als = max(als_scores, key=lambda x: x[0])
    tt_scores = []
    for cand in CANDIDATES:
        checkpoints = f"memory://bench/{uuid.uuid4().hex}"
        p_cand = prepare(config(cand, seed=seeds[0]), val, users, items)
        for epochs in range(1, MAX_EPOCHS + 1):
            # resuming from the previous epoch's checkpoint: one more epoch per round
            cfg = parse_train_config(
                merged(
                    BASE,
                    cand,
                    {
                        "seed": seeds[0],
                        "checkpointUri": checkpoints,
                        "training": {"epochs": epochs},
                    },
                )
            )
            m = two_tower_run(p_cand, cfg, with_baselines=False)
            r20 = m["retrieval"]["twoTower"]["recall@20"]
            chosen = merged(cand, {"training": {"epochs": epochs}})
            tt_scores.append((r20, chosen))
            log.append(f"val two-tower {json.dumps(chosen)}: recall@20={r20:.4f}")
            print(log[-1], flush=True)
    best_tt = max(tt_scores, key=lambda x: x[0])
    hard_scores = []
    for share in HARD_NEGATIVES:
        chosen = merged(best_tt[1], {"training": {"rankerHardNegatives": share}})
        cfg = config(chosen, seed=seeds[0])
        m = two_tower_run(prepare(cfg, val, users, items), cfg, with_baselines=False)
        n20 = m["served"]["final"]["ndcg@20"]
        hard_scores.append((n20, chosen))
        log.append(
            f"val rankerHardNegatives={share}: served ndcg@20={n20:.4f} "
            f"(retrieval order {m['served']['retrievalOrder']['ndcg@20']:.4f})"
        )
        print(log[-1], flush=True)
    best_hard = max(hard_scores, key=lambda x: x[0])
    tuning = {
        "als": [{"recall@20": r, **a.model_dump(by_alias=True)} for r, a in als_scores],
        "twoTower": [{"recall@20": r, "config": c} for r, c in tt_scores],
        "rankerHardNegatives": [{"servedNdcg@20": r, "config": c} for r, c in hard_scores],
    }
    return best_als[1], best_hard[1], tuning


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, list[float]]]]:
    out: dict[str, dict[str, dict[str, list[float]]]] = {
        "retrieval": {},
        "ranking": {},
        "served": {},
    }
    for run in runs:
        for section in ("retrieval", "ranking", "served"):
            for model, values in run[section].items():
                if not isinstance(values, dict):
                    continue
                for name, value in values.items():
                    if not isinstance(value, int | float):
                        continue  # served.fusion's grids: read from the raw runs
                    out[section].setdefault(model, {}).setdefault(name, []).append(float(value))
    return out


def table(summary: dict[str, Any]) -> str:
    def cell(values: list[float]) -> str:
        return f"{np.mean(values):.4f} ± {np.std(values):.4f}"

    cols = [f"{m}@{k}" for m in ("recall", "ndcg") for k in KS]
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for model, values in summary["retrieval"].items():
        lines.append(f"| {model} | " + " | ".join(cell(values[c]) for c in cols) + " |")
    rcols = ["auc", "userAuc", "ndcg@10", "ndcg@20"]
    lines += ["", "| ranking | " + " | ".join(rcols) + " |", "|---" * (len(rcols) + 1) + "|"]
    for model, values in summary["ranking"].items():
        lines.append(f"| {model} | " + " | ".join(cell(values[c]) for c in rcols) + " |")
    return "\n".join(lines)


def served_table(summary: dict[str, Any]) -> str:
    """The served lists: mean over seeds ± standard error over users, and the final list's
    lift over each list (relative, of the means)."""
    served = summary["served"]
    cols = ["recall@20", "ndcg@20"]

    def cell(values: dict[str, list[float]], c: str) -> str:
        return f"{np.mean(values[c]):.4f} ± {np.mean(values[c + '.se']):.4f}"

    def lift(model: str, c: str) -> str:
        if "final" not in served or model == "final":
            return ""
        base = float(np.mean(served[model][c]))
        return f"{float(np.mean(served['final'][c])) / base - 1:+.1%}" if base else ""

    head = " | ".join(cols) + " | " + " | ".join(f"final vs ({c})" for c in cols)
    lines = [f"| list | {head} |", "|---" * (2 * len(cols) + 1) + "|"]
    for model in SERVED_LISTS:
        if model in served:
            lines.append(
                f"| {model} | "
                + " | ".join(cell(served[model], c) for c in cols)
                + " | "
                + " | ".join(lift(model, c) for c in cols)
                + " |"
            )
    return "\n".join(lines)


def load_movielens() -> tuple[Interactions, Any, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        paths = movielens.write_dataset(str(Path(tmp) / "ml-100k"))
        interactions = validate_interactions(pq.read_table(paths.interactions))
        return interactions, pq.read_table(paths.users), pq.read_table(paths.items)


def load_synthetic(size: str) -> tuple[Interactions, Any, Any]:
    n_users, n_items, n_interactions = (int(x) for x in size.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        paths = synthetic.write_dataset(
            str(Path(tmp) / "synthetic"),
            users=n_users,
            items=n_items,
            interactions=n_interactions,
        )
        interactions = validate_interactions(pq.read_table(paths.interactions))
        return interactions, pq.read_table(paths.users), pq.read_table(paths.items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--first-seed", type=int, default=0, help="seeds first-seed..first-seed+seeds-1"
    )
    parser.add_argument("--no-tune", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--splits", default=",".join(SPLITS), help="comma-separated")
    parser.add_argument(
        "--synthetic",
        default="",
        help="also a synthetic set of USERS,ITEMS,INTERACTIONS (untuned: the chosen configs)",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    splits = [s for s in args.splits.split(",") if s]
    interactions, users, items = load_movielens()
    test_cut = time_split(interactions, HOLDOUT).cutoff_us
    val = interactions.take(interactions.times_us < test_cut)
    log: list[str] = []
    if args.no_tune:
        best_als = AlsConfig()
        best_tt, tuning = merged(CANDIDATES[0], {"training": {"epochs": 10}}), {}
    else:
        best_als, best_tt, tuning = tune(val, users, items, seeds, log)
    print(f"chosen ALS {best_als.model_dump(by_alias=True)}; two-tower {json.dumps(best_tt)}")
    datasets = {"movielens-100k": (interactions, users, items)}
    if args.synthetic:
        datasets[f"synthetic-{args.synthetic}"] = load_synthetic(args.synthetic)
    als_part = {"evaluation": {"als": best_als.model_dump(by_alias=True)}}
    results: dict[str, Any] = {}
    for name, (data, d_users, d_items) in datasets.items():
        for split in splits:
            runs = []
            for seed in seeds:
                cfg = config(best_tt, als_part, {"evaluation": {"split": split}}, seed=seed)
                p = prepare(cfg, data, d_users, d_items)
                runs.append(two_tower_run(p, cfg, with_baselines=True))
                served = runs[-1]["served"]
                print(
                    f"{name} {split} seed {seed}: served ndcg@20 "
                    + ", ".join(f"{m} {served[m]['ndcg@20']:.4f}" for m in SERVED_LISTS)
                    + f"; fusion {json.dumps(served.get('fusion'))}"
                    + f" ({runs[-1]['seconds']}s)",
                    flush=True,
                )
            results[f"{name}/{split}"] = {"runs": runs, "summary": summarise(runs)}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"train_quality-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(
        json.dumps(
            {
                "chosen": {"als": best_als.model_dump(by_alias=True), "twoTower": best_tt},
                "tuning": tuning,
                "tuningLog": log,
                "results": results,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
            },
            indent=2,
            default=str,
        )
    )
    for key, result in results.items():
        split_info = result["runs"][0]["split"]
        print(f"\n### {key} ({split_info['evaluatedUsers']} users, {len(seeds)} seeds)")
        print(served_table(result["summary"]))
        print()
        print(table(result["summary"]))
    print(f"\nraw results: {path}")


if __name__ == "__main__":
    main()
