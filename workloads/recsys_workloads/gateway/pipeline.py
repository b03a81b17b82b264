"""One recommendation request through the four stages of serving.

1. retrieval: the user's features from Redis, the user tower on the variant's Triton, then
   an ANN search in the variant's index (over-fetching by the number of items the filters
   will remove, so ``candidates`` survive them);
2. filtering: drop seen and blocked items (read from Redis with the features) and items
   failing the item selector;
3. scoring: the ranking model on Triton over the surviving candidates, in one call, its
   logits fused with the candidates' retrieval scores by the version's weights
   (``recsys_workloads.scoring``; a retrieval-only version skips the call);
4. ordering: boosts, de-duplication, diversity, top k (``rules.py``).

Hybrid serving: with ``precomputed`` configured, the request's one Redis read also brings the
user's list stored ahead by the variant's version (``recsys_workloads.precompute`` runs
stages 1 to 3 above for it); a list of that version, no older than ``maxAge``, with at least
k items passing the live filters, stands in for retrieval and scoring, and ordering runs on
it as on live candidates. Anything else falls through to live computation. The response's
``source`` and ``recsys_gateway_precomputed_total{outcome}`` say which it was.

Batch mode (a variant without ``triton``): stored lists are all there is. A user whose list
is missing, stale, of another version or too short after the filters gets the variant's
popular items through the same filters and ordering, with ``source: popular`` and
``fallback: no-list`` (counted by the fallback metric, and the precomputed metric says why
the list was not served); Triton is never called.

Each stage's time goes to the response (``timingsMs``) and the stage histogram. Retrieval's
includes the request's one Redis round trip, which also brings filtering its seen and blocked
sets (the ANN fetch size depends on them); filtering's is the set arithmetic and item rules.

Degraded dependencies: Triton gets ``scoringTimeout`` in total per request (both calls
together). If the user tower fails or runs out of time, the response is the variant's
fallback items (the most popular at training time, filtered the same way); if only the ranker
fails, the retrieved candidates are served in retrieval order. Either way the response says
``fallback`` with the reason and the fallback metric counts it. A Redis failure is not
degradable (no features, no filters, no log): it raises ``StoreUnavailable`` and the HTTP
layer answers 503.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from recsys_contract import traffic
from recsys_contract.gateway import GatewayConfig, RoutingTable, Variant, rule_feature_keys
from recsys_contract.keyspace import IndexAlias, PrecomputedList
from recsys_workloads import scoring
from recsys_workloads.gateway import rules
from recsys_workloads.gateway.index_pool import Candidates, IndexPool, LoadedIndex
from recsys_workloads.gateway.metrics import GatewayMetrics
from recsys_workloads.gateway.routing import VariantName, choose_variant
from recsys_workloads.gateway.served_log import ServedRecord, StreamWriter
from recsys_workloads.gateway.store import FilterSets, GatewayStore
from recsys_workloads.gateway.triton_client import TritonClient, TritonUnavailable

VARIANT_TAGS: dict[VariantName, str] = {"stable": "s", "canary": "c"}


class NotReady(Exception):
    """No index is loaded for the stable variant yet."""


def new_request_id(variant: VariantName, served_ms: int) -> str:
    """A random id that carries the impression's time and ends in its variant's tag
    (``-s``/``-c``), so whichever replica receives an event for it can credit the event to the
    right variant and time bucket (``recsys_contract.traffic.request_id``)."""
    return traffic.request_id(uuid.uuid4().hex, served_ms, VARIANT_TAGS[variant])


def variant_of_request(request_id: str) -> VariantName | None:
    """The variant a request id names by its tag, the part after the last ``-``; ids minted
    before they carried a time still have it."""
    head, dash, tag = request_id.rpartition("-")
    if not dash or not head:
        return None
    for name, known in VARIANT_TAGS.items():
        if tag == known:
            return name
    return None


@dataclass(frozen=True)
class Routing:
    """What the pollers last read: the table, where it came from, the index alias."""

    table: RoutingTable
    source: str
    alias: IndexAlias | None = None


def index_uri_for(name: VariantName, variant: Variant, alias: IndexAlias | None) -> str | None:
    """Stable traffic follows the alias, unless the alias names an index of another model
    version (a promotion half-written: the index must match the user tower that queries it)."""
    if name == "stable" and alias is not None and alias.version in (None, variant.model_version):
        return alias.uri
    return variant.index


def wanted_indexes(routing: Routing) -> set[str]:
    """What the pool keeps loaded: the served variants' indexes and the standby's, which is
    never served but must be loaded before a routing change makes it so."""
    table = routing.table
    uris = {index_uri_for("stable", table.stable, routing.alias)}
    if table.canary is not None:
        uris.add(index_uri_for("canary", table.canary, routing.alias))
    if table.standby is not None:
        uris.add(table.standby.index)
    return {u for u in uris if u}


@dataclass(frozen=True)
class ResolvedVariant:
    name: VariantName
    model_version: str
    #: None in Batch mode: served from stored lists and popular items only
    triton: str | None
    index: LoadedIndex


#: Where a response's items come from: computed now, a list stored ahead, or (Batch mode,
#: no usable list) the variant's popular items.
Source = Literal["live", "precomputed", "popular"]
#: The fallback reason of a Batch-mode answer without a usable stored list.
NO_LIST = "no-list"


@dataclass(frozen=True)
class Found:
    """What stages 1 to 3 found: the user's reads, the filtered candidates and their scores."""

    features: Mapping[str, Any] | None
    filters: FilterSets
    #: the candidates that passed the filters, in retrieval (or stored) order
    kept: Candidates
    #: the same candidates with their final scores (``scoring.fuse``; retrieval's when the
    #: ranker failed)
    scored: Candidates
    fallback: str | None
    source: Source


def usable_list(
    raw: bytes | None, model_version: str, now_s: float, max_age_s: float
) -> tuple[Candidates | None, str]:
    """A stored list the variant may serve, or None and why not (``missing``, ``invalid``,
    ``other-version``: written by another version than the variant's, ``stale``: older than
    ``maxAge``). Its key already names the version; the list's own is checked too, so a list
    under the wrong key is never served."""
    if raw is None:
        return None, "missing"
    try:
        stored = PrecomputedList.from_json(raw)
    except (ValueError, KeyError, TypeError):
        return None, "invalid"
    if stored.model_version != model_version:
        return None, "other-version"
    if now_s * 1000 - stored.computed_ms > max_age_s * 1000:
        return None, "stale"
    return Candidates(
        np.array(stored.items, dtype=np.int64), np.array(stored.scores, dtype=np.float32)
    ), "ok"


@dataclass
class Recommendation:
    request_id: str
    #: the impression's time, as the request id carries it
    served_ms: int
    user_id: int
    variant: ResolvedVariant
    items: list[rules.Scored]
    fallback: str | None
    candidates: npt.NDArray[np.int64]
    features: Mapping[str, Any] | None
    timings_ms: dict[str, float] = field(default_factory=dict)
    history: tuple[int, ...] = ()
    source: Source = "live"

    def to_json(self) -> dict[str, Any]:
        return {
            "requestId": self.request_id,
            "userId": self.user_id,
            "variant": self.variant.name,
            "modelVersion": self.variant.model_version,
            "index": self.variant.index.uri,
            "items": [{"itemId": s.item_id, "score": round(s.score, 6)} for s in self.items],
            "fallback": self.fallback,
            "source": self.source,
            "timingsMs": {k: round(v, 3) for k, v in self.timings_ms.items()},
        }


class Budget:
    """Time Triton may still take in this request."""

    def __init__(self, seconds: float) -> None:
        self.left = seconds

    def spend(self, started: float) -> None:
        self.left -= time.perf_counter() - started


class RecommendationService:
    def __init__(
        self,
        cfg: GatewayConfig,
        store: GatewayStore,
        triton: TritonClient,
        pool: IndexPool,
        metrics: GatewayMetrics,
        served: StreamWriter,
    ) -> None:
        self.cfg = cfg
        self.store = store
        self.triton = triton
        self.pool = pool
        self.metrics = metrics
        self.served = served
        self.routing = Routing(cfg.routing, "config")
        #: the index each variant last served from, kept until its replacement is loaded
        self.serving_index: dict[VariantName, LoadedIndex] = {}
        self.rule_keys = rule_feature_keys(cfg)

    # --- variants --------------------------------------------------------------------------

    def variant(self, name: VariantName) -> ResolvedVariant | None:
        """The named variant with the index it serves from; None when the table has no such
        variant or its index is not loaded yet."""
        return self._resolve(name)

    def _resolve(self, name: VariantName) -> ResolvedVariant | None:
        table = self.routing.table
        variant = table.stable if name == "stable" else table.canary
        if variant is None:
            return None
        index = self.pool.get(index_uri_for(name, variant, self.routing.alias))
        previous = self.serving_index.get(name)
        if index is not None:
            self.serving_index[name] = index
        elif previous is not None and previous.version == variant.model_version:
            index = previous  # the alias moved and its index is still loading: keep serving
        else:
            return None
        return ResolvedVariant(name, variant.model_version, variant.triton, index)

    def resolve(self, user_id: int) -> ResolvedVariant:
        """The user's variant; a canary whose index is still loading serves stable meanwhile."""
        name = choose_variant(self.routing.table, user_id)
        resolved = self._resolve(name)
        if resolved is None and name == "canary":
            resolved = self._resolve("stable")
        if resolved is None:
            raise NotReady("the stable variant's index is not loaded yet")
        return resolved

    def ready(self) -> bool:
        return self._resolve("stable") is not None

    # --- the four stages -------------------------------------------------------------------

    async def recommend(
        self, user_id: int, k: int, context: Mapping[str, str] | None = None
    ) -> Recommendation:
        return await self.recommend_for(self.resolve(user_id), user_id, k, context)

    async def recommend_for(
        self,
        variant: ResolvedVariant,
        user_id: int,
        k: int,
        context: Mapping[str, str] | None = None,
        served_ms: int | None = None,
    ) -> Recommendation:
        """``served_ms``: the impression's time (now by default), which the request id
        carries and the traffic counters bucket by. The response is logged and measured as
        served."""
        rec = await self.run_stages(variant, user_id, k, served_ms)
        self._log(rec, context or {})
        return rec

    async def run_stages(
        self,
        variant: ResolvedVariant,
        user_id: int,
        k: int,
        served_ms: int | None = None,
        *,
        stored: bool = True,
    ) -> Recommendation:
        """The four stages alone: neither logged nor measured, for an answer that is not
        served (a shadow run, which computes live: ``stored=False``)."""
        started = time.perf_counter()
        if served_ms is None:
            served_ms = int(time.time() * 1000)
        request_id = new_request_id(variant.name, served_ms)
        timings: dict[str, float] = {}
        found = await self.candidate_stages(
            variant, user_id, timings, serve_k=k if stored else None
        )
        # 4. ordering
        t = time.perf_counter()
        items = await self.order(found.scored, k)
        timings["ordering"] = _ms(t)
        timings["total"] = _ms(started)
        return Recommendation(
            request_id,
            served_ms,
            user_id,
            variant,
            items,
            found.fallback,
            found.kept.ids,
            found.features,
            timings,
            found.filters.history,
            found.source,
        )

    async def candidate_stages(
        self,
        variant: ResolvedVariant,
        user_id: int,
        timings: dict[str, float],
        serve_k: int | None = None,
    ) -> Found:
        """Stages 1 to 3 (retrieval, filtering, scoring): the scored candidates the ordering
        rules choose from. The pre-computation Job runs exactly these for the lists it
        stores, so a stored list is what live computation gives, before ordering.

        ``serve_k``: a request that serves k items; with pre-computed lists configured, the
        user's stored list of this variant's version, no older than ``maxAge`` and with at
        least k items passing the live filters, replaces retrieval and scoring."""
        cfg = self.cfg
        budget = Budget(cfg.scoring_timeout_s)
        seen_since = self._seen_since_ms()
        lists = cfg.precomputed if serve_k is not None else None
        # 1. retrieval (the read brings the filtering stage's seen and blocked sets too, and
        # the user's stored list)
        t = time.perf_counter()
        features, filters = await self.store.request_reads(
            user_id,
            seen=cfg.filtering.exclude_seen,
            blocked=cfg.filtering.exclude_blocked,
            seen_since_ms=seen_since,
            history=cfg.history_items,
            precomputed=self.store.keys.precomputed(variant.model_version, user_id)
            if lists
            else None,
        )
        if lists is not None and serve_k is not None:
            stored, outcome = usable_list(
                filters.precomputed, variant.model_version, time.time(), lists.max_age_s
            )
            if stored is not None:
                timings["retrieval"] = _ms(t)
                t = time.perf_counter()
                kept = await self._filter(stored, filters)
                timings["filtering"] = _ms(t)
                if len(kept) >= serve_k:
                    timings["scoring"] = 0.0
                    self.metrics.precomputed.labels(
                        variant.name, variant.model_version, "served"
                    ).inc()
                    return Found(features, filters, kept, kept, None, "precomputed")
                outcome = "short"
                t = time.perf_counter()
            self.metrics.precomputed.labels(variant.name, variant.model_version, outcome).inc()
        if variant.triton is None:  # Batch mode: nothing runs live, popular items stand in
            timings["retrieval"] = timings.get("retrieval", 0.0) + _ms(t)
            t = time.perf_counter()
            kept = (await self._filter(variant.index.popular, filters)).take(
                slice(0, cfg.candidates)
            )
            timings["filtering"] = timings.get("filtering", 0.0) + _ms(t)
            timings["scoring"] = 0.0
            return Found(features, filters, kept, kept, NO_LIST, "popular")
        triton = variant.triton
        fallback: str | None = None
        try:
            tt = time.perf_counter()
            vector = await self.triton.embed_user(
                triton,
                variant.model_version,
                user_id,
                features,
                filters.history,
                budget.left,
            )
            budget.spend(tt)
            fetch = cfg.candidates + len(filters.seen) + len(filters.blocked)
            retrieved = variant.index.search(vector, fetch)
        except TritonUnavailable as exc:
            fallback = exc.reason
            retrieved = variant.index.popular
        timings["retrieval"] = timings.get("retrieval", 0.0) + _ms(t)

        # 2. filtering
        t = time.perf_counter()
        kept = (await self._filter(retrieved, filters)).take(slice(0, cfg.candidates))
        timings["filtering"] = timings.get("filtering", 0.0) + _ms(t)

        # 3. scoring
        t = time.perf_counter()
        scored = kept
        fusion = variant.index.fusion
        if fallback is None and len(kept):
            try:
                logits = None
                if fusion.uses_ranker:
                    tt = time.perf_counter()
                    logits = await self.triton.rank(
                        triton,
                        variant.model_version,
                        user_id,
                        features,
                        filters.history,
                        kept.ids,
                        budget.left,
                    )
                    budget.spend(tt)
                # kept.scores are the ANN search's inner products: the retrieval scores
                scored = Candidates(kept.ids, scoring.fuse(fusion, logits, kept.scores))
            except TritonUnavailable as exc:
                fallback = exc.reason
        timings["scoring"] = _ms(t)
        return Found(features, filters, kept, scored, fallback, "live")

    async def similar_items(
        self, variant: ResolvedVariant, item_id: int, k: int, user_id: int | None
    ) -> list[rules.Scored] | None:
        """The k items nearest ``item_id`` in the variant's index (the item tower's space,
        inner product), without the item itself, through the same filters (blocked items,
        the item selector, and a given user's seen and blocked items) and ordering rules as
        recommendations; None when the index has no such item."""
        vector = variant.index.vector(item_id)
        if vector is None:
            return None
        filters = await self.store.item_filters(
            user_id,
            seen=self.cfg.filtering.exclude_seen,
            blocked=self.cfg.filtering.exclude_blocked,
            seen_since_ms=self._seen_since_ms(),
        )
        fetch = k + 1 + len(filters.seen) + len(filters.blocked)
        near = variant.index.search(vector, fetch)
        near = near.take(near.ids != item_id)
        kept = (await self._filter(near, filters)).take(slice(0, k))
        return await self.order(kept, k)

    def _seen_since_ms(self) -> int | None:
        """Items seen before this are no longer filtered (``seenWindow``); None: all are."""
        window = self.cfg.seen_window_s
        return None if window is None else int((time.time() - window) * 1000)

    async def order(self, scored: Candidates, k: int) -> list[rules.Scored]:
        """Stage 4: the ordering rules (boosts, diversity) and the top k, as the offline
        evaluation replays them (``rules.final_list``)."""
        cfg = self.cfg
        rows = (
            await self.store.item_features(int(i) for i in scored.ids)
            if rules.needs_rows(cfg.ordering)
            else {}
        )
        return rules.final_list(scored.ids, scored.scores, cfg.ordering, rows, k)

    async def _filter(self, retrieved: Candidates, filters: FilterSets) -> Candidates:
        excluded = filters.excluded()
        kept = retrieved
        if excluded:
            drop = np.fromiter(excluded, dtype=np.int64, count=len(excluded))
            kept = retrieved.take(~np.isin(retrieved.ids, drop))
        selector = self.cfg.filtering.item_selector
        if selector is None or not len(kept):
            return kept
        rows = await self.store.item_features(int(i) for i in kept.ids)
        passing = np.fromiter(
            (rules.matches_all(selector.match_expressions, rows[int(i)]) for i in kept.ids),
            dtype=bool,
            count=len(kept),
        )
        return kept.take(passing)

    def _log(self, rec: Recommendation, context: Mapping[str, str]) -> None:
        v = rec.variant
        labels = (v.name, v.model_version)
        self.metrics.latency.labels(*labels).observe(rec.timings_ms["total"] / 1000)
        for stage in ("retrieval", "filtering", "scoring", "ordering"):
            self.metrics.stage_latency.labels(*labels, stage).observe(rec.timings_ms[stage] / 1000)
        self.metrics.served_items.labels(*labels).inc(len(rec.items))
        if rec.fallback:
            self.metrics.fallbacks.labels(*labels, rec.fallback).inc()
        self.served.append(
            ServedRecord(
                request_id=rec.request_id,
                ts_ms=rec.served_ms,
                user_id=rec.user_id,
                variant=v.name,
                model_version=v.model_version,
                index=v.index.uri,
                fallback=rec.fallback,
                items=[(s.item_id, s.score) for s in rec.items],
                candidates=rec.candidates.tolist(),
                features=rec.features,
                history=list(rec.history),
                context=context,
                source=rec.source,
            ).to_fields()
        )


def _ms(since: float) -> float:
    return (time.perf_counter() - since) * 1000.0
