"""The canary analysis of relative metrics on simulated rollouts (measured, not asserted).

Each rollout draws binomial clicks per check interval for both variants (seeded numpy), sums
them as the gateways' closed buckets grow, and asks the operator's own
``recsys_operator.planning.analysis.evaluate`` for a click-through-rate verdict at every
check, as the rollout engine does every interval. A rollout aborts at its first Failed.

- A/A (both variants at the same CTR): every abort is a false abort. ``min 100`` is the edge
  of the null (theta exactly 0), the hardest case; ``min 95`` is the usual setting.
- A canary 10 % or 20 % worse than the stable, ``min 95``: how often it is caught within the
  budget, and the impressions it took (canary and stable side).
- The same draws judged by a fixed-sample 95 % z-interval looked at every check ("naive
  peeking"): what the sequential test is there to prevent, and what it costs in impressions.
- Splits: the canary gets half the traffic, or a tenth (``setWeight: 10``).
- The mixing scale ``tau`` (a share of the stable's rate) swept around the default.

    .venv/bin/python benchmarks/rollout_analysis.py                     # ~1 min on 2 cores
    .venv/bin/python benchmarks/rollout_analysis.py --rollouts 400 --seed 7 --taus 0.1

Same arguments, same figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "contract"), str(ROOT / "operator")]

from recsys_contract.traffic import Counts  # noqa: E402
from recsys_operator.planning import analysis  # noqa: E402

Z95 = 1.959964
STABLE_CTR = 0.03


@dataclass
class Row:
    case: str
    canary_ctr: float
    min_share: float
    canary_share: float
    tau: float
    rollouts: int
    aborted: float  # share of rollouts ever Failed within the budget (sequential)
    aborted_by: dict[str, float]  # the same, by canary impressions seen
    naive_aborted: float
    naive_aborted_by: dict[str, float]
    median_canary: float | None  # canary impressions at the first Failed (detected rollouts)
    p90_canary: float | None
    median_stable: float | None
    p90_stable: float | None
    naive_median_canary: float | None
    seconds: float


def run(
    case: str,
    canary_ctr: float,
    *,
    min_share: float,
    canary_share: float,
    tau: float,
    rollouts: int,
    every: int,
    budget: int,
    min_impressions: int,
    seed: int,
) -> Row:
    """``every`` and ``budget`` count all impressions of both variants together."""
    analysis.TAU_SHARE_OF_STABLE = tau
    rng = np.random.default_rng(seed)
    checks = budget // every
    per_c = round(every * canary_share)
    per_s = every - per_c
    n_c = per_c * np.arange(1, checks + 1)
    n_s = per_s * np.arange(1, checks + 1)
    x_c = np.cumsum(rng.binomial(per_c, canary_ctr, (rollouts, checks)), axis=1)
    x_s = np.cumsum(rng.binomial(per_s, STABLE_CTR, (rollouts, checks)), axis=1)
    m = min_share / 100
    p_c, p_s = x_c / n_c, x_s / n_s
    se = np.sqrt(p_c * (1 - p_c) / n_c + m * m * p_s * (1 - p_s) / n_s)
    naive_fail = ((p_c - m * p_s) + Z95 * se < 0) & (n_c >= min_impressions)
    naive_first = np.where(naive_fail.any(axis=1), naive_fail.argmax(axis=1), -1)

    spec = [analysis.MetricSpec("click-through-rate", min_share, None)]
    first = np.full(rollouts, -1)
    t0 = time.perf_counter()
    for r in range(rollouts):
        for k in range(checks):
            closed = {
                "canary": Counts(impressions=int(n_c[k]), events={"click": int(x_c[r, k])}),
                "stable": Counts(impressions=int(n_s[k]), events={"click": int(x_s[r, k])}),
            }
            [res] = analysis.evaluate(
                spec, window={}, closed=closed, min_requests=1, min_impressions=min_impressions
            )
            if res.verdict == "Failed":
                first[r] = k
                break
    seconds = time.perf_counter() - t0

    def by(firsts: npt.NDArray[np.int64]) -> dict[str, float]:
        out = {}
        for horizon in (checks // 100, checks // 10, checks):
            if horizon:
                hit = (firsts >= 0) & (firsts < horizon)
                out[f"{int(n_c[horizon - 1]):,}"] = float(hit.mean())
        return out

    def q(values: npt.NDArray[np.int64], pct: float) -> float | None:
        return float(np.percentile(values, pct)) if len(values) else None

    hit = first[first >= 0]
    return Row(
        case,
        canary_ctr,
        min_share,
        canary_share,
        tau,
        rollouts,
        float((first >= 0).mean()),
        by(first),
        float((naive_first >= 0).mean()),
        by(naive_first),
        q(n_c[hit], 50),
        q(n_c[hit], 90),
        q(n_s[hit], 50),
        q(n_s[hit], 90),
        q(n_c[naive_first[naive_first >= 0]], 50),
        seconds,
    )


def fmt(x: float | None) -> str:
    return "–" if x is None else f"{x:,.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rollouts", type=int, default=1000, help="simulated rollouts per row")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--every", type=int, default=4000, help="impressions (both variants) between two checks"
    )
    ap.add_argument(
        "--budget",
        type=int,
        default=2_000_000,
        help="impressions (both variants) a rollout may take",
    )
    ap.add_argument("--min-impressions", type=int, default=1000)
    ap.add_argument(
        "--taus",
        default="0.03,0.1,0.3",
        help="mixing scales (share of the stable's rate) for the sweep",
    )
    ap.add_argument("--json", type=Path, help="write the rows here too")
    args = ap.parse_args()
    default_tau = analysis.TAU_SHARE_OF_STABLE
    common = {
        "rollouts": args.rollouts,
        "every": args.every,
        "budget": args.budget,
        "min_impressions": args.min_impressions,
    }
    cases = [
        ("A/A, min 100 (edge)", STABLE_CTR, 100, 0.5),
        ("A/A, min 100 (edge), canary 10%", STABLE_CTR, 100, 0.1),
        ("A/A, min 95", STABLE_CTR, 95, 0.5),
        ("20% worse, min 95", 0.8 * STABLE_CTR, 95, 0.5),
        ("20% worse, min 95, canary 10%", 0.8 * STABLE_CTR, 95, 0.1),
        ("10% worse, min 95", 0.9 * STABLE_CTR, 95, 0.5),
        ("10% worse, min 95, canary 10%", 0.9 * STABLE_CTR, 95, 0.1),
    ]
    rows = [
        run(
            case,
            ctr,
            min_share=ms,
            canary_share=share,
            tau=default_tau,
            seed=args.seed + i,
            **common,
        )
        for i, (case, ctr, ms, share) in enumerate(cases)
    ]
    print(
        f"stable CTR {STABLE_CTR:.0%}; a check every {args.every:,} impressions (both "
        f"variants), budget {args.budget:,}; {args.rollouts:,} rollouts per row; tau "
        f"{default_tau} x stable rate; seed {args.seed}\n"
    )
    print(
        "| case | aborted (sequential) | by canary impressions | naive peeking | naive, by "
        "canary impressions | canary imp. at abort p50 / p90 | stable imp. p50 / p90 | "
        "naive p50 |"
    )
    print("|---|---:|---|---:|---|---:|---:|---:|")
    for r in rows:
        by = " / ".join(f"{k}: {v:.1%}" for k, v in r.aborted_by.items())
        nby = " / ".join(f"{k}: {v:.1%}" for k, v in r.naive_aborted_by.items())
        print(
            f"| {r.case} | {r.aborted:.1%} | {by} | {r.naive_aborted:.1%} | {nby} | "
            f"{fmt(r.median_canary)} / {fmt(r.p90_canary)} | "
            f"{fmt(r.median_stable)} / {fmt(r.p90_stable)} | "
            f"{fmt(r.naive_median_canary)} |"
        )

    taus = [float(t) for t in args.taus.split(",") if t]
    sweep = []
    if taus:
        print("\nmixing scale tau (share of the stable's rate), equal split:\n")
        print(
            "| tau | A/A min 100 aborted | 20% worse: aborted, canary imp. p50 / p90 | "
            "10% worse: aborted, canary imp. p50 / p90 |"
        )
        print("|---:|---:|---:|---:|")
        for tau in taus:
            trio = [
                run(
                    case,
                    ctr,
                    min_share=ms,
                    canary_share=0.5,
                    tau=tau,
                    seed=args.seed + 100,
                    **common,
                )
                for case, ctr, ms in (
                    ("A/A, min 100 (edge)", STABLE_CTR, 100),
                    ("20% worse, min 95", 0.8 * STABLE_CTR, 95),
                    ("10% worse, min 95", 0.9 * STABLE_CTR, 95),
                )
            ]
            sweep += trio
            aa, w20, w10 = trio
            print(
                f"| {tau:g} | {aa.aborted:.1%} | {w20.aborted:.1%}, {fmt(w20.median_canary)} "
                f"/ {fmt(w20.p90_canary)} | {w10.aborted:.1%}, {fmt(w10.median_canary)} / "
                f"{fmt(w10.p90_canary)} |"
            )
    analysis.TAU_SHARE_OF_STABLE = default_tau
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "args": vars(args) | {"json": str(args.json)},
                    "rows": [asdict(r) for r in rows],
                    "sweep": [asdict(r) for r in sweep],
                },
                indent=2,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
