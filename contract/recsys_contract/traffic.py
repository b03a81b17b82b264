"""What the gateways record of the traffic they serve, for the rollout's analysis, and how each
replica reports what it has loaded. Both live in Redis so the analysis needs no Prometheus.

Per-version counters, per time bucket
    ``GatewayKeys.stats(model_version, bucket)``: a hash of integer counters for the
    ``BUCKET_SECONDS`` starting at ``bucket`` (unix seconds, a multiple of ``BUCKET_SECONDS``).
    Every replica adds to it with ``HINCRBY``; keys expire after ``STATS_TTL_SECONDS``.
    Fields (``StatsField``): ``requests`` (recommendation requests resolved to the version),
    ``errors`` (those answered 5xx), ``fallbacks`` (answered with fallback items),
    ``impressions`` (items returned), ``lat:<i>`` (requests whose latency fell in
    ``LATENCY_BOUNDS_MS[i-1] < ms <= LATENCY_BOUNDS_MS[i]``, with ``lat:<len>`` above the last),
    and ``event:<type>`` (outcome events, e.g. ``event:click``).

    An outcome event is counted in the bucket of the *impression* that caused it, not of its
    own arrival: the request id carries the impression's time (``request_id``). It counts
    only when it came within the gateway's ``attributionWindow`` of the impression; later ones
    go to ``late:<type>``. So a bucket's CTR is final once the bucket's end plus the window has
    passed (``closed``), and the analysis judges only closed buckets.

Shadow (mirrored) requests, in the canary's hash
    While the routing table's ``shadowPercent`` is above 0, that share of the requests served
    by the stable is run again through the canary in the background, and the canary's answer
    is compared with the one served; it is never served, never logged and counted in none of
    the fields above. The shadow fields go to ``stats(canary version, bucket)``, the bucket of
    the stable impression the run mirrors: ``shadow:requests`` (runs made), ``shadow:errors``
    (runs that failed or fell back), ``shadow:skipped`` (sampled, not run: the gateway's bound
    on concurrent shadow runs was reached), ``shadow:lat:<i>`` (each run's latency, the same
    histogram as ``lat:<i>``), and the comparison (``ranking_agreement``) of the runs where
    both answers came from their models: ``shadow:compared`` and ``shadow:overlap`` (count and
    sum of overlap@k) and ``shadow:ranked`` and ``shadow:rank`` (count and sum of the rank
    correlation, only defined for runs with two or more items in common). The sums are
    integers in millionths (``PPM``), so ``HINCRBY`` can add them; ``shadow:rank`` may be
    negative. ``Counts`` turns them back into means.

Replica heartbeats
    ``GatewayKeys.replicas``: a hash, one field per gateway replica (its pod name), whose value
    is a ``Heartbeat`` JSON written every poll. A heartbeat older than ``HEARTBEAT_STALE_SECONDS``
    is a replica gone. The operator sends traffic to a version (a canary's first weight, a
    promotion) only after every live replica reports the version's index loaded and its Triton
    reachable.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

BUCKET_SECONDS = 10
STATS_TTL_SECONDS = 3 * 24 * 3600
HEARTBEAT_STALE_SECONDS = 10.0
#: upper bounds of the latency histogram, in milliseconds
LATENCY_BOUNDS_MS: tuple[float, ...] = (
    1, 2.5, 5, 7.5, 10, 15, 20, 25, 30, 40, 50, 75, 100, 150, 250, 500, 1000, 2500,
)  # fmt: skip

REQUESTS, ERRORS, FALLBACKS, IMPRESSIONS = "requests", "errors", "fallbacks", "impressions"

SHADOW_REQUESTS = "shadow:requests"
SHADOW_ERRORS = "shadow:errors"
SHADOW_SKIPPED = "shadow:skipped"
SHADOW_COMPARED = "shadow:compared"
SHADOW_OVERLAP = "shadow:overlap"
SHADOW_RANKED = "shadow:ranked"
SHADOW_RANK = "shadow:rank"
SHADOW_LATENCY_PREFIX = "shadow:lat:"
#: the shadow comparison's sums are stored in millionths
PPM = 1_000_000


def latency_field(ms: float) -> str:
    """The histogram field a request of ``ms`` milliseconds is counted in."""
    for i, bound in enumerate(LATENCY_BOUNDS_MS):
        if ms <= bound:
            return f"lat:{i}"
    return f"lat:{len(LATENCY_BOUNDS_MS)}"


def shadow_latency_field(ms: float) -> str:
    """The shadow histogram field a canary run of ``ms`` milliseconds is counted in."""
    return "shadow:" + latency_field(ms)


def event_field(event_type: str) -> str:
    return f"event:{event_type}"


def late_field(event_type: str) -> str:
    return f"late:{event_type}"


def bucket_of(unix_seconds: float) -> int:
    return int(unix_seconds // BUCKET_SECONDS) * BUCKET_SECONDS


def buckets_between(start: float, end: float) -> list[int]:
    """The buckets that overlap [start, end)."""
    first, out = bucket_of(start), []
    b = first
    while b < end:
        out.append(b)
        b += BUCKET_SECONDS
    return out


def closed(bucket: int, now: float, attribution_window_s: float) -> bool:
    """Whether every event that can count toward the bucket's impressions has arrived."""
    return bucket + BUCKET_SECONDS + attribution_window_s <= now


# --- request ids ---------------------------------------------------------------------------


def request_id(random_hex: str, served_ms: int, tag: str) -> str:
    """``<random>.<served ms, base 36>-<variant tag>``: whichever replica receives an event for
    it can tell the variant and the impression's time without a lookup."""
    return f"{random_hex}.{_base36(served_ms)}-{tag}"


def served_ms_of(rid: str) -> int | None:
    """The impression time a request id carries, or None for an id without one."""
    head, _, _ = rid.rpartition("-")
    _, dot, stamp = head.rpartition(".")
    if not dot or not stamp:
        return None
    try:
        return int(stamp, 36)
    except ValueError:
        return None


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    if n <= 0:
        return "0"
    out = []
    while n:
        n, r = divmod(n, 36)
        out.append(digits[r])
    return "".join(reversed(out))


# --- comparing a shadow answer with the served one -------------------------------------------


@dataclass(frozen=True)
class Agreement:
    """How far two ranked lists of item ids agree at k (``ranking_agreement``)."""

    #: overlap@k in [0, 1]; None when neither list has an item
    overlap: float | None
    #: Spearman's rho in [-1, 1] over the items both lists hold; None below two such items
    rank: float | None


def ranking_agreement(served: Sequence[int], shadow: Sequence[int], k: int) -> Agreement:
    """Compare the top ``k`` of the served list with the top ``k`` of the shadow's.

    Two separate questions, so one does not hide the other. *Overlap*: the share of the
    items both top-k lists hold, |A ∩ B| / max(|A|, |B|); the divisor is k itself when either
    list is full, and the longer list when filters left fewer than k items, so identical short
    lists still agree fully. *Rank*: Spearman's rho between the orders the two lists give the
    items they share (each ranked 1..n within the shared items): 1 when they order them alike,
    -1 when exactly reversed, undefined with fewer than two shared items. An item only one
    list holds is left out of the rank rather than placed after the other list's end, which
    would count the missing items twice, once in each measure. A repeated id counts at its
    first position.
    """
    a, b = _first_k(served, k), _first_k(shadow, k)
    longest = max(len(a), len(b))
    if longest == 0:
        return Agreement(None, None)
    in_b = set(b)
    common = [i for i in a if i in in_b]
    overlap = len(common) / longest
    n = len(common)
    if n < 2:
        return Agreement(overlap, None)
    # common is in A's order, so an item's rank in A is its index there
    shared = set(common)
    rank_in_b = {item: r for r, item in enumerate(i for i in b if i in shared)}
    d2 = sum((r - rank_in_b[item]) ** 2 for r, item in enumerate(common))
    return Agreement(overlap, 1.0 - 6.0 * d2 / (n * (n * n - 1)))


def _first_k(items: Sequence[int], k: int) -> list[int]:
    out: list[int] = []
    seen: set[int] = set()
    for i in items:
        if len(out) >= k:
            break
        if i not in seen:
            seen.add(i)
            out.append(i)
    return out


def to_ppm(x: float) -> int:
    return round(x * PPM)


# --- reading the counters back ---------------------------------------------------------------


@dataclass
class Counts:
    """Counters of one version summed over some buckets."""

    requests: int = 0
    errors: int = 0
    fallbacks: int = 0
    impressions: int = 0
    latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS_MS) + 1))
    events: dict[str, int] = field(default_factory=dict)
    shadow_requests: int = 0
    shadow_errors: int = 0
    shadow_skipped: int = 0
    shadow_compared: int = 0
    #: sum of overlap@k over the compared runs, in millionths
    shadow_overlap_ppm: int = 0
    shadow_ranked: int = 0
    #: sum of the rank correlation over the ranked runs, in millionths
    shadow_rank_ppm: int = 0
    shadow_latency: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BOUNDS_MS) + 1))

    def add(self, raw: Mapping[bytes | str, bytes | str | int]) -> None:
        """Add one bucket's hash (as ``HGETALL`` returns it); unknown fields are ignored."""
        for k, v in raw.items():
            name = k.decode() if isinstance(k, bytes) else k
            n = int(v)
            if name == REQUESTS:
                self.requests += n
            elif name == ERRORS:
                self.errors += n
            elif name == FALLBACKS:
                self.fallbacks += n
            elif name == IMPRESSIONS:
                self.impressions += n
            elif name.startswith("lat:"):
                i = int(name[4:])
                if 0 <= i < len(self.latency):
                    self.latency[i] += n
            elif name.startswith("event:"):
                self.events[name[6:]] = self.events.get(name[6:], 0) + n
            elif name.startswith("shadow:"):
                self._add_shadow(name, n)

    def _add_shadow(self, name: str, n: int) -> None:
        if name.startswith(SHADOW_LATENCY_PREFIX):
            i = int(name[len(SHADOW_LATENCY_PREFIX) :])
            if 0 <= i < len(self.shadow_latency):
                self.shadow_latency[i] += n
            return
        attribute = _SHADOW_ATTRIBUTES.get(name)
        if attribute is not None:
            setattr(self, attribute, getattr(self, attribute) + n)

    @classmethod
    def of(cls, buckets: Iterable[Mapping[bytes | str, bytes | str | int]]) -> Counts:
        out = cls()
        for raw in buckets:
            out.add(raw)
        return out

    def latency_quantile_ms(self, q: float) -> float | None:
        """The upper bound of the histogram bucket holding the q-quantile (as Prometheus'
        ``histogram_quantile`` without interpolation); above the last bound, twice the last."""
        return _quantile_ms(self.latency, q)

    def shadow_latency_quantile_ms(self, q: float) -> float | None:
        """``latency_quantile_ms`` of the canary's shadow runs."""
        return _quantile_ms(self.shadow_latency, q)

    @property
    def shadow_overlap(self) -> float | None:
        """Mean overlap@k of the compared shadow runs, in [0, 1]; None when none was."""
        if self.shadow_compared <= 0:
            return None
        return self.shadow_overlap_ppm / PPM / self.shadow_compared

    @property
    def shadow_rank(self) -> float | None:
        """Mean rank correlation of the ranked shadow runs, in [-1, 1]; None when none was."""
        if self.shadow_ranked <= 0:
            return None
        return self.shadow_rank_ppm / PPM / self.shadow_ranked


_SHADOW_ATTRIBUTES = {
    SHADOW_REQUESTS: "shadow_requests",
    SHADOW_ERRORS: "shadow_errors",
    SHADOW_SKIPPED: "shadow_skipped",
    SHADOW_COMPARED: "shadow_compared",
    SHADOW_OVERLAP: "shadow_overlap_ppm",
    SHADOW_RANKED: "shadow_ranked",
    SHADOW_RANK: "shadow_rank_ppm",
}


def _quantile_ms(histogram: Sequence[int], q: float) -> float | None:
    total = sum(histogram)
    if total == 0:
        return None
    rank, seen = q * total, 0
    bounds = (*LATENCY_BOUNDS_MS, 2 * LATENCY_BOUNDS_MS[-1])
    for bound, n in zip(bounds, histogram, strict=True):
        seen += n
        if seen >= rank:
            return bound
    return bounds[-1]


# --- heartbeats -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Heartbeat:
    """What one gateway replica last reported: when (unix seconds), the index URIs it has
    loaded, the model versions whose Triton answered its readiness probe from this replica,
    and the routing it serves (stable, canary, weight). A Deployment can be Available while
    its Service does not reach it from the gateway; the probe sees the path requests take."""

    at: float
    loaded: tuple[str, ...]
    stable: str
    canary: str | None = None
    canary_weight: int = 0
    reachable: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps(
            {
                "at": self.at,
                "loaded": sorted(self.loaded),
                "stable": self.stable,
                "canary": self.canary,
                "canaryWeight": self.canary_weight,
                "reachable": sorted(self.reachable),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> Heartbeat:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("a heartbeat is a JSON object")
        return cls(
            at=float(data["at"]),
            loaded=tuple(str(u) for u in data.get("loaded") or []),
            stable=str(data["stable"]),
            canary=data.get("canary"),
            canary_weight=int(data.get("canaryWeight") or 0),
            reachable=tuple(str(v) for v in data.get("reachable") or []),
        )


def live(beats: Mapping[str, Heartbeat], now: float) -> dict[str, Heartbeat]:
    return {r: b for r, b in beats.items() if now - b.at <= HEARTBEAT_STALE_SECONDS}
