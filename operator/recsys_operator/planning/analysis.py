"""Judging a canary against the stable from the gateways' counters, without I/O.

Two kinds of metric, judged differently because they fail differently.

Health (``request-success-rate``, ``request-duration``, ``fallback-rate``) is the canary's own
figure over the last interval (``window``) against an absolute range, as Flagger does: a
canary that errors or stalls must be stopped as soon as one interval shows it, and the
stable's figure is only shown beside it. Below ``min_requests`` canary requests an interval
says nothing (one slow request is a p99).

Business outcomes (``click-through-rate``, ``conversion-rate``) are judged *relative* to the
stable, because their level moves with the time of day and the catalogue, which both variants
share: ``min: 95`` means "the canary's rate is at least 95 % of the stable's". They are judged
on ``closed``: every bucket since the canary started whose attribution window has passed, so
each check sees more data than the last. Checking a fixed-sample test on growing data every
interval would abort good canaries far more often than its alpha says (each look is another
chance for noise to cross the line; ``benchmarks/rollout_analysis.py`` measures it), so the
verdict comes from an always-valid confidence sequence: the mixture sequential probability
ratio test of Johari, Pekelis & Walsh ("Always Valid Inference"), with a normal mixing
distribution, on ``theta = p_canary - bound * p_stable``. Its interval covers the true theta
at every check at once with probability at least ``1 - alpha``, however many checks there
are, so the canary is aborted (upper end below 0) wrongly at most ``alpha`` of the time and
passed (lower end at or above 0) wrongly at most ``alpha`` of the time. Between the two it
stays Inconclusive and the rollout waits for more impressions.

The variance of theta's estimate is the sum of the two binomial variances (plug-in rates), so
the test holds whatever share of the traffic the canary gets. The mixing variance ``tau^2``
sets for which effect size the test decides soonest; it is fixed as a share of the *stable's*
rate (``TAU_SHARE_OF_STABLE``), which the canary's data cannot move, so it does not tune itself
to the effect it is testing. A tenth of the stable's rate is the scale of the relative
differences a rollout is there to catch (a tenth to a fifth worse): the test decides soonest
for a theta of about ``tau`` and slows only gradually away from it (the benchmark sweeps it).
The guarantee is exact for a normal estimate with known variance; the simulation tests check
that it holds with binomial counts, plug-in rates and a ``tau`` that follows the stable's
estimate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from recsys_contract.traffic import Counts

Verdict = Literal["Passed", "Failed", "Inconclusive"]

SUCCESS_RATE = "request-success-rate"
DURATION = "request-duration"
FALLBACK_RATE = "fallback-rate"
CTR = "click-through-rate"
CONVERSION_RATE = "conversion-rate"
SHADOW_OVERLAP = "shadow-overlap"
SHADOW_RANK = "shadow-rank-correlation"
SHADOW_DURATION = "shadow-duration"
HEALTH_METRICS = (SUCCESS_RATE, DURATION, FALLBACK_RATE)
RELATIVE_METRICS = (CTR, CONVERSION_RATE)
SHADOW_METRICS = (SHADOW_OVERLAP, SHADOW_RANK, SHADOW_DURATION)

#: tau, the mixing distribution's standard deviation, as a share of the stable's rate
TAU_SHARE_OF_STABLE = 0.1
#: the latency quantile request-duration judges
DURATION_QUANTILE = 0.99

CANARY, STABLE = "canary", "stable"


@dataclass(frozen=True)
class MetricSpec:
    """One metric to judge, as the caller reads it from the API's ``AnalysisMetric``.

    For the health metrics ``min``/``max`` bound the canary's own figure (percent, or
    milliseconds for request-duration); for the relative ones they bound the canary's rate as
    a percentage of the stable's. ``event_type`` is the outcome event the relative metric
    counts (``click`` for click-through-rate; conversion-rate names its own, e.g. purchase).
    """

    name: str
    min: float | None
    max: float | None
    event_type: str = "click"


@dataclass(frozen=True)
class MetricResult:
    """One metric's verdict, shaped for ``status.rollout.analysis[].metrics[]``.

    ``canary`` and ``stable`` are each variant's figure in the metric's own unit: percent for
    the rates (for the relative metrics, each side's event rate, which is what a reader wants
    to see beside the other; the ratio that ``min``/``max`` bound is in ``message``), ms for
    request-duration. None where a side has no data.
    """

    name: str
    canary: float | None
    stable: float | None
    min: float | None
    max: float | None
    verdict: Verdict
    message: str


def overall(results: Sequence[MetricResult]) -> Verdict:
    """Failed if any metric failed (one bad signal is enough to roll back), else Inconclusive
    if any could not be judged yet, else Passed."""
    return _worst(r.verdict for r in results)


def _worst(verdicts: Iterable[Verdict]) -> Verdict:
    seen = set(verdicts)
    if "Failed" in seen:
        return "Failed"
    if "Inconclusive" in seen:
        return "Inconclusive"
    return "Passed"


def evaluate(
    metrics: Sequence[MetricSpec],
    *,
    window: Mapping[str, Counts],
    closed: Mapping[str, Counts],
    min_requests: int,
    min_impressions: int,
    alpha: float = 0.05,
) -> list[MetricResult]:
    """Every metric's verdict, in the order given. ``window`` holds each variant's counts over
    the last interval (health metrics), ``closed`` its counts since the canary started over
    closed buckets only (relative metrics); both are keyed ``canary``/``stable``, and a missing
    side counts as no traffic."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), not {alpha}")
    out = []
    for spec in metrics:
        if spec.name in HEALTH_METRICS:
            out.append(_health(spec, window.get(CANARY), window.get(STABLE), min_requests))
        elif spec.name in RELATIVE_METRICS:
            out.append(
                _relative(spec, closed.get(CANARY), closed.get(STABLE), min_impressions, alpha)
            )
        elif spec.name in SHADOW_METRICS:
            out.append(_shadow(spec, window.get(CANARY), min_requests))
        else:
            raise ValueError(f"unknown analysis metric {spec.name!r}")
    return out


# --- health: the canary's own figure against an absolute range --------------------------------


def _success_rate(c: Counts) -> float | None:
    return 100.0 * (c.requests - c.errors) / c.requests if c.requests > 0 else None


def _fallback_rate(c: Counts) -> float | None:
    return 100.0 * c.fallbacks / c.requests if c.requests > 0 else None


def _duration(c: Counts) -> float | None:
    return c.latency_quantile_ms(DURATION_QUANTILE)


_HEALTH: dict[str, tuple[str, str, Callable[[Counts], float | None]]] = {
    # name: (what the message calls it, unit, figure)
    SUCCESS_RATE: ("success rate", "%", _success_rate),
    DURATION: (f"p{DURATION_QUANTILE * 100:g} latency", " ms", _duration),
    FALLBACK_RATE: ("fallback rate", "%", _fallback_rate),
}


def _health(
    spec: MetricSpec, canary: Counts | None, stable: Counts | None, min_requests: int
) -> MetricResult:
    label, unit, figure = _HEALTH[spec.name]
    stable_value = figure(stable) if stable is not None else None
    beside = f"; stable {_num(stable_value)}{unit}" if stable_value is not None else ""
    requests = canary.requests if canary is not None else 0
    value = figure(canary) if canary is not None else None

    def result(verdict: Verdict, message: str, canary_value: float | None) -> MetricResult:
        return MetricResult(
            spec.name, _round(canary_value), _round(stable_value), spec.min, spec.max,
            verdict, message,
        )  # fmt: skip

    if requests < min_requests:
        return result(
            "Inconclusive",
            f"canary: {requests:,} requests in the last interval, needs >= {min_requests:,}"
            + beside,
            value,
        )
    if value is None:
        return result(
            "Inconclusive", f"canary: no latency recorded for {requests:,} requests", value
        )
    needs = _needs(spec.min, spec.max, unit)
    text = f"canary {label} {_num(value)}{unit} of {requests:,} requests ({needs}){beside}"
    inside = (spec.min is None or value >= spec.min) and (spec.max is None or value <= spec.max)
    return result("Passed" if inside else "Failed", text, value)


# --- provided: a number per variant from elsewhere (a Prometheus query) -----------------------


def provided(
    spec: MetricSpec, canary: float | None, stable: float | None, source: str
) -> MetricResult:
    """The canary's value of a metric read elsewhere against its range. No value is
    Inconclusive; an infinite one (``histogram_quantile`` past its last bucket) is judged but
    not stored, since status is JSON."""

    def shown(x: float | None) -> float | None:
        return _round(x) if x is not None and math.isfinite(x) else None

    beside = f"; stable {_num(stable)}" if stable is not None else ""

    def result(verdict: Verdict, message: str) -> MetricResult:
        return MetricResult(
            spec.name, shown(canary), shown(stable), spec.min, spec.max, verdict, message
        )

    if canary is None:
        return result("Inconclusive", f"{source}: no data for the canary{beside}")
    inside = (spec.min is None or canary >= spec.min) and (spec.max is None or canary <= spec.max)
    needs = _needs(spec.min, spec.max, "")
    return result(
        "Passed" if inside else "Failed", f"{source}: canary {_num(canary)} ({needs}){beside}"
    )


# --- shadow: how the canary's answers to mirrored stable requests compare ---------------------


def _shadow_overlap(c: Counts) -> float | None:
    return 100.0 * c.shadow_overlap if c.shadow_overlap is not None else None


def _shadow_rank(c: Counts) -> float | None:
    return c.shadow_rank


def _shadow_duration(c: Counts) -> float | None:
    return c.shadow_latency_quantile_ms(DURATION_QUANTILE)


_SHADOW: dict[str, tuple[str, str, Callable[[Counts], float | None]]] = {
    SHADOW_OVERLAP: ("overlap@k with the stable's lists", "%", _shadow_overlap),
    SHADOW_RANK: ("rank correlation with the stable's lists", "", _shadow_rank),
    SHADOW_DURATION: (f"p{DURATION_QUANTILE * 100:g} latency on shadow requests", " ms",
                      _shadow_duration),
}  # fmt: skip


def _shadow(spec: MetricSpec, canary: Counts | None, min_requests: int) -> MetricResult:
    """The canary's figure on the stable requests mirrored to it in the last interval (a
    ``shadow`` step), against an absolute range; no stable figure exists to put beside it."""
    label, unit, figure = _SHADOW[spec.name]
    compared = canary.shadow_compared if canary is not None else 0
    value = figure(canary) if canary is not None else None

    def result(verdict: Verdict, message: str) -> MetricResult:
        return MetricResult(spec.name, _round(value), None, spec.min, spec.max, verdict, message)

    if compared < min_requests or value is None:
        return result(
            "Inconclusive",
            f"canary: {compared:,} shadow requests compared in the last interval, needs >= "
            f"{min_requests:,}",
        )
    needs = _needs(spec.min, spec.max, unit)
    inside = (spec.min is None or value >= spec.min) and (spec.max is None or value <= spec.max)
    text = f"canary {label} {_num(value)}{unit} over {compared:,} shadow requests ({needs})"
    return result("Passed" if inside else "Failed", text)


# --- relative: an always-valid confidence sequence on canary - bound * stable -----------------


@dataclass(frozen=True)
class Bounds:
    """An always-valid interval for ``theta = p_canary - ratio * p_stable``."""

    estimate: float
    low: float
    high: float


def confidence_sequence(
    canary_events: int,
    canary_impressions: int,
    stable_events: int,
    stable_impressions: int,
    ratio: float,
    alpha: float,
) -> Bounds | None:
    """The mSPRT's interval for theta at this look, or None where it has nothing to scale by
    (the stable has no events) or no variance (neither rate can vary). Both impression counts
    must be positive.

    The mixture likelihood ratio of theta's estimate against ``theta0``, with the mixing
    distribution N(theta0, tau^2) and the estimate's variance V, is
    ``sqrt(V / (V + tau^2)) * exp(tau^2 (estimate - theta0)^2 / (2 V (V + tau^2)))``; the
    interval is every theta0 whose ratio stays below 1/alpha."""
    p_c = canary_events / canary_impressions
    p_s = stable_events / stable_impressions
    theta = p_c - ratio * p_s
    variance = (
        _bernoulli_variance(p_c) / canary_impressions
        + ratio * ratio * _bernoulli_variance(p_s) / stable_impressions
    )
    tau2 = (TAU_SHARE_OF_STABLE * p_s) ** 2
    if variance <= 0 or tau2 <= 0:
        return None
    half = math.sqrt(
        variance
        * (variance + tau2)
        / tau2
        * (2 * math.log(1 / alpha) + math.log((variance + tau2) / variance))
    )
    return Bounds(theta, theta - half, theta + half)


def _bernoulli_variance(p: float) -> float:
    # an event type may be counted more than once per impression (two purchases); the clamp
    # keeps the variance defined there, where the binomial model is only approximate anyway
    p = min(max(p, 0.0), 1.0)
    return p * (1 - p)


def _relative(
    spec: MetricSpec,
    canary: Counts | None,
    stable: Counts | None,
    min_impressions: int,
    alpha: float,
) -> MetricResult:
    label = "CTR" if spec.name == CTR else f"{spec.event_type} rate"
    c_imp = canary.impressions if canary is not None else 0
    s_imp = stable.impressions if stable is not None else 0
    c_ev = canary.events.get(spec.event_type, 0) if canary is not None else 0
    s_ev = stable.events.get(spec.event_type, 0) if stable is not None else 0
    c_rate = 100.0 * c_ev / c_imp if c_imp > 0 else None
    s_rate = 100.0 * s_ev / s_imp if s_imp > 0 else None

    def result(verdict: Verdict, message: str) -> MetricResult:
        return MetricResult(
            spec.name, _round(c_rate), _round(s_rate), spec.min, spec.max, verdict, message
        )

    if c_imp < min_impressions or s_imp < min_impressions:
        return result(
            "Inconclusive",
            f"{c_imp:,} canary and {s_imp:,} stable impressions in closed buckets, "
            f"needs >= {min_impressions:,} on each side",
        )
    if s_ev == 0:
        return result(
            "Inconclusive",
            f"stable has no {spec.event_type} events in {s_imp:,} impressions "
            f"(canary {c_ev:,}): no rate to compare against",
        )
    p_c, p_s = c_ev / c_imp, s_ev / s_imp
    share = 100.0 * p_c / p_s
    head = (
        f"canary {label} {100 * p_c:.2f}% is {share:.1f}% of stable's {100 * p_s:.2f}% "
        f"({_needs(spec.min, spec.max, '%')})"
    )
    # each bound is its own test: below min is the canary confidently worse than allowed,
    # above max confidently better than allowed (a suspiciously high rate, e.g. a broken
    # event counter); the interval shown is the one that decided, else the min's
    judged: list[tuple[Verdict, Bounds]] = []
    for bound, below_fails in ((spec.min, True), (spec.max, False)):
        if bound is None:
            continue
        cs = confidence_sequence(c_ev, c_imp, s_ev, s_imp, bound / 100.0, alpha)
        if cs is None:
            return result("Inconclusive", f"{head}; no variance to test with")
        if below_fails:
            verdict: Verdict = (
                "Failed" if cs.high < 0 else "Passed" if cs.low >= 0 else "Inconclusive"
            )
        else:
            verdict = "Failed" if cs.low > 0 else "Passed" if cs.high <= 0 else "Inconclusive"
        judged.append((verdict, cs))
    if not judged:
        return result("Passed", f"{head}; no bound to judge")
    verdict = _worst(v for v, _ in judged)
    shown = next((cs for v, cs in judged if v == "Failed"), judged[0][1])
    # theta / p_stable + ratio is the canary's rate as a share of the stable's, so the
    # interval reads in the same unit as min/max and its ends cross the bound where theta's
    # cross 0
    low = share + 100.0 * (shown.low - shown.estimate) / p_s
    high = share + 100.0 * (shown.high - shown.estimate) / p_s
    level = f"{100 * (1 - alpha):g}%"
    tail = {"Passed": "", "Failed": "", "Inconclusive": ": not decided yet"}[verdict]
    return result(verdict, f"{head}; {level} always-valid interval {low:.1f}% to {high:.1f}%{tail}")


# --- formatting -------------------------------------------------------------------------------


def _needs(low: float | None, high: float | None, unit: str) -> str:
    if low is not None and high is not None:
        return f"needs {_num(low)}{unit} to {_num(high)}{unit}"
    if low is not None:
        return f"needs >= {_num(low)}{unit}"
    if high is not None:
        return f"needs <= {_num(high)}{unit}"
    return "no bound"


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    if not math.isfinite(x):
        return f"{x:+}"
    return f"{x:.2f}".rstrip("0").rstrip(".") if x != int(x) else f"{int(x)}"


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 4)
