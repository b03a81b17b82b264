"""The gateway's reads from Redis: user features, what to filter out, item features for rules.

A request costs one round trip: the hash reads of the user's features (``FeatureViewKeys
.entities`` and the feature store's ``decode_rows``, with each FeatureView's pointer cached
for a second) and the seen and blocked sets go in one pipeline. Rows of several user
FeatureViews are merged, later views winning on a name clash. Item features, needed only
when filtering or ordering rules test them, are cached for ``itemCacheTtl``: item attributes
change on the scale of materialization runs, and the same popular items are candidates for
most users, so the cache turns a few hundred hash reads per request into a few.

Any Redis failure surfaces as ``StoreUnavailable``, which the HTTP layer answers with 503.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio
import redis.exceptions

from recsys_contract.gateway import FeatureViewRef, GatewayConfig
from recsys_contract.keyspace import FeatureViewKeys, GatewayKeys, LivePointer
from recsys_contract.online_client import AsyncRedis
from recsys_workloads.featurestore.reader import decode_rows

T = TypeVar("T")
Row = dict[str, Any]


class StoreUnavailable(Exception):
    """Redis cannot be reached or answered with an error."""


async def guarded(call: Awaitable[T]) -> T:
    try:
        return await call
    except (TimeoutError, redis.exceptions.RedisError, OSError) as exc:
        raise StoreUnavailable(f"{type(exc).__name__}: {exc}") from exc


def merge_rows(views: Sequence[FeatureViewRef], rows: Sequence[Row | None]) -> Row | None:
    """One row from several views' rows, keeping each view's selected features."""
    merged: Row = {}
    found = False
    for ref, row in zip(views, rows, strict=True):
        if row is None:
            continue
        found = True
        for name, value in row.items():
            if ref.features is None or name in ref.features:
                merged[name] = value
    return merged if found else None


@dataclass(frozen=True)
class FilterSets:
    seen: frozenset[int]
    blocked: frozenset[int]
    #: the user's most recent items, most recent first (the models' history input)
    history: tuple[int, ...] = ()
    #: the user's stored list (``keyspace.PrecomputedList``, undecoded) when one was asked
    #: for: read in the same round trip, as it is served only after these sets filter it
    precomputed: bytes | None = None

    def excluded(self) -> frozenset[int]:
        return self.seen | self.blocked


def _ints(members: Iterable[bytes | str]) -> set[int]:
    out = set()
    for m in members:
        try:
            out.add(int(m))
        except ValueError:
            continue  # a member that is no item id cannot match a candidate
    return out


POINTER_TTL_S = 1.0


def _ordered_ints(members: Iterable[bytes | str]) -> list[int]:
    out = []
    for m in members:
        try:
            out.append(int(m))
        except ValueError:
            continue
    return out


class GatewayStore:
    def __init__(
        self,
        client: AsyncRedis,
        keys: GatewayKeys,
        user_views: Sequence[FeatureViewRef],
        item_views: Sequence[FeatureViewRef],
        item_cache_ttl_s: float,
    ) -> None:
        self.client = client
        self.keys = keys
        self.user_views = list(user_views)
        self.item_views = list(item_views)
        self.item_cache_ttl_s = item_cache_ttl_s
        self._items: dict[int, tuple[float, Row | None]] = {}
        self._pointers: dict[FeatureViewKeys, tuple[float, LivePointer | None]] = {}

    @classmethod
    def for_config(cls, client: AsyncRedis, cfg: GatewayConfig) -> GatewayStore:
        """The store a gateway with ``cfg`` reads (the pre-computation Job reads the same)."""
        return cls(
            client, cfg.keys, cfg.feature_views.user, cfg.feature_views.item, cfg.item_cache_ttl_s
        )

    async def pointers(self, views: Sequence[FeatureViewRef]) -> list[LivePointer | None]:
        """Each view's live pointer, re-read at most once a second. A second-old pointer is
        safe: the materializer keeps replaced layers readable for a grace period (minutes)."""
        now = time.monotonic()
        stale = [v.keys for v in views if self._pointers.get(v.keys, (0.0, None))[0] <= now]
        if stale:
            pipe = self.client.pipeline(transaction=False)
            for keys in stale:
                pipe.get(keys.live)
            raws = await guarded(pipe.execute())
            for keys, raw in zip(stale, raws, strict=True):
                pointer = LivePointer.from_json(raw) if raw else None
                self._pointers[keys] = (now + POINTER_TTL_S, pointer)
        return [self._pointers[v.keys][1] for v in views]

    def _queue_rows(
        self,
        pipe: Any,
        views: Sequence[FeatureViewRef],
        pointers: Sequence[LivePointer | None],
        ids: Sequence[int],
    ) -> list[int]:
        """Queue every view's hash reads; returns how many replies each view gets."""
        counts = []
        for v, pointer in zip(views, pointers, strict=True):
            keys = v.keys.entities(pointer.layers, ids) if pointer else []
            for key in keys:
                pipe.hgetall(key)
            counts.append(len(keys))
        return counts

    @staticmethod
    def _decode(
        views: Sequence[FeatureViewRef],
        pointers: Sequence[LivePointer | None],
        ids: Sequence[int],
        counts: Sequence[int],
        replies: list[Any],
    ) -> list[list[Row | None]]:
        out = []
        for v, pointer, n in zip(views, pointers, counts, strict=True):
            hashes, replies[:n] = replies[:n], []
            out.append(decode_rows(v.name, pointer, ids, hashes).rows)
        return out

    async def request_reads(
        self,
        user_id: int,
        *,
        seen: bool,
        blocked: bool,
        seen_since_ms: int | None,
        history: int = 0,
        precomputed: str | None = None,
    ) -> tuple[Row | None, FilterSets]:
        """The user's features, recent items and what to filter out for them, in one round
        trip. The seen set is the user's history too: item -> time of the last interaction.
        ``precomputed``: the key of a stored list to read in the same trip."""
        pointers = await self.pointers(self.user_views)
        pipe = self.client.pipeline(transaction=False)
        counts = self._queue_rows(pipe, self.user_views, pointers, [user_id])
        if history:  # ZREVRANGE 0 -1 would be every item, not none
            pipe.zrevrange(self.keys.seen(user_id), 0, history - 1)
        filter_reads = self._queue_filters(pipe, user_id, seen, blocked, seen_since_ms)
        if precomputed is not None:
            pipe.get(precomputed)
        replies = list(await guarded(pipe.execute()))
        stored = replies.pop() if precomputed is not None else None
        filter_replies = replies[len(replies) - filter_reads :]
        del replies[len(replies) - filter_reads :]
        recent = tuple(_ordered_ints(replies.pop())) if history else ()
        per_view = self._decode(self.user_views, pointers, [user_id], counts, replies)
        row = merge_rows(self.user_views, [rows[0] for rows in per_view])
        sets = self._filter_sets(filter_replies, user_id, seen)
        return row, FilterSets(sets.seen, sets.blocked, recent, stored)

    async def item_filters(
        self, user_id: int | None, *, seen: bool, blocked: bool, seen_since_ms: int | None
    ) -> FilterSets:
        """What to filter out of a similar-items answer, in one round trip: the items blocked
        for everyone, and, for a known user, their seen and blocked items."""
        pipe = self.client.pipeline(transaction=False)
        if not self._queue_filters(pipe, user_id, seen, blocked, seen_since_ms):
            return FilterSets(frozenset(), frozenset())
        return self._filter_sets(list(await guarded(pipe.execute())), user_id, seen)

    def _queue_filters(
        self,
        pipe: Any,
        user_id: int | None,
        seen: bool,
        blocked: bool,
        seen_since_ms: int | None,
    ) -> int:
        """Queue the reads of the filter sets (the user's seen items; the items blocked for
        everyone and for the user); returns how many replies they add."""
        queued = 0
        if seen and user_id is not None:
            low = "-inf" if seen_since_ms is None else seen_since_ms
            pipe.zrangebyscore(self.keys.seen(user_id), low, "+inf")
            queued += 1
        if blocked:
            pipe.smembers(self.keys.blocked)
            queued += 1
            if user_id is not None:
                pipe.smembers(self.keys.blocked_for(user_id))
                queued += 1
        return queued

    @staticmethod
    def _filter_sets(replies: list[Any], user_id: int | None, seen: bool) -> FilterSets:
        """The replies of ``_queue_filters``, in its order, as filter sets."""
        seen_items = _ints(replies[0]) if seen and user_id is not None else set()
        blocked_items: set[int] = set()
        for members in replies[1 if seen and user_id is not None else 0 :]:
            blocked_items |= _ints(members)
        return FilterSets(frozenset(seen_items), frozenset(blocked_items))

    async def item_features(self, item_ids: Iterable[int]) -> dict[int, Row | None]:
        """Features of the given items for the rules, from the cache or Redis."""
        now = time.monotonic()
        out: dict[int, Row | None] = {}
        missing: list[int] = []
        for item in dict.fromkeys(item_ids):
            hit = self._items.get(item)
            if hit is not None and hit[0] > now:
                out[item] = hit[1]
            else:
                missing.append(item)
        if missing and self.item_views:
            pointers = await self.pointers(self.item_views)
            pipe = self.client.pipeline(transaction=False)
            counts = self._queue_rows(pipe, self.item_views, pointers, missing)
            replies = list(await guarded(pipe.execute()))
            per_view = self._decode(self.item_views, pointers, missing, counts, replies)
            expires = now + self.item_cache_ttl_s
            for n, item in enumerate(missing):
                row = merge_rows(self.item_views, [rows[n] for rows in per_view])
                self._items[item] = (expires, row)
                out[item] = row
        if len(self._items) > 1_000_000:
            self._items = {k: v for k, v in self._items.items() if v[0] > now}
        return out
