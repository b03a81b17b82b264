"""The gateway's HTTP API (aiohttp) and its background work.

- ``GET /v1/recommendations?user_id=…&k=…`` (other query parameters are the request's context,
  logged with it): 200 with ``requestId``, ``variant``, ``modelVersion``, ``index``,
  ``items[{itemId, score}]``, ``fallback`` (null, or why fallback items were served) and
  ``timingsMs`` per stage; 400 naming the bad parameter; 503 when Redis is unavailable, no
  index is loaded yet, or ``maxInFlight`` requests are already being handled (with
  ``Retry-After``), always with a JSON ``error``.
- ``POST /v1/events``: one event object, a list, or ``{"events": [...]}``; each
  ``{requestId, itemId, type: click|purchase, userId?, timestamp? (ms)}``. 202 with the count;
  400 naming the bad field; 503 when Redis is unavailable. Clicks and purchases also mark the
  item as seen for the user (when ``userId`` is given), so the next response filters it.
  Events whose request id carries the impression's time are also counted for the variant's
  model version, in the same pipeline (``recsys_contract.traffic``).
- ``/healthz``: the process serves HTTP (liveness). ``/readyz``: the stable index is loaded
  and the last Redis poll succeeded (readiness); the body also names the replica, the
  routing it follows and the indexes loaded. ``/metrics``: Prometheus.

While the routing table's ``shadowPercent`` is above 0, a sample of the responses the stable
serves is also run through the canary in the background, never served (``shadow.py``).

Background: every ``pollInterval`` one pipeline reads the routing table and the index alias
from Redis (a table there wins over the config file's, which is re-read when the mounted file
changes); the index pool loads what the table and alias need (the standby's index included)
and swaps it in; a second pipeline writes the traffic counters counted since the last poll
and the replica's heartbeat (what it has loaded, what it routes), which the rollout waits on
before it moves traffic. A writer appends served responses to the log stream in batches.

Redis is a single server or a Redis Cluster (``redisCluster``): the client comes from
``recsys_contract.online_client``, and on a cluster its non-transactional pipelines are split
by node, so one request still costs one round trip to each node that holds one of its keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from recsys_contract import traffic
from recsys_contract.gateway import GatewayConfig, RoutingTable
from recsys_contract.keyspace import GatewayKeys, IndexAlias
from recsys_contract.online_client import async_redis
from recsys_workloads.gateway.config import parse_gateway_config, parse_routing
from recsys_workloads.gateway.http1 import KeepAlivePool
from recsys_workloads.gateway.index_pool import (
    serving_index_pool,
    single_threaded_search,
)
from recsys_workloads.gateway.metrics import GatewayMetrics
from recsys_workloads.gateway.pipeline import (
    NotReady,
    RecommendationService,
    Routing,
    variant_of_request,
    wanted_indexes,
)
from recsys_workloads.gateway.served_log import EVENT_TYPES, EventRecord, StreamWriter
from recsys_workloads.gateway.shadow import ShadowRunner, shadow_concurrency
from recsys_workloads.gateway.stats import TrafficStats, event_increments
from recsys_workloads.gateway.store import GatewayStore, StoreUnavailable, guarded
from recsys_workloads.gateway.triton_client import TritonClient
from recsys_workloads.runtime import BadInputError, load_config

log = logging.getLogger("recsys_workloads.gateway")

MAX_EVENTS_PER_POST = 1000


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


def _int_param(raw: str | None, name: str, default: int | None, low: int, high: int) -> int:
    if raw is None or raw == "":
        if default is None:
            raise BadInputError(f"{name}: required query parameter is missing")
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise BadInputError(f"{name}: {raw!r} is not an integer") from exc
    if not low <= value <= high:
        raise BadInputError(f"{name}: {value} is outside [{low}, {high}]")
    return value


def replica_id() -> str:
    """The replica's name in the heartbeats: the pod name (Kubernetes sets ``HOSTNAME`` to it),
    else one unique to this process on this host."""
    return os.environ.get("HOSTNAME") or f"{socket.gethostname()}-{os.getpid()}"


def parse_events(body: Any, now_ms: int) -> list[EventRecord]:
    """Validated events from a POST body; errors name the event and field."""
    if isinstance(body, dict) and "events" in body:
        body = body["events"]
    items = body if isinstance(body, list) else [body]
    if not items:
        raise BadInputError("events: the body holds no events")
    if len(items) > MAX_EVENTS_PER_POST:
        raise BadInputError(f"events: at most {MAX_EVENTS_PER_POST} per request, got {len(items)}")
    out = []
    for n, raw in enumerate(items):
        where = f"events[{n}]"
        if not isinstance(raw, dict):
            raise BadInputError(f"{where}: must be an object")
        request_id = raw.get("requestId")
        if not isinstance(request_id, str) or variant_of_request(request_id) is None:
            raise BadInputError(
                f"{where}.requestId: must be the requestId of a recommendation response"
            )
        kind = raw.get("type")
        if kind not in EVENT_TYPES:
            raise BadInputError(f"{where}.type: must be one of {', '.join(EVENT_TYPES)}")
        item, user, ts = raw.get("itemId"), raw.get("userId"), raw.get("timestamp", now_ms)
        if not isinstance(item, int) or isinstance(item, bool):
            raise BadInputError(f"{where}.itemId: must be an integer item id")
        if user is not None and (not isinstance(user, int) or isinstance(user, bool)):
            raise BadInputError(f"{where}.userId: must be an integer user id")
        if not isinstance(ts, int) or isinstance(ts, bool) or ts <= 0:
            raise BadInputError(f"{where}.timestamp: must be milliseconds since the epoch")
        out.append(EventRecord(request_id, ts, str(kind), item, user))
    return out


class Gateway:
    def __init__(
        self,
        cfg: GatewayConfig,
        *,
        config_path: Path | None = None,
        redis_password: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.config_mtime = config_path.stat().st_mtime if config_path else None
        self.file_routing: RoutingTable = cfg.routing
        self.keys: GatewayKeys = cfg.keys
        self.metrics = GatewayMetrics()
        timeout = cfg.redis_timeout_s
        self.redis = async_redis(
            cfg.redis_url,
            cluster=cfg.redis_cluster,
            password=redis_password,
            socket_timeout_s=timeout,
            connect_timeout_s=timeout,
            retry=Retry(NoBackoff(), 1),
        )
        self.store = GatewayStore.for_config(self.redis, cfg)
        self.pool = serving_index_pool(cfg.storage_options, self._index_event)
        self.served = StreamWriter(
            self.redis, self.keys.served, cfg.served_log_max_len, self._dropped(self.keys.served)
        )
        self.stats = TrafficStats(self.keys, self.metrics.stats_dropped.inc)
        self.replica = replica_id()
        self.triton_http = KeepAlivePool()
        self.triton = TritonClient(self.triton_http)
        #: model versions whose Triton answered this replica's last readiness probe
        self.reachable: set[str] = set()
        self.service: RecommendationService | None = None
        self.shadow: ShadowRunner | None = None
        self.redis_ok = False
        #: recommendation requests being handled now (``maxInFlight``)
        self.in_flight = 0
        self.poller: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, _app: web.Application | None = None) -> None:
        single_threaded_search()
        self.service = RecommendationService(
            self.cfg,
            self.store,
            self.triton,
            self.pool,
            self.metrics,
            self.served,
        )
        self.shadow = ShadowRunner(
            self.service, self.stats, self.metrics, shadow_concurrency(self.cfg.max_in_flight)
        )
        self.served.start()
        await self.poll_once()
        self.poller = asyncio.create_task(self._poll_forever())

    async def stop(self, _app: web.Application | None = None) -> None:
        if self.poller is not None:
            self.poller.cancel()
            await asyncio.gather(self.poller, return_exceptions=True)
        if self.shadow is not None:
            await self.shadow.close()
        if self.service is not None:
            await self.report(final=True)
        await self.pool.close()
        with contextlib.suppress(Exception):
            await self.served.close()
        await self.triton_http.close()
        await self.redis.aclose()

    def _index_event(self, event: str, uri: str) -> None:
        self.metrics.index_events.labels(event).inc()
        loaded = self.pool.loaded.get(uri)
        if loaded is not None:
            self.metrics.index_items.labels(uri).set(loaded.item_count)

    def _dropped(self, stream: str) -> Any:
        def count(reason: str, n: int) -> None:
            self.metrics.log_dropped.labels(stream, reason).inc(n)

        return count

    # --- routing and alias -----------------------------------------------------------------

    def _reread_config_file(self) -> None:
        if self.config_path is None:
            return
        try:
            mtime = self.config_path.stat().st_mtime
            if mtime == self.config_mtime:
                return
            self.config_mtime = mtime
            self.file_routing = parse_routing(json.loads(self.config_path.read_text())["routing"])
        except (OSError, ValueError, KeyError, BadInputError) as exc:
            log.error(
                "config file %s: keeping the previous routing table: %s", self.config_path, exc
            )

    async def poll_once(self) -> None:
        """Read the routing table and index alias; take them into use; load indexes."""
        assert self.service is not None
        self._reread_config_file()
        current = self.service.routing
        table, source, alias = self.file_routing, "config", current.alias
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.get(self.keys.routing)
            pipe.get(self.keys.index_alias)
            raw_table, raw_alias = await guarded(pipe.execute())
            self.redis_ok = True
        except StoreUnavailable as exc:
            if self.redis_ok:
                log.warning("Redis poll failed: %s", exc)
            self.redis_ok = False
            raw_table, raw_alias, table, source = None, None, current.table, current.source
        else:
            alias = None
            if raw_alias:
                try:
                    alias = IndexAlias.from_json(raw_alias)
                except ValueError as exc:
                    log.error(
                        "index alias %s: %s; keeping the previous one", self.keys.index_alias, exc
                    )
                    alias = current.alias
        if raw_table:
            try:
                table, source = parse_routing(json.loads(raw_table)), "redis"
            except (ValueError, BadInputError) as exc:
                log.error("routing table %s: %s; keeping the previous one", self.keys.routing, exc)
                table, source = current.table, current.source
        routing = Routing(table, source, alias)
        if routing != current:
            if routing.table != current.table:
                self.metrics.routing_updates.labels(source).inc()
                log.info("routing table from %s: %s", source, table.model_dump(by_alias=True))
            self.service.routing = routing
        self.metrics.redis_up.set(1 if self.redis_ok else 0)
        self.metrics.canary_weight.set(routing.table.canary_weight if routing.table.canary else 0)
        self.metrics.shadow_percent.set(routing.table.shadow_percent)
        self.pool.want(wanted_indexes(routing))
        await self.probe_tritons(routing.table)
        if self.redis_ok:  # else the write would only wait out the same outage
            await self.report()

    async def probe_tritons(self, table: RoutingTable) -> None:
        """Which of the table's versions this replica reaches Triton for, for the heartbeat. A
        version served without Triton (Batch mode) needs none to serve: it counts as
        reachable, so the operator's readiness check waits only for its index."""
        variants = [v for v in (table.stable, table.canary, table.standby) if v is not None]
        timeout = min(1.0, self.cfg.poll_interval_s)

        async def reachable(endpoint: str | None) -> bool:
            return endpoint is None or await self.triton.ready(endpoint, timeout)

        answers = await asyncio.gather(*(reachable(v.triton) for v in variants))
        self.reachable = {v.model_version for v, ok in zip(variants, answers, strict=True) if ok}

    def heartbeat(self) -> traffic.Heartbeat:
        assert self.service is not None
        table = self.service.routing.table
        return traffic.Heartbeat(
            at=time.time(),
            loaded=tuple(sorted(self.pool.loaded)),
            stable=table.stable.model_version,
            canary=table.canary.model_version if table.canary else None,
            canary_weight=table.canary_weight if table.canary else 0,
            reachable=tuple(sorted(self.reachable)),
        )

    async def report(self, *, final: bool = False) -> None:
        """Write the traffic counters counted since the last report and the heartbeat (the
        last report, at shutdown, removes the heartbeat instead) in one pipeline. Counts Redis
        did not take stay pending for the next report."""
        pipe = self.redis.pipeline(transaction=False)
        ops = self.stats.queue(pipe)
        if final:
            pipe.hdel(self.keys.replicas, self.replica)
        else:
            pipe.hset(self.keys.replicas, self.replica, self.heartbeat().to_json())
        try:
            replies = await guarded(pipe.execute(raise_on_error=False))
        except StoreUnavailable as exc:
            self.stats.restore(ops)
            self.metrics.stats_flush_failures.inc()
            log.warning("traffic counters and heartbeat not written: %s", exc)
            return
        refused = self.stats.settle(ops, replies[: len(ops)])
        if refused or isinstance(replies[-1], Exception):
            self.metrics.stats_flush_failures.inc()
            log.warning(
                "Redis refused %d traffic counter increments (kept) or the heartbeat: %s",
                refused,
                next((r for r in replies if isinstance(r, Exception)), None),
            )

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.poll_interval_s)
            try:
                await self.poll_once()
            except Exception:  # the poller must outlive any single bad poll
                log.exception("routing poll failed")

    # --- handlers --------------------------------------------------------------------------

    async def recommendations(self, request: web.Request) -> web.Response:
        assert self.service is not None
        q = request.query
        try:
            user_id = _int_param(q.get("user_id"), "user_id", None, -(2**63), 2**63 - 1)
            k = _int_param(q.get("k"), "k", self.cfg.top_k, 1, self.cfg.candidates)
        except BadInputError as exc:
            self.metrics.requests.labels("none", "", "400").inc()
            return _error(400, str(exc))
        limit = self.cfg.max_in_flight
        if limit and self.in_flight >= limit:
            self.metrics.requests.labels("none", "", "503").inc()
            self.metrics.errors.labels("none", "", "overloaded").inc()
            response = _error(503, f"overloaded: {limit} requests in flight (maxInFlight)")
            response.headers["Retry-After"] = "1"
            return response
        self.in_flight += 1
        try:
            return await self._recommend(user_id, k, q)
        finally:
            self.in_flight -= 1

    async def _recommend(self, user_id: int, k: int, q: Mapping[str, str]) -> web.Response:
        assert self.service is not None
        context = {key: value for key, value in q.items() if key not in ("user_id", "k")}
        try:
            variant = self.service.resolve(user_id)
        except NotReady as exc:
            self.metrics.requests.labels("none", "", "503").inc()
            self.metrics.errors.labels("none", "", "not-ready").inc()
            return _error(503, f"not ready: {exc}")
        labels = (variant.name, variant.model_version)
        served_ms, started = int(time.time() * 1000), time.perf_counter()
        try:
            rec = await self.service.recommend_for(variant, user_id, k, context, served_ms)
        except StoreUnavailable as exc:
            self.metrics.requests.labels(*labels, "503").inc()
            self.metrics.errors.labels(*labels, "redis").inc()
            self._count_error(variant.model_version, served_ms, started)
            return _error(503, f"online store (Redis) unavailable: {exc}")
        except Exception as exc:
            log.exception("recommendation for user %s failed", user_id)
            self.metrics.requests.labels(*labels, "500").inc()
            self.metrics.errors.labels(*labels, "internal").inc()
            self._count_error(variant.model_version, served_ms, started)
            return _error(500, f"internal error: {type(exc).__name__}")
        self.metrics.requests.labels(*labels, "200").inc()
        self.stats.request(
            variant.model_version,
            served_ms,
            rec.timings_ms["total"],
            fallback=rec.fallback is not None,
            impressions=len(rec.items),
        )
        response = _json(rec.to_json())
        if self.shadow is not None:  # runs once the response is sent (shadow.py)
            self.shadow.offer(rec, k)
        return response

    async def similar_items(self, request: web.Request) -> web.Response:
        """GET /v1/items/{id}/similar?k=&user_id=: an item page's "more like this". Served by
        the stable version, or by the given user's variant."""
        assert self.service is not None
        q = request.query
        try:
            item_id = _int_param(request.match_info["item_id"], "item id", None, 0, 2**63 - 1)
            user_id = (
                _int_param(q.get("user_id"), "user_id", None, -(2**63), 2**63 - 1)
                if q.get("user_id")
                else None
            )
            k = _int_param(q.get("k"), "k", self.cfg.top_k, 1, self.cfg.candidates)
        except BadInputError as exc:
            self.metrics.similar.labels("none", "", "400").inc()
            return _error(400, str(exc))
        variant = (
            self.service.resolve(user_id)
            if user_id is not None and self.service.ready()
            else self.service.variant("stable")
        )
        if variant is None:
            self.metrics.similar.labels("none", "", "503").inc()
            return _error(503, "not ready: the stable variant's index is not loaded yet")
        labels = (variant.name, variant.model_version)
        try:
            items = await self.service.similar_items(variant, item_id, k, user_id)
        except StoreUnavailable as exc:
            self.metrics.similar.labels(*labels, "503").inc()
            return _error(503, f"online store (Redis) unavailable: {exc}")
        if items is None:
            self.metrics.similar.labels(*labels, "404").inc()
            return _error(404, f"item {item_id} is not in {variant.model_version}'s index")
        self.metrics.similar.labels(*labels, "200").inc()
        return _json(
            {
                "itemId": item_id,
                "variant": variant.name,
                "modelVersion": variant.model_version,
                "items": [{"itemId": s.item_id, "score": round(float(s.score), 6)} for s in items],
            }
        )

    def _count_error(self, model_version: str, served_ms: int, started: float) -> None:
        latency_ms = (time.perf_counter() - started) * 1000
        self.stats.request(model_version, served_ms, latency_ms, error=True)

    async def events(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "body: must be JSON")
        try:
            events = parse_events(body, int(time.time() * 1000))
        except BadInputError as exc:
            return _error(400, str(exc))
        pipe = self.redis.pipeline(transaction=False)
        for e in events:
            pipe.xadd(
                self.keys.events,
                e.to_fields(),  # type: ignore[arg-type]
                maxlen=self.cfg.served_log_max_len,
                approximate=True,
            )
            if e.user_id is not None:
                pipe.zadd(self.keys.seen(e.user_id), {str(e.item_id): e.ts_ms})
        logged = len(pipe)
        assert self.service is not None
        counted = event_increments(
            events, self.service.routing.table, self.cfg.attribution_window_s
        )
        for (version, bucket, field), n in counted.items():
            pipe.hincrby(self.keys.stats(version, bucket), field, n)
        for version, bucket in {(v, b) for v, b, _ in counted}:
            pipe.expire(self.keys.stats(version, bucket), traffic.STATS_TTL_SECONDS)
        try:
            replies = await guarded(pipe.execute(raise_on_error=False))
        except StoreUnavailable as exc:
            return _error(503, f"online store (Redis) unavailable: {exc}")
        failed = [r for r in replies[:logged] if isinstance(r, Exception)]
        if failed:
            return _error(503, f"online store (Redis) refused the events: {failed[0]}")
        refused = [r for r in replies[logged:] if isinstance(r, Exception)]
        if refused:  # the events are logged: a counter Redis refused must not get them resent
            self.metrics.stats_flush_failures.inc()
            log.warning("Redis refused %d event counter writes: %s", len(refused), refused[0])
        for e in events:
            self.metrics.events.labels(variant_of_request(e.request_id) or "none", e.type).inc()
        return _json({"accepted": len(events)}, 202)

    async def healthz(self, _request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(self, _request: web.Request) -> web.Response:
        assert self.service is not None
        routing = self.service.routing
        standby = routing.table.standby
        body = {
            "replica": self.replica,
            "indexLoaded": self.service.ready(),
            "redis": self.redis_ok,
            "routingSource": routing.source,
            "stable": routing.table.stable.model_version,
            "canary": routing.table.canary.model_version if routing.table.canary else None,
            "canaryWeight": routing.table.canary_weight,
            "shadowPercent": routing.table.shadow_percent,
            "standby": None
            if standby is None
            else {
                "modelVersion": standby.model_version,
                "index": standby.index,
                "loaded": self.pool.get(standby.index) is not None,
            },
            "indexes": sorted(self.pool.loaded),
            "loading": sorted(self.pool.loading),
        }
        ok = body["indexLoaded"] and self.redis_ok
        return _json(body, 200 if ok else 503)

    async def metrics_page(self, _request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )


GATEWAY_KEY = web.AppKey("gateway", Gateway)


def create_app(gateway: Gateway) -> web.Application:
    app = web.Application()
    app[GATEWAY_KEY] = gateway
    app.router.add_get("/v1/recommendations", gateway.recommendations)
    app.router.add_get("/v1/items/{item_id}/similar", gateway.similar_items)
    app.router.add_post("/v1/events", gateway.events)
    app.router.add_get("/healthz", gateway.healthz)
    app.router.add_get("/readyz", gateway.readyz)
    app.router.add_get("/metrics", gateway.metrics_page)
    app.on_startup.append(gateway.start)
    app.on_cleanup.append(gateway.stop)
    return app


def gateway_from_file(path: Path, redis_password: str | None) -> Gateway:
    return Gateway(
        parse_gateway_config(load_config(path)), config_path=path, redis_password=redis_password
    )
