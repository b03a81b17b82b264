"""The canary analysis: each metric's verdict from built counters (one row per case), the
always-valid interval checked against the mixture likelihood ratio it inverts, and seeded
simulations of whole rollouts showing that repeated checks keep the false-abort rate under
alpha where a fixed-sample test repeated at every check does not."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from recsys_contract.traffic import LATENCY_BOUNDS_MS, Counts, shadow_latency_field
from recsys_operator.planning import analysis
from recsys_operator.planning.analysis import MetricResult, MetricSpec, evaluate, overall

MIN_REQUESTS = 100
MIN_IMPRESSIONS = 1000


def served(
    requests: int, errors: int = 0, fallbacks: int = 0, over: int = 0, **latency: int
) -> Counts:
    """Counts of one interval; ``latency`` maps ``ms<bound>`` to how many requests fell in
    that histogram bucket, ``over`` counts those above the last bound."""
    hist = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    for key, n in latency.items():
        hist[LATENCY_BOUNDS_MS.index(float(key[2:]))] += n
    hist[-1] += over
    return Counts(requests=requests, errors=errors, fallbacks=fallbacks, latency=hist)


def shown(impressions: int, events: int, event_type: str = "click") -> Counts:
    return Counts(impressions=impressions, events={event_type: events})


def judge(
    spec: MetricSpec,
    canary: Counts | None = None,
    stable: Counts | None = None,
    *,
    window: bool,
) -> MetricResult:
    sides = {k: v for k, v in (("canary", canary), ("stable", stable)) if v is not None}
    [result] = evaluate(
        [spec],
        window=sides if window else {},
        closed={} if window else sides,
        min_requests=MIN_REQUESTS,
        min_impressions=MIN_IMPRESSIONS,
    )
    return result


SUCCESS = MetricSpec("request-success-rate", 99, None)
DURATION = MetricSpec("request-duration", None, 100)
FALLBACK = MetricSpec("fallback-rate", None, 5)


@pytest.mark.parametrize(
    ("case", "spec", "canary", "stable", "verdict", "value", "stable_value", "words"),
    [
        ("success inside the range", SUCCESS, served(1000, errors=5), served(9000, errors=9),
         "Passed", 99.5, 99.9, ["99.5% of 1,000 requests", ">= 99%", "stable 99.9%"]),
        ("success below min", SUCCESS, served(1000, errors=20), served(9000, errors=9),
         "Failed", 98.0, 99.9, ["98%", ">= 99%"]),
        ("success exactly at min passes", SUCCESS, served(1000, errors=10), None,
         "Passed", 99.0, None, ["99%"]),
        ("one request short of min_requests", SUCCESS, served(99, errors=50), served(900),
         "Inconclusive", 49.4949, 100.0, ["99 requests", "needs >= 100"]),
        ("exactly min_requests is judged", SUCCESS, served(100, errors=50), served(900),
         "Failed", 50.0, 100.0, ["50%"]),
        ("no canary traffic at all", SUCCESS, None, served(900), "Inconclusive", None, 100.0,
         ["0 requests"]),
        ("stable missing: judged alone", SUCCESS, served(1000), None, "Passed", 100.0, None,
         ["100%"]),
        ("success above a max", MetricSpec("request-success-rate", None, 99.9), served(1000),
         None, "Failed", 100.0, None, ["<= 99.9%"]),
        ("p99 in range", DURATION, served(1000, ms10=990, ms500=10),
         served(9000, ms5=9000), "Passed", 10.0, 5.0,
         ["p99 latency 10 ms", "<= 100 ms", "stable 5 ms"]),
        ("p99 over max", DURATION, served(1000, ms10=980, ms500=20), served(9000, ms5=9000),
         "Failed", 500.0, 5.0, ["500 ms"]),
        ("p99 above the last bound", DURATION, served(1000, ms10=980, over=20),
         served(9000, ms5=9000), "Failed", 5000.0, 5.0, ["5000 ms"]),
        ("requests but no latency recorded", DURATION, served(1000), None, "Inconclusive",
         None, None, ["no latency recorded"]),
        ("p99 with too few requests", DURATION, served(10, ms500=10), None, "Inconclusive",
         500.0, None, ["10 requests"]),
        ("fallbacks under max", FALLBACK, served(1000, fallbacks=30), served(9000, fallbacks=9),
         "Passed", 3.0, 0.1, ["3% of 1,000", "<= 5%", "stable 0.1%"]),
        ("fallbacks over max", FALLBACK, served(1000, fallbacks=80), served(9000), "Failed",
         8.0, 0.0, ["8%"]),
        ("fallback range both ends", MetricSpec("fallback-rate", 1, 5), served(1000), None,
         "Failed", 0.0, None, ["1% to 5%"]),
    ],
)  # fmt: skip
def test_health_metrics(
    case: str,
    spec: MetricSpec,
    canary: Counts | None,
    stable: Counts | None,
    verdict: str,
    value: float | None,
    stable_value: float | None,
    words: list[str],
) -> None:
    r = judge(spec, canary, stable, window=True)
    assert (r.verdict, r.canary, r.stable) == (verdict, value, stable_value), r.message
    assert (r.name, r.min, r.max) == (spec.name, spec.min, spec.max)
    for w in words:
        assert w in r.message


CTR95 = MetricSpec("click-through-rate", 95, None)
BUY95 = MetricSpec("conversion-rate", 95, None, event_type="purchase")


@pytest.mark.parametrize(
    ("case", "spec", "canary", "stable", "verdict", "rates", "words"),
    [
        ("20% worse, enough data", CTR95, shown(100_000, 2400), shown(100_000, 3000),
         "Failed", (2.4, 3.0),
         ["canary CTR 2.40% is 80.0% of stable's 3.00% (needs >= 95%)",
          "95% always-valid interval 72.8% to 87.2%"]),
        ("equal, not enough to rule out 95%", CTR95, shown(100_000, 3000),
         shown(100_000, 3000), "Inconclusive", (3.0, 3.0),
         ["100.0% of stable's", "92.4% to 107.6%: not decided yet"]),
        ("equal with a million each: passed", CTR95, shown(1_000_000, 30_000),
         shown(1_000_000, 30_000), "Passed", (3.0, 3.0), ["97.4% to 102.6%"]),
        ("a 10% canary share widens the interval", CTR95, shown(20_000, 600),
         shown(180_000, 5400), "Inconclusive", (3.0, 3.0), ["87.1% to 112.9%"]),
        ("canary with no clicks at all", CTR95, shown(10_000, 0), shown(10_000, 300), "Failed",
         (0.0, 3.0), ["0.0% of stable's"]),
        ("canary short of min_impressions", CTR95, shown(999, 0), shown(100_000, 3000),
         "Inconclusive", (0.0, 3.0),
         ["999 canary and 100,000 stable impressions", "needs >= 1,000 on each side"]),
        ("stable short of min_impressions", CTR95, shown(100_000, 0), shown(999, 30),
         "Inconclusive", (0.0, 3.003), ["999 stable"]),
        ("exactly min_impressions is judged", CTR95, shown(1000, 0), shown(1000, 100),
         "Failed", (0.0, 10.0), ["always-valid interval"]),
        ("no stable data", CTR95, shown(100_000, 3000), None, "Inconclusive", (3.0, None),
         ["0 stable impressions"]),
        ("no canary data", CTR95, None, shown(100_000, 3000), "Inconclusive", (None, 3.0),
         ["0 canary"]),
        ("stable rate zero: nothing to compare with", CTR95, shown(100_000, 3000),
         shown(100_000, 0), "Inconclusive", (3.0, 0.0),
         ["stable has no click events in 100,000 impressions (canary 3,000)"]),
        ("no events on either side", CTR95, shown(100_000, 0), shown(100_000, 0),
         "Inconclusive", (0.0, 0.0), ["stable has no click events"]),
        ("max: confidently above", MetricSpec("click-through-rate", None, 120),
         shown(100_000, 4500), shown(100_000, 3000), "Failed", (4.5, 3.0),
         ["150.0% of stable's", "(needs <= 120%)", "140.7% to 159.3%"]),
        ("max: confidently below", MetricSpec("click-through-rate", None, 120),
         shown(1_000_000, 30_000), shown(1_000_000, 30_000), "Passed", (3.0, 3.0), []),
        ("max: undecided", MetricSpec("click-through-rate", None, 105), shown(100_000, 3000),
         shown(100_000, 3000), "Inconclusive", (3.0, 3.0), ["not decided yet"]),
        ("both bounds met", MetricSpec("click-through-rate", 90, 110),
         shown(1_000_000, 30_000), shown(1_000_000, 30_000), "Passed", (3.0, 3.0),
         ["(needs 90% to 110%)"]),
        ("both bounds, max fails: its interval shown", MetricSpec("click-through-rate", 90, 110),
         shown(100_000, 4500), shown(100_000, 3000), "Failed", (4.5, 3.0), ["150.0%"]),
        ("no bound: reported only", MetricSpec("click-through-rate", None, None),
         shown(100_000, 2400), shown(100_000, 3000), "Passed", (2.4, 3.0), ["no bound"]),
        ("conversions judged by their own type", BUY95,
         Counts(impressions=100_000, events={"purchase": 700, "click": 3000}),
         Counts(impressions=100_000, events={"purchase": 1000, "click": 3000}), "Failed",
         (0.7, 1.0), ["canary purchase rate 0.70% is 70.0% of stable's 1.00%"]),
        ("conversions 10% worse on 100k: undecided", BUY95, shown(100_000, 900, "purchase"),
         shown(100_000, 1000, "purchase"), "Inconclusive", (0.9, 1.0), ["90.0%"]),
        ("conversions with only clicks counted", BUY95, shown(100_000, 3000),
         shown(100_000, 3000), "Inconclusive", (0.0, 0.0), ["no purchase events"]),
    ],
)  # fmt: skip
def test_relative_metrics(
    case: str,
    spec: MetricSpec,
    canary: Counts | None,
    stable: Counts | None,
    verdict: str,
    rates: tuple[float | None, float | None],
    words: list[str],
) -> None:
    r = judge(spec, canary, stable, window=False)
    assert (r.verdict, (r.canary, r.stable)) == (verdict, rates), r.message
    assert (r.name, r.min, r.max) == (spec.name, spec.min, spec.max)
    for w in words:
        assert w in r.message


def test_relative_metrics_read_closed_and_health_metrics_read_window() -> None:
    bad_window = {"canary": served(1000, errors=500), "stable": served(1000)}
    good_closed = {"canary": shown(1_000_000, 30_000), "stable": shown(1_000_000, 30_000)}
    results = evaluate(
        [SUCCESS, CTR95], window=bad_window, closed=good_closed, min_requests=100,
        min_impressions=1000,
    )  # fmt: skip
    assert [r.verdict for r in results] == ["Failed", "Passed"]


def test_unknown_metric_and_bad_alpha_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown analysis metric"):
        evaluate([MetricSpec("latency", None, 1)], window={}, closed={}, min_requests=1,
                 min_impressions=1)  # fmt: skip
    with pytest.raises(ValueError, match="alpha"):
        evaluate([], window={}, closed={}, min_requests=1, min_impressions=1, alpha=1.0)


def result(verdict: str) -> MetricResult:
    return MetricResult("m", None, None, None, None, verdict, "")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("verdicts", "expected"),
    [
        ([], "Passed"),
        (["Passed", "Passed"], "Passed"),
        (["Passed", "Inconclusive"], "Inconclusive"),
        (["Inconclusive", "Failed", "Passed"], "Failed"),
        (["Failed"], "Failed"),
    ],
)
def test_overall(verdicts: list[str], expected: str) -> None:
    assert overall([result(v) for v in verdicts]) == expected


@pytest.mark.parametrize(
    ("x_c", "n_c", "x_s", "n_s", "ratio", "alpha"),
    [
        (2400, 100_000, 3000, 100_000, 0.95, 0.05),
        (600, 20_000, 5400, 180_000, 1.0, 0.05),
        (31, 1000, 28, 1000, 0.9, 0.01),
    ],
)
def test_interval_ends_are_where_the_mixture_ratio_reaches_one_over_alpha(
    x_c: int, n_c: int, x_s: int, n_s: int, ratio: float, alpha: float
) -> None:
    """The interval is the inversion of the mSPRT: recompute the mixture likelihood ratio
    from its definition (the estimate's density under N(theta0, V + tau^2) over N(theta0, V))
    and check it is 1/alpha at both ends and below it inside."""
    cs = analysis.confidence_sequence(x_c, n_c, x_s, n_s, ratio, alpha)
    assert cs is not None
    p_c, p_s = x_c / n_c, x_s / n_s
    v = p_c * (1 - p_c) / n_c + ratio**2 * p_s * (1 - p_s) / n_s
    tau2 = (analysis.TAU_SHARE_OF_STABLE * p_s) ** 2

    def mixture_ratio(theta0: float) -> float:
        d = cs.estimate - theta0

        def density(var: float) -> float:
            return math.exp(-d * d / (2 * var)) / math.sqrt(2 * math.pi * var)

        return density(v + tau2) / density(v)

    assert cs.estimate == pytest.approx(p_c - ratio * p_s)
    assert mixture_ratio(cs.low) == pytest.approx(1 / alpha)
    assert mixture_ratio(cs.high) == pytest.approx(1 / alpha)
    assert mixture_ratio(cs.estimate) < 1
    assert mixture_ratio((cs.low + cs.estimate) / 2) < 1 / alpha
    # always valid costs width: wider than the fixed-sample interval at the same alpha
    z = {0.05: 1.959964, 0.01: 2.575829}[alpha]
    assert cs.high - cs.estimate > z * math.sqrt(v)


# --- whole rollouts, simulated --------------------------------------------------------------


@dataclass(frozen=True)
class Rollouts:
    ever_failed: float  # share of rollouts the sequential analysis ever judged Failed
    naive_ever_failed: float  # the same for a fixed-sample z-test repeated at every check
    detected_at: list[int]  # canary impressions at the first Failed, per detected rollout


def simulate(
    canary_ctr: float,
    stable_ctr: float,
    *,
    rollouts: int,
    checks: int,
    canary_per_check: int,
    stable_per_check: int,
    min_share: float,
    seed: int,
) -> Rollouts:
    """Binomial clicks drawn per check interval and summed, as ``closed`` grows; the real
    ``evaluate`` judges each check. A rollout's checks stop at its first Failed (it aborts)."""
    rng = np.random.default_rng(seed)
    spec = [MetricSpec("click-through-rate", min_share, None)]
    n_c = canary_per_check * np.arange(1, checks + 1)
    n_s = stable_per_check * np.arange(1, checks + 1)
    x_c = np.cumsum(rng.binomial(canary_per_check, canary_ctr, (rollouts, checks)), axis=1)
    x_s = np.cumsum(rng.binomial(stable_per_check, stable_ctr, (rollouts, checks)), axis=1)
    # the naive test: a 95% fixed-sample interval for the same theta, looked at every check
    m = min_share / 100
    p_c, p_s = x_c / n_c, x_s / n_s
    se = np.sqrt(p_c * (1 - p_c) / n_c + m * m * p_s * (1 - p_s) / n_s)
    naive = np.any((p_c - m * p_s) + 1.959964 * se < 0, axis=1)
    detected = []
    for r in range(rollouts):
        for k in range(checks):
            closed = {
                "canary": shown(int(n_c[k]), int(x_c[r, k])),
                "stable": shown(int(n_s[k]), int(x_s[r, k])),
            }
            [res] = evaluate(
                spec, window={}, closed=closed, min_requests=MIN_REQUESTS,
                min_impressions=MIN_IMPRESSIONS, alpha=0.05,
            )  # fmt: skip
            if res.verdict == "Failed":
                detected.append(int(n_c[k]))
                break
    return Rollouts(len(detected) / rollouts, float(np.mean(naive)), detected)


@pytest.mark.parametrize(
    ("case", "min_share", "canary_per_check", "stable_per_check"),
    [
        # min 100 on equal rates is the hardest case: theta is exactly 0, the null's edge
        ("A/A at the edge, min 100", 100, 2000, 2000),
        ("A/A at the edge, canary 10% of traffic", 100, 500, 4500),
        ("A/A with min 95", 95, 2000, 2000),
    ],
)
def test_a_a_rollouts_are_rarely_aborted_and_naive_peeking_is_worse(
    case: str, min_share: float, canary_per_check: int, stable_per_check: int
) -> None:
    sim = simulate(
        0.03, 0.03, rollouts=800, checks=50, canary_per_check=canary_per_check,
        stable_per_check=stable_per_check, min_share=min_share, seed=11,
    )  # fmt: skip
    assert sim.ever_failed <= 0.05, case
    if min_share == 100:
        # repeated fixed-sample looks at the null's edge abort good canaries several times
        # more often than alpha; the sequential test is what keeps the rate down
        assert sim.naive_ever_failed > 0.10
        assert sim.naive_ever_failed > 3 * sim.ever_failed


def test_a_canary_20_percent_worse_is_caught_within_the_budget() -> None:
    checks, per_check = 50, 2000  # budget: 100k impressions per side
    sim = simulate(
        0.024, 0.03, rollouts=400, checks=checks, canary_per_check=per_check,
        stable_per_check=per_check, min_share=95, seed=12,
    )  # fmt: skip
    assert sim.ever_failed >= 0.95
    # the impressions it took (figures in benchmarks/README.md); a detection needs data
    assert float(np.percentile(sim.detected_at, 90)) <= checks * per_check
    assert min(sim.detected_at) > MIN_IMPRESSIONS


def shadow_counts(compared: int, overlap: float, rank: float, ms: float) -> Counts:
    fields = {
        "shadow:requests": compared,
        "shadow:compared": compared,
        "shadow:ranked": compared,
        "shadow:overlap": int(overlap * 1_000_000) * compared,
        "shadow:rank": int(rank * 1_000_000) * compared,
        shadow_latency_field(ms): compared,
    }
    return Counts.of([fields])


@pytest.mark.parametrize(
    ("name", "low", "high", "canary", "verdict", "value"),
    [
        ("shadow-overlap", 80.0, None, shadow_counts(200, 0.9, 0.8, 12), "Passed", 90.0),
        ("shadow-overlap", 95.0, None, shadow_counts(200, 0.9, 0.8, 12), "Failed", 90.0),
        ("shadow-overlap", 80.0, None, shadow_counts(5, 0.9, 0.8, 12), "Inconclusive", 90.0),
        ("shadow-rank-correlation", 0.5, None, shadow_counts(200, 0.9, 0.8, 12), "Passed", 0.8),
        ("shadow-rank-correlation", 0.9, None, shadow_counts(200, 0.9, -0.2, 12), "Failed",
         -0.2),
        ("shadow-duration", None, 50.0, shadow_counts(200, 0.9, 0.8, 12), "Passed", 15.0),
        ("shadow-duration", None, 10.0, shadow_counts(200, 0.9, 0.8, 12), "Failed", 15.0),
        ("shadow-overlap", 80.0, None, Counts(), "Inconclusive", None),
    ],
)  # fmt: skip
def test_shadow_metrics_judge_the_canary_on_mirrored_requests(
    name: str, low: float | None, high: float | None, canary: Counts, verdict: str,
    value: float | None,
) -> None:  # fmt: skip
    (result,) = evaluate(
        [MetricSpec(name, low, high)],
        window={"canary": canary, "stable": Counts()},
        closed={},
        min_requests=20,
        min_impressions=100,
    )
    assert result.verdict == verdict, result.message
    assert result.canary == (pytest.approx(value) if value is not None else None)
