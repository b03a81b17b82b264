"""The drift check's false alarms and time to detect, on synthetic traffic (measured, not asserted).

1. A synthetic world (``datasets.synthetic``, shift knob 0) is written and a small model is
   trained on it with the training Job's own entry point (artifact, profile with the score
   histogram, encoders).
2. Served traffic is replayed as the gateway would log it (``tests/testbed/served_traffic.py``):
   the user tower, exact retrieval with seen items filtered, the ranker and top 20, for users
   drawn as the generator draws them (uniformly among the users who exist at that time).
3. 50 checks, check *i* sampling ``sampleSize`` requests from the *i*-th fiftieth of the
   world's period, run through ``drift.check`` (the workload's own comparison; only the Redis
   read is skipped). On the unshifted world every alarm is a false alarm. On a world with the
   knob at ``--shifts`` (same seed: same users and tastes, but users who appear later are
   younger and lean to other occupations, in proportion to when they appear), the shift grows
   from nothing at check 1 to the knob at check 50: the table says at which check the first
   alarm came and the first of two in a row (the CRD's default ``consecutiveChecks``).

    .venv/bin/python benchmarks/drift_bench.py                      # PSI and KL, 1k and 10k
    .venv/bin/python benchmarks/drift_bench.py --sample-sizes 10000 --methods PSI

Raw results go to benchmarks/results/drift_bench-<time>.json; the table is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from recsys_contract.drift import DriftConfig  # noqa: E402
from recsys_workloads.artifact_store import Store  # noqa: E402
from recsys_workloads.datasets.synthetic import SyntheticSpec  # noqa: E402
from recsys_workloads.drift.check import Reference, Sample, check  # noqa: E402
from recsys_workloads.drift.stats import DEFAULT_THRESHOLDS  # noqa: E402
from recsys_workloads.runtime import parse_config  # noqa: E402
from testbed.served_traffic import (  # noqa: E402
    GatewayReplay,
    Population,
    population,
    requests,
    train_on_world,
)

RESULTS = Path(__file__).parent / "results"
CHECKS = 50
#: Thresholds the same checks are re-judged at (from each check's highest figure), per method.
SWEEP = {"PSI": [0.05, 0.1, 0.2, 0.25], "KL": [0.025, 0.05, 0.1, 0.125]}


def run_checks(
    pop: Population,
    ref: Reference,
    art: str,
    version: str,
    method: str,
    sample_size: int,
    seed: int,
) -> list[dict[str, Any]]:
    cfg = parse_drift(
        {
            "recommender": "bench.drift",
            "servedLog": {"redisUrl": "redis://unused:6379/0"},
            "modelArtifactUri": art,
            "sampleSize": sample_size,
            "method": method,
            "topFeatures": 3,
        }
    )
    rng = np.random.default_rng(seed)
    out = []
    for i in range(1, CHECKS + 1):
        records = requests(pop, (i - 1) / CHECKS, i / CHECKS, sample_size, rng, version)
        s = check(cfg, ref, Sample(records, len(records), 0))
        out.append(
            {
                "check": i,
                "drifted": s["drifted"],
                "features": {f["name"]: f["value"] for f in s["features"]},
                "driftedFeatures": s["driftedFeatures"],
                "score": s["score"]["value"],
                "max": max([*(f["value"] for f in s["features"]), s["score"]["value"] or 0.0]),
                "unseenUserShare": s["catalog"]["unseenUserShare"],
                "meanAge": round(float(np.mean([r.features["age"] for r in records])), 2),
            }
        )
    return out


def first(alarms: list[bool], run: int) -> int | None:
    """The check (1-based) at which ``run`` alarms in a row are first reached."""
    streak = 0
    for i, alarm in enumerate(alarms, start=1):
        streak = streak + 1 if alarm else 0
        if streak == run:
            return i
    return None


def sweep(checks: list[dict[str, Any]], method: str) -> dict[str, Any]:
    out = {}
    for thr in SWEEP[method]:
        alarms = [c["max"] > thr for c in checks]
        out[str(thr)] = {
            "alarms": sum(alarms),
            "firstAlarm": first(alarms, 1),
            "firstTwoInARow": first(alarms, 2),
        }
    return out


def summarise(checks: list[dict[str, Any]]) -> dict[str, Any]:
    alarms = [bool(c["drifted"]) for c in checks]
    feature_max = max(max(c["features"].values()) for c in checks)
    return {
        "alarms": sum(alarms),
        "firstAlarm": first(alarms, 1),
        "firstTwoInARow": first(alarms, 2),
        "maxFeature": round(feature_max, 4),
        "maxScore": round(max(c["score"] or 0.0 for c in checks), 4),
        "atCheck50": checks[-1]["features"],
        "score50": checks[-1]["score"],
        "namedAtFirstAlarm": next((c["driftedFeatures"] for c in checks if c["drifted"]), []),
        # the served users' mean age over the first five checks and at the first alarm
        "meanAgeStart": round(float(np.mean([c["meanAge"] for c in checks[:5]])), 2),
        "meanAgeAtFirstAlarm": next((c["meanAge"] for c in checks if c["drifted"]), None),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--interactions", type=int, default=150_000)
    parser.add_argument("--shifts", type=float, nargs="+", default=[2.0, 4.0])
    parser.add_argument("--sample-sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--methods", nargs="+", default=["PSI", "KL"])
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    spec = SyntheticSpec(
        users=args.users, items=args.items, interactions=args.interactions, seed=args.seed
    )
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        paths, art = train_on_world(Path(tmp), spec)
        trained = time.perf_counter() - started
        replay = GatewayReplay(art, paths)
        ref = Reference.load(Store({}), art)
        for shift in [0.0, *args.shifts]:
            pop = population(spec, shift, replay)
            for method in args.methods:
                for n in args.sample_sizes:
                    checks = run_checks(pop, ref, art, replay.version, method, n, args.seed)
                    row = {"shift": shift, "method": method, "sampleSize": n}
                    row["threshold"] = DEFAULT_THRESHOLDS["PSI" if method == "PSI" else "KL"]
                    row |= summarise(checks) | {"sweep": sweep(checks, method)}
                    rows.append(row | {"checks": checks})
                    print(json.dumps({k: v for k, v in rows[-1].items() if k != "checks"}))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"drift_bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    meta = {"spec": vars(args), "trainSeconds": round(trained, 1), "checks": CHECKS}
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    print(f"\n{'shift':>5} {'method':>6} {'n':>6} {'thr':>5} {'alarms':>6} {'first':>5} "
          f"{'2-row':>5} {'maxFeat':>8} {'maxScore':>8}")  # fmt: skip
    for r in rows:
        print(
            f"{r['shift']:>5} {r['method']:>6} {r['sampleSize']:>6} {r['threshold']:>5} "
            f"{r['alarms']:>6} {r['firstAlarm'] or '-':>5} {r['firstTwoInARow'] or '-':>5} "
            f"{r['maxFeature']:>8} {r['maxScore']:>8}"
        )
    print("\nthe same checks at other thresholds: alarms / first alarm / first 2 in a row")
    for r in rows:
        cells = [
            f"{thr}: {v['alarms']}/{v['firstAlarm'] or '-'}/{v['firstTwoInARow'] or '-'}"
            for thr, v in r["sweep"].items()
        ]
        print(f"{r['shift']:>5} {r['method']:>6} {r['sampleSize']:>6}  " + "   ".join(cells))
    print(f"raw: {out}")


if __name__ == "__main__":
    main()


def parse_drift(raw: dict[str, Any]) -> DriftConfig:
    return parse_config(DriftConfig, raw, "drift config")
