"""Warm against cold retraining on a shifting synthetic world: time to a gate-passing model
and the quality of each.

Protocol (everything runs through the training Job's own entry, ``train.pipeline.run``):

1. A synthetic world (``datasets.synthetic``) whose tastes and new users' features drift
   over the period (``--drift``); half the users exist at the start, the rest appear over it.
2. v1, the serving version: trained cold on the first ``--early-days`` only (its own
   time-split holdout gives the metrics a ModelVersion keeps in status).
3. The retrain, on the whole period (the later days are the shifted ones): cold on all data
   for ``--cold-epochs`` (and for fewer epochs, so a cheaper cold run gets its chance), and
   warm from v1's artifact on the last ``--window-hours`` before the holdout cutoff for
   each of ``--warm-epochs``. All retrains share one time split (the newest 10% of the
   whole period): their metrics are measured on the same test rows and users.
4. "v1 as is" is v1's weights, carried into the retrain's vocabularies and not trained at
   all, measured on that same holdout: what serving would keep without a retrain.
5. The gate is the CRD's default: recall@20 at most 5% below the serving version's (v1's
   status metrics, measured on its own holdout). Time to a gate-passing model is the wall
   time of the cheapest run of each kind that passes (reading, training, evaluation and
   export; ``trainSeconds`` is the loop alone).

    .venv/bin/python benchmarks/warm_start.py                 # 3 seeds, a few minutes
    .venv/bin/python benchmarks/warm_start.py --seeds 1

Raw results go to benchmarks/results/warm_start-<time>.json; the table is printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from recsys_workloads.artifact_store import Store
from recsys_workloads.datasets.synthetic import DEFAULT_START, SyntheticSpec, write_dataset
from recsys_workloads.train import warm
from recsys_workloads.train.config import parse_train_config
from recsys_workloads.train.evaluate import evaluate
from recsys_workloads.train.export import headline_metrics
from recsys_workloads.train.models import Ranker, TwoTower
from recsys_workloads.train.pipeline import load_prepared
from recsys_workloads.train.pipeline import run as run_training
from recsys_workloads.train.trainer import make_deterministic

RESULTS = Path(__file__).parent / "results"
GATE_METRIC = "twoTower.recall@20"
MAX_REGRESSION = 0.05
SHOWN = ("twoTower.recall@10", "twoTower.recall@20", "twoTower.ndcg@20", "ranker.ranking.auc")


def config(paths: Any, artifact: str, seed: int, epochs: int, **extra: Any) -> dict[str, Any]:
    """A small model on one thread, as tests/testbed/served_traffic.py trains."""
    return {
        "version": Path(artifact).name,
        "seed": seed,
        "data": {
            "interactionsUri": paths["interactions"],
            "usersUri": paths["users"],
            "itemsUri": paths["items"],
        },
        "artifactUri": artifact,
        "features": {"user": ["age", "gender", "occupation"], "item": ["genres", "release_year"]},
        "model": {
            "embeddingDim": 16,
            "featureDim": 8,
            "towerHidden": [32],
            "rankerHidden": [32],
            "historyLength": 0,
        },
        "training": {
            "epochs": epochs,
            "batchSize": 512,
            "learningRate": 0.01,
            "device": "cpu",
            "cpuThreads": 1,
        },
        "evaluation": {"k": [10, 20], "rankingNegatives": 20, "baselines": ["popularity"]},
        **extra,
    }


def timed(cfg: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    summary = run_training(cfg)
    return {
        "wallSeconds": round(time.perf_counter() - started, 2),
        "trainSeconds": summary["trainSeconds"],
        "metrics": {k: summary["metrics"][k] for k in SHOWN},
        "warmStart": (summary.get("lineage") or {}).get("warmStart"),
        "digest": summary["digest"],
    }


def v1_as_is(raw: dict[str, Any]) -> dict[str, float]:
    """v1's weights in the retrain's vocabularies, untrained, on the retrain's holdout."""
    cfg = parse_train_config(raw)
    loaded = load_prepared(cfg, Store({}))
    assert loaded.checkpoint is not None
    make_deterministic(cfg.seed)
    shape = loaded.prepared.model_shape(cfg)
    two_tower, ranker = TwoTower(shape), Ranker(shape)
    warm.start_from(loaded.checkpoint, loaded.prepared, two_tower, ranker)
    two_tower.eval()
    ranker.eval()
    with torch.no_grad():
        ev = evaluate(cfg, loaded.prepared, two_tower, ranker)
    headline = headline_metrics(ev.metrics)
    return {k: headline[k] for k in SHOWN}


def one_seed(args: argparse.Namespace, seed: int, root: Path) -> dict[str, Any]:
    spec = SyntheticSpec(
        users=args.users, items=args.items, interactions=args.interactions, days=args.days,
        drift=args.drift, seed=seed, initial_fraction=0.5,
    )  # fmt: skip
    world = write_dataset(str(root / f"world-{seed}"), spec=spec)
    full = {"interactions": world.interactions, "users": world.users, "items": world.items}
    # what v1 knew: the first days
    early_path = root / f"early-{seed}.parquet"
    table = pq.read_table(world.interactions)
    cutoff = DEFAULT_START + dt.timedelta(days=args.early_days)
    pq.write_table(table.filter(pc.less(table["event_timestamp"], cutoff)), early_path)
    early = {**full, "interactions": str(early_path)}

    out: dict[str, Any] = {"seed": seed, "interactions": table.num_rows}
    v1_uri = f"file://{root}/v1-{seed}"
    out["v1"] = timed(config(early, v1_uri, seed, args.cold_epochs))
    floor = out["v1"]["metrics"][GATE_METRIC] * (1 - MAX_REGRESSION)
    out["gateFloor"] = round(floor, 5)
    source = {"artifactUri": v1_uri, "version": "v1", "digest": out["v1"]["digest"],
              "windowSeconds": args.window_hours * 3600}  # fmt: skip
    out["v1AsIs"] = v1_as_is(config(full, f"file://{root}/asis-{seed}", seed, 1,
                                    warmStart=source))  # fmt: skip
    runs: list[dict[str, Any]] = []
    for epochs in sorted(set([*args.cold_epochs_tried, args.cold_epochs])):
        r = timed(config(full, f"file://{root}/cold{epochs}-{seed}", seed, epochs))
        runs.append({"kind": "cold", "epochs": epochs, **r})
    for epochs in args.warm_epochs:
        r = timed(config(full, f"file://{root}/warm{epochs}-{seed}", seed, args.cold_epochs,
                         warmStart={**source, "epochs": epochs}))  # fmt: skip
        runs.append({"kind": "warm", "epochs": epochs, **r})
    for r in runs:
        r["passes"] = r["metrics"][GATE_METRIC] >= floor
    out["runs"] = runs
    return out


def fmt(values: list[float], digits: int = 4) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def table(results: list[dict[str, Any]]) -> str:
    rows = ["| run | epochs | wall s | train s | " + " | ".join(SHOWN) + " | passes gate |",
            "|---" * (len(SHOWN) + 5) + "|"]  # fmt: skip
    v1 = [r["v1"] for r in results]
    rows.append(
        "| v1 (early days, own holdout) | – | "
        f"{fmt([r['wallSeconds'] for r in v1], 1)} | {fmt([r['trainSeconds'] for r in v1], 1)} | "
        + " | ".join(fmt([r["metrics"][k] for r in v1]) for k in SHOWN)
        + " | – |"
    )
    rows.append(
        "| v1 as is, not retrained | – | – | – | "
        + " | ".join(fmt([r["v1AsIs"][k] for r in results]) for k in SHOWN)
        + " | "
        + f"{sum(r['v1AsIs'][GATE_METRIC] >= r['gateFloor'] for r in results)}/{len(results)} |"
    )
    keys = [(r["kind"], r["epochs"]) for r in results[0]["runs"]]
    for kind, epochs in keys:
        same = [next(x for x in r["runs"] if (x["kind"], x["epochs"]) == (kind, epochs))
                for r in results]  # fmt: skip
        rows.append(
            f"| {kind} | {epochs} | {fmt([x['wallSeconds'] for x in same], 1)} | "
            f"{fmt([x['trainSeconds'] for x in same], 1)} | "
            + " | ".join(fmt([x["metrics"][k] for x in same]) for k in SHOWN)
            + f" | {sum(x['passes'] for x in same)}/{len(same)} |"
        )
    return "\n".join(rows)


def time_to_gate(results: list[dict[str, Any]]) -> dict[str, list[float | None]]:
    """Per seed and kind: the wall time of the cheapest run that passes the gate."""
    out: dict[str, list[float | None]] = {"cold": [], "warm": []}
    for r in results:
        for kind in out:
            passing = [x["wallSeconds"] for x in r["runs"] if x["kind"] == kind and x["passes"]]
            out[kind].append(min(passing) if passing else None)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--users", type=int, default=3000)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--interactions", type=int, default=120_000)
    parser.add_argument("--days", type=float, default=60.0)
    parser.add_argument("--early-days", type=float, default=40.0)
    parser.add_argument("--drift", type=float, default=2.0)
    parser.add_argument("--window-hours", type=float, default=168.0)
    parser.add_argument("--cold-epochs", type=int, default=5)
    parser.add_argument("--cold-epochs-tried", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--warm-epochs", type=int, nargs="*", default=[1, 2])
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="warm-start-") as tmp:
        for seed in range(args.seeds):
            results.append(one_seed(args, seed, Path(tmp)))
            print(json.dumps(results[-1]["runs"][-1]["warmStart"]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    path = RESULTS / f"warm_start-{stamp}.json"
    path.write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    print(table(results))
    print("time to a gate-passing model (s, per seed):", json.dumps(time_to_gate(results)))
    print(f"raw results: {path}")


if __name__ == "__main__":
    main()
