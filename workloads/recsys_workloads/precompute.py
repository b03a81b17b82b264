"""Hybrid serving's offline half: store the audience's lists, computed ahead by the stable
version, for the gateway to serve without calling Triton.

``python -m recsys_workloads.precompute --config /etc/recsys/config.json`` (the contract:
``recsys_contract.precompute``). A run

1. picks the audience: the most active users, counted by user over the ``served`` stream's
   entries of the last ``windowSeconds`` (the gateways log every response there; its length
   cap bounds what the window can see), or every user with features online (the user
   FeatureViews' keys in their live layers, or the users' seen sets when the Recommender
   reads no user FeatureView);
2. runs, for each user, the gateway's own stages 1 to 3 (``RecommendationService
   .candidate_stages``: features, user tower on the stable's Triton, ANN search, filters,
   ranker, and the fusion of its logits with the retrieval scores, ``recsys_workloads
   .scoring``) and keeps the ``topN`` candidates by that final score;
3. writes each as a ``keyspace.PrecomputedList`` under the stable's version, with the time
   of the run, expiring ``maxAge`` after it.

Why the gateway's classes against Triton rather than the models in process: it keeps one
implementation of every stage (the feature reads and their merge, the history input, the
over-fetch for the filters, the item selector, the ranker call), so a stored list is exactly
what live computation would have ranked, and a change to a stage reaches both at once. The
cost is Triton's round trips, which the Job spreads over ``concurrency`` users in flight;
the dynamic batcher groups them.

Ordering rules (boosts, diversity) are not applied here: the gateway applies them to the
stored list when it serves it, with the live filters, so a rule changed since the run takes
effect at once. Users are handled ``batchSize`` at a time (read, computed, written, then the
next batch), so memory is bounded by the batch and, for ``mostActive``, by the count per user
of the window's distinct users. A run only overwrites keys with the same content as a rerun
would (the same version, newer time), so running it twice is harmless; a user Triton fails
for keeps no list this run and is served live.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

import redis.asyncio
import redis.exceptions

from recsys_contract.gateway import GatewayConfig
from recsys_contract.keyspace import GatewayKeys, IndexAlias, LivePointer, PrecomputedList
from recsys_contract.online_client import AsyncRedis, async_redis
from recsys_contract.precompute import Audience, PrecomputeConfig, PrecomputeSummary
from recsys_workloads.gateway import rules
from recsys_workloads.gateway.http1 import KeepAlivePool
from recsys_workloads.gateway.index_pool import serving_index_pool
from recsys_workloads.gateway.metrics import GatewayMetrics
from recsys_workloads.gateway.pipeline import (
    RecommendationService,
    ResolvedVariant,
    Routing,
    wanted_indexes,
)
from recsys_workloads.gateway.served_log import StreamWriter
from recsys_workloads.gateway.store import GatewayStore
from recsys_workloads.gateway.triton_client import TritonClient
from recsys_workloads.redis_client import redis_password
from recsys_workloads.runtime import (
    BadInputError,
    TransientError,
    parse_config,
    run_entrypoint,
)

log = logging.getLogger("recsys_workloads.precompute")

#: served-stream entries read per XRANGE, and keys per SCAN
PAGE = 1000


# --- the audience --------------------------------------------------------------------------


async def served_counts(client: AsyncRedis, keys: GatewayKeys, since_ms: int) -> Counter[int]:
    """Served responses per user since ``since_ms`` (stream ids are Redis' ms clock)."""
    counts: Counter[int] = Counter()
    low = str(since_ms)
    while True:
        page: Any = await client.xrange(keys.served, min=low, max="+", count=PAGE)
        for _, fields in page:
            raw = fields.get(b"userId")
            if raw is not None:
                try:
                    counts[int(raw)] += 1
                except ValueError:
                    continue
        if len(page) < PAGE:
            return counts
        low = f"({page[-1][0].decode()}"


def most_active(counts: Counter[int], audience: Audience) -> list[int]:
    """The head: the users with the most requests, ``mostActive`` of them or
    ``mostActivePercent`` of those counted (rounded up); ties go to the lower id, so two runs
    over the same traffic pick the same users."""
    if audience.most_active is not None:
        n = audience.most_active
    else:
        n = math.ceil(len(counts) * (audience.most_active_percent or 0) / 100)
    return [u for u, _ in heapq.nsmallest(n, counts.items(), key=lambda c: (-c[1], c[0]))]


async def _scan_ids(client: AsyncRedis, prefix: str, batch: int) -> AsyncIterator[list[int]]:
    ids: list[int] = []
    async for key in client.scan_iter(match=f"{prefix}*", count=PAGE):
        try:
            ids.append(int(key[len(prefix) :]))
        except ValueError:
            continue
        if len(ids) >= batch:
            yield ids
            ids = []
    if ids:
        yield ids


async def all_users(client: AsyncRedis, cfg: GatewayConfig, batch: int) -> AsyncIterator[list[int]]:
    """Every user with features online, in batches: the entities of each user FeatureView's
    live layers, or, without user FeatureViews, every user with a seen set. A user in two
    layers or views comes twice (its list is written twice, the same); deduplicating would
    hold every id in memory."""
    prefixes: list[str] = []
    for view in cfg.feature_views.user:
        raw = await client.get(view.keys.live)
        if raw:
            pointer = LivePointer.from_json(raw)
            prefixes.extend(view.keys.layer(layer) for layer in pointer.layers)
    if not cfg.feature_views.user:
        prefixes.append(cfg.keys.seen(""))
    for prefix in prefixes:
        async for ids in _scan_ids(client, prefix, batch):
            yield ids


async def audience_batches(
    client: AsyncRedis, cfg: PrecomputeConfig, now_ms: int
) -> AsyncIterator[list[int]]:
    if cfg.audience.all:
        async for ids in all_users(client, cfg.gateway, cfg.batch_size):
            yield ids
        return
    since = now_ms - int(cfg.audience.window_seconds * 1000)
    head = most_active(await served_counts(client, cfg.gateway.keys, since), cfg.audience)
    for start in range(0, len(head), cfg.batch_size):
        yield head[start : start + cfg.batch_size]


# --- computing and writing -----------------------------------------------------------------


async def compute_list(
    service: RecommendationService,
    variant: ResolvedVariant,
    user_id: int,
    top_n: int,
    computed_ms: int,
) -> PrecomputedList | str:
    """The user's stored list: the gateway's stages 1 to 3, the best ``top_n`` by score; or
    why there is none: Triton's failure (a fallback is not what the version ranks), or
    ``empty`` when no candidate passed the filters."""
    found = await service.candidate_stages(variant, user_id, {})
    if found.fallback is not None:
        return found.fallback
    if not len(found.scored):
        return "empty"
    best = rules.top_k(found.scored.ids, found.scored.scores, top_n)
    return PrecomputedList(
        variant.model_version,
        computed_ms,
        tuple(s.item_id for s in best),
        tuple(s.score for s in best),
    )


async def write_lists(
    client: AsyncRedis,
    keys: GatewayKeys,
    lists: Sequence[tuple[int, PrecomputedList]],
    max_age_s: float,
) -> None:
    """One pipeline per batch; each key expires ``maxAge`` after its list's time, when the
    gateway would stop serving it anyway."""
    pipe = client.pipeline(transaction=False)
    for user, stored in lists:
        expires = stored.computed_ms + int(max_age_s * 1000)
        pipe.set(keys.precomputed(stored.model_version, user), stored.to_json(), pxat=expires)
    await pipe.execute()


def _service(cfg: GatewayConfig, client: AsyncRedis, triton: TritonClient) -> RecommendationService:
    """The gateway's service, for its stages: its log writer is never started (stages 1 to 3
    log nothing) and its metrics are never exported."""
    store = GatewayStore.for_config(client, cfg)
    pool = serving_index_pool(cfg.storage_options, lambda _e, _u: None)
    unused_log = StreamWriter(client, cfg.keys.served, cfg.served_log_max_len, lambda *_: None)
    return RecommendationService(cfg, store, triton, pool, GatewayMetrics(), unused_log)


async def stable_variant(service: RecommendationService, client: AsyncRedis) -> ResolvedVariant:
    """The stable variant with its index loaded, resolved as the gateway resolves it (the
    index alias in Redis when it names this version's index)."""
    cfg = service.cfg
    raw_alias = await client.get(cfg.keys.index_alias)
    alias = IndexAlias.from_json(raw_alias) if raw_alias else None
    service.routing = Routing(cfg.routing, "config", alias)
    uris = wanted_indexes(service.routing)
    if not uris:
        raise BadInputError(
            "gateway.routing.stable.index: the stable version names no index and no index "
            "alias is published; build the version's index first"
        )
    service.pool.want(uris)
    await asyncio.gather(*service.pool.loading.values())
    variant = service.variant("stable")
    if variant is None:
        failed = "; ".join(f"{u}: {why}" for u, (_, why) in service.pool.failed.items())
        raise TransientError(f"could not load the stable version's index: {failed}")
    return variant


async def run(cfg: PrecomputeConfig, client: AsyncRedis) -> PrecomputeSummary:
    gw = cfg.gateway
    assert gw.precomputed is not None  # the config's validator requires it
    http = KeepAlivePool()
    service = _service(cfg.stages_config, client, TritonClient(http))
    variant = await stable_variant(service, client)
    seconds, micros = await client.time()
    computed_ms = int(seconds) * 1000 + int(micros) // 1000
    users = written = 0
    skipped: Counter[str] = Counter()
    limit = asyncio.Semaphore(cfg.concurrency)

    async def one(user: int) -> PrecomputedList | str:
        async with limit:
            return await compute_list(service, variant, user, cfg.top_n, computed_ms)

    started = time.monotonic()
    try:
        async for batch in audience_batches(client, cfg, computed_ms):
            lists = await asyncio.gather(*(one(u) for u in batch))
            kept = [
                (u, s) for u, s in zip(batch, lists, strict=True) if isinstance(s, PrecomputedList)
            ]
            await write_lists(client, gw.keys, kept, gw.precomputed.max_age_s)
            users += len(batch)
            written += len(kept)
            skipped.update(s for s in lists if isinstance(s, str))
    finally:
        await http.close()
    log.info(
        "%s: %d lists written for %d users (skipped: %s) in %.1fs",
        variant.model_version,
        written,
        users,
        dict(skipped) or "none",
        time.monotonic() - started,
    )
    return PrecomputeSummary(
        model_version=variant.model_version,
        users=users,
        written=written,
        skipped=sum(skipped.values()),
        skipped_by=dict(sorted(skipped.items())),
        computed_ms=computed_ms,
    )


async def _work(cfg: PrecomputeConfig) -> PrecomputeSummary:
    client = async_redis(
        cfg.gateway.redis_url,
        cluster=cfg.gateway.redis_cluster,
        password=redis_password(),
        socket_timeout_s=max(cfg.gateway.redis_timeout_s, 5.0),
    )
    try:
        return await run(cfg, client)
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        raise TransientError(f"gateway.redisUrl: cannot reach Redis: {exc}") from exc
    finally:
        await client.aclose()


def parse_precompute_config(raw: Any) -> PrecomputeConfig:
    return parse_config(PrecomputeConfig, raw, "precompute config")


def work(raw: dict[str, Any]) -> dict[str, Any]:
    cfg = parse_precompute_config(raw)
    return asyncio.run(_work(cfg)).to_wire()


def main(argv: list[str] | None = None) -> int:
    return run_entrypoint("precompute", work, argv)


if __name__ == "__main__":
    sys.exit(main())
