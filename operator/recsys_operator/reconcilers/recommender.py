"""Reconcile a Recommender: its ModelVersions (create on triggers, prune history) and serving."""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

from recsys_contract.formats import parse_duration
from recsys_contract.gateway import RoutingTable
from recsys_contract.keyspace import GatewayKeys, IndexAlias, store_name
from recsys_contract.online_client import AsyncRedis
from recsys_contract.traffic import buckets_between, closed, live
from recsys_operator import GROUP, VERSION, prometheus
from recsys_operator.api.featureview import FeatureView
from recsys_operator.api.recommender import (
    AnalysisResult,
    MetricResult,
    Recommender,
    RolloutStatus,
    ShadowStatus,
)
from recsys_operator.api.serving import AnalysisMetric
from recsys_operator.conditions import now_rfc3339
from recsys_operator.controller import BY_RECOMMENDER, Context, Key
from recsys_operator.diffing import needs_apply, stamped
from recsys_operator.kube import ApiError
from recsys_operator.labels import RECOMMENDER_LABEL
from recsys_operator.metrics import (
    ANALYSIS_CHECKS,
    DRIFT_RETRAINS,
    JOBS_STARTED,
    ROLLOUT_OUTCOMES,
    ROLLOUTS_ENDED,
    ROUTING_PUBLISHED,
    observe_drift,
)
from recsys_operator.online import OnlineStoreUnavailable, counts, heartbeats, publish_routing
from recsys_operator.planning import analysis, finalizers
from recsys_operator.planning import drift as drift_planner
from recsys_operator.planning import logjoin as logjoin_planner
from recsys_operator.planning import precompute as precompute_planner
from recsys_operator.planning import recommender as planner
from recsys_operator.planning import rollout as machine
from recsys_operator.planning.finalizers import CLEANUP_FINALIZER
from recsys_operator.planning.jobstatus import JobOutcome, job_outcome, newest
from recsys_operator.planning.serving import (
    HPA,
    PDB,
    batch_mode,
    gateway_name,
    gateway_objects,
    history_job,
    routing_table,
    triton_name,
    triton_objects,
    unwanted_scaling,
)
from recsys_operator.reconcilers import teardown
from recsys_operator.reconcilers.common import (
    Refusal,
    ensure,
    ensure_created,
    post_event,
    remove,
    summary_of,
    write_status,
)
from recsys_operator.reconcilers.modelversion import feature_sources

log = logging.getLogger(__name__)
#: The field manager that holds a Deployment's ``replicas`` while an autoscaler takes over.
REPLICAS_HANDOVER_MANAGER = "recsys-operator-handover"
#: A check waits no longer than this for each Prometheus query.
PROMETHEUS_TIMEOUT_SECONDS = 5.0
API_VERSION = f"{GROUP}/{VERSION}"


def _available(deployment: dict[str, Any]) -> bool:
    want = deployment.get("spec", {}).get("replicas", 1)
    return bool(int(deployment.get("status", {}).get("availableReplicas", 0) or 0) >= want)


async def reconcile(ctx: Context, ns: str, name: str) -> float | None:
    obj = ctx.cache.get(API_VERSION, "Recommender", name, ns)
    if obj is None:
        return None
    if obj["metadata"].get("deletionTimestamp"):
        return await teardown.tear_down_recommender(ctx, obj)
    rec = Recommender.model_validate(obj)
    now_dt = ctx.now()
    now = now_rfc3339()
    mv_objs = ctx.cache.list(
        API_VERSION,
        "ModelVersion",
        ns,
        indexed=(BY_RECOMMENDER, name),
    )
    versions = [planner.version_of(m) for m in mv_objs]
    refs = rec.spec.feature_views
    ctx.depends_on(
        Key("Recommender", ns, name),
        [Key("FeatureView", ns, r.name) for r in [*(refs.user or []), *(refs.item or [])]]
        if refs
        else [],
    )
    _, blocked = feature_sources(ctx, rec)
    trained = frozenset(v.trigger for v in versions if v.trigger)
    previous_drift = (obj.get("status") or {}).get("drift")
    drift = drift_planner.decide(
        rec, previous_drift, await _drift_check(ctx, ns, name), now_dt, trained
    )
    online = await _online(ctx, rec)
    keys = GatewayKeys.of(store_name(ns, name), rec.spec.stores.redis.key_prefix)
    previous_rollout = RolloutStatus.model_validate((obj.get("status") or {}).get("rollout") or {})
    check, shadow = None, None
    if machine.analysis_due(rec.spec.serving.rollout, previous_rollout, now_dt):
        check, shadow = await _analyse(ctx, online, keys, rec, previous_rollout, now_dt)
    ready, unready_why = await _ready_versions(ctx, online, keys, rec, versions)
    views = _feature_views(ctx, rec)
    hold = planner.stale_features(rec, views, now_dt)
    unfit = planner.unfit_versions(rec, views, versions)
    plan = planner.plan(
        obj, rec, versions, now_dt, drift.retrain, check, ready, hold, shadow, unfit
    )
    if unready_why:
        plan.problems.append(planner.Problem("OnlineStoreUnavailable", unready_why))

    for mv in plan.create:
        _, created = await ensure_created(ctx, mv)
        if created:
            reason = mv["spec"]["reason"]
            await post_event(
                ctx.kube,
                obj,
                "Normal",
                "TrainingRequested",
                f"created ModelVersion {mv['metadata']['name']} ({reason})",
            )
    for old in plan.delete:
        if await remove(ctx, API_VERSION, "ModelVersion", old, ns):
            await post_event(
                ctx.kube,
                obj,
                "Normal",
                "VersionPruned",
                f"deleted ModelVersion {old} (revisionHistoryLimit)",
            )

    serving_ready = published = False
    routing = plan.routing
    if routing is not None:
        by_name = {m["metadata"]["name"]: m for m in mv_objs}
        indexes = {v.name: v.index_name for v in versions}
        triton_image, trainer_image, workloads_image = (
            ctx.images.get("triton", ""),
            ctx.images.get("trainer", ""),  # the repository builder imports torch
            ctx.images.get("workloads", ""),
        )
        try:
            ready_now = True
            for version in sorted(routing.versions):
                uri = (by_name[version].get("status") or {}).get("artifactUri", "")
                for child in triton_objects(rec, obj, version, uri, triton_image, trainer_image):
                    applied = await _ensure_served(ctx, child)
                    if child["kind"] == "Deployment" and version == routing.stable:
                        ready_now = ready_now and _available(applied)
                for api_version, kind in unwanted_scaling(rec.spec.serving.triton):
                    await remove(ctx, api_version, kind, triton_name(rec, version), ns)
            table = routing_table(rec, routing, indexes)
            for child in gateway_objects(rec, obj, table, ctx.images.get("gateway", ""), views):
                applied = await _ensure_served(ctx, child)
                if child["kind"] == "Deployment":
                    ready_now = ready_now and _available(applied)
            for api_version, kind in unwanted_scaling(rec.spec.serving.gateway):
                await remove(ctx, api_version, kind, gateway_name(rec), ns)
            serving_ready = ready_now
            ctx.kube.fence()  # the routing table is a write too: only the leader's goes out
            published = await _publish(
                online, keys, table, indexes.get(routing.stable), plan.problems
            )
            # Batch mode keeps none: switching from Hybrid removes every version's Triton
            keep = set() if batch_mode(rec) else routing.versions
            await _remove_unused_tritons(ctx, ns, name, keep)
            stable_uri = (by_name[routing.stable].get("status") or {}).get("artifactUri", "")
            for child in drift_planner.drift_objects(
                rec, obj, workloads_image, routing.stable, stable_uri
            ):
                await ensure(ctx, child)
            for child in logjoin_planner.logjoin_objects(rec, obj, workloads_image):
                await ensure(ctx, child)
            batch = precompute_planner.BatchImages(stable_uri, triton_image, trainer_image)
            await _precompute(ctx, obj, rec, table, views, workloads_image, batch)
        except Refusal as refusal:
            plan.problems.append(planner.Problem("ServingObjectRefused", str(refusal)))

    wrote = published or (
        rec.spec.stores.artifacts.retention_policy == "Delete" and bool(mv_objs or plan.create)
    )
    if finalizers.needs_finalizer(obj, CLEANUP_FINALIZER, wrote):
        # Redis answered: the keyspace is written from now on (and, with Delete, the versions'
        # Jobs write artifacts). Keep the Recommender until they are cleaned (planning.cleanup).
        obj = await ctx.kube.apply(finalizers.finalizer_apply(obj, CLEANUP_FINALIZER, keep=True))
        ctx.cache.upsert(obj)
    if rec.spec.drift is None or not plan.stable:  # checks only judge a serving version
        for api_version, kind in (("batch/v1", "CronJob"), ("v1", "ConfigMap")):
            await remove(ctx, api_version, kind, drift_planner.drift_name(rec), ns)
    if not logjoin_planner.logged_enabled(rec) or routing is None:  # it joins what is served
        for api_version, kind in (("batch/v1", "CronJob"), ("v1", "ConfigMap")):
            await remove(ctx, api_version, kind, logjoin_planner.logjoin_name(rec), ns)
    if rec.spec.serving.precompute is None or routing is None:  # lists of a serving version
        for api_version, kind in (("batch/v1", "CronJob"), ("v1", "ConfigMap")):
            await remove(ctx, api_version, kind, precompute_planner.precompute_name(rec), ns)
    await _remove_stale_precompute_jobs(ctx, rec, routing.stable if routing else None)
    await _seed_history(ctx, obj, rec, plan.problems)

    previous = obj.get("status") or {}
    new_status = planner.status(
        rec,
        previous,
        plan,
        versions,
        serving_ready,
        blocked,
        now,
        drift,
        planner.feature_view_states(rec, views, now_dt),
    )
    observe_drift(ns, name, drift.status)
    if await write_status(ctx, obj, new_status):
        for type_, reason, message in drift.events:
            await post_event(ctx.kube, obj, type_, reason, message)
        if drift.retrain and drift.retrain != (previous_drift or {}).get("retrainTrigger"):
            DRIFT_RETRAINS.inc()
        for type_, reason, message in plan.rollout.events if plan.rollout else []:
            await post_event(ctx.kube, obj, type_, reason, message)
            if reason in ROLLOUT_OUTCOMES:  # counted once: events follow a status change
                ROLLOUTS_ENDED.labels(ns, name, ROLLOUT_OUTCOMES[reason]).inc()
        # A new stable is the baseline the next versions' gates compare with.
        for known in versions:
            ctx.queue.add(Key("ModelVersion", ns, known.name))
    waits = [plan.rollout.requeue_after] if plan.rollout and plan.rollout.requeue_after else []
    if plan.next_training is not None:
        waits.append(max(1.0, (plan.next_training - now_dt).total_seconds()))
    return min(waits) if waits else None


async def _online(ctx: Context, rec: Recommender) -> AsyncRedis | OnlineStoreUnavailable:
    """The Recommender's Redis client, or why there is none."""
    store = rec.spec.stores.redis
    try:
        return await ctx.online.client(store, rec.metadata.namespace or "default")
    except OnlineStoreUnavailable as exc:
        return exc
    except ApiError as exc:
        return OnlineStoreUnavailable(
            f"reading spec.stores.redis.passwordSecretRef: {exc} (the chart grants the operator "
            "the Secrets listed in rbac.redisPasswordSecrets)"
        )


async def _publish(
    online: AsyncRedis | OnlineStoreUnavailable,
    keys: GatewayKeys,
    table: RoutingTable,
    stable_index: str | None,
    problems: list[planner.Problem],
) -> bool:
    """The routing table into Redis, where every gateway replica reads it within a poll;
    whether Redis answered."""
    if isinstance(online, OnlineStoreUnavailable):
        problems.append(planner.Problem("RoutingNotPublished", f"routing table: {online}"))
        return False
    alias = IndexAlias(stable_index, table.stable.model_version) if stable_index else None
    try:
        if await publish_routing(online, keys, table, alias):
            ROUTING_PUBLISHED.inc()
    except OnlineStoreUnavailable as exc:
        problems.append(planner.Problem("RoutingNotPublished", f"routing table: {exc}"))
        return False
    return True


async def _ready_versions(
    ctx: Context,
    online: AsyncRedis | OnlineStoreUnavailable,
    keys: GatewayKeys,
    rec: Recommender,
    versions: list[planner.Version],
) -> tuple[frozenset[str], str | None]:
    """Versions that can take traffic now: their Triton Deployment is Available and every live
    gateway replica reports their index loaded and their Triton reachable (no live replica:
    nobody to break). In Batch mode there is no Triton to wait for: the index alone. When
    Redis cannot be read, none, and why."""
    ns, name = rec.metadata.namespace or "default", rec.metadata.name
    available = {
        d["metadata"]["labels"].get("recsys.dev/model-version")
        for d in ctx.cache.list(
            "apps/v1",
            "Deployment",
            ns,
            {RECOMMENDER_LABEL: name, "app.kubernetes.io/component": "triton"},
        )
        if _available(d)
    }
    if batch_mode(rec):
        available = {v.name for v in versions}
    candidates = [v for v in versions if v.name in available and v.index_name]
    if not candidates:
        return frozenset(), None
    if isinstance(online, OnlineStoreUnavailable):
        return frozenset(), f"gateway heartbeats: {online}"
    try:
        beats = live(await heartbeats(online, keys), time.time())
    except OnlineStoreUnavailable as exc:
        return frozenset(), f"gateway heartbeats: {exc}"
    return frozenset(
        v.name
        for v in candidates
        if all(v.index_name in b.loaded and v.name in b.reachable for b in beats.values())
    ), None


async def _prometheus_metric(
    ctx: Context,
    rec: Recommender,
    previous: RolloutStatus,
    metric: AnalysisMetric,
    interval: str,
) -> analysis.MetricResult:
    """A metric read from Prometheus: the template rendered and asked for each variant."""
    assert metric.prometheus is not None
    window = prometheus.prometheus_duration(parse_duration(metric.interval or interval))
    spec = analysis.MetricSpec(metric.name, metric.threshold_range.min, metric.threshold_range.max)
    values: dict[str, float | None] = {}
    try:
        for variant, version in (("canary", previous.canary), ("stable", previous.stable)):
            promql = prometheus.render(
                metric.prometheus.query,
                {
                    "variant": variant,
                    "modelVersion": version or "",
                    "interval": window,
                    "namespace": rec.metadata.namespace or "default",
                    "recommender": rec.metadata.name,
                },
            )
            values[variant] = await prometheus.query(
                ctx.http, metric.prometheus.address, promql, PROMETHEUS_TIMEOUT_SECONDS
            )
    except (prometheus.PrometheusError, ValueError) as exc:
        return analysis.MetricResult(
            metric.name, None, None, spec.min, spec.max, "Inconclusive", f"Prometheus: {exc}"
        )
    return analysis.provided(spec, values["canary"], values.get("stable"), "Prometheus")


async def _analyse(
    ctx: Context,
    online: AsyncRedis | OnlineStoreUnavailable,
    keys: GatewayKeys,
    rec: Recommender,
    previous: RolloutStatus,
    now: dt.datetime,
) -> tuple[AnalysisResult, ShadowStatus | None]:
    """One analysis check of the canary against the stable, from the gateways' counters, and
    what the canary's shadow answers add up to since the rollout began (None before any)."""
    spec = rec.spec.serving.rollout.analysis
    at = now.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    assert previous.canary
    assert previous.stable
    metrics = [
        analysis.MetricSpec(
            name=m.name,
            min=m.threshold_range.min,
            max=m.threshold_range.max,
            event_type=m.event_type or ("click" if m.name == "click-through-rate" else "purchase"),
        )
        for m in spec.metrics
        if m.prometheus is None
    ]
    asked = [m for m in spec.metrics if m.prometheus is not None]
    end = now.timestamp()
    start = (
        dt.datetime.fromisoformat(previous.start_time.replace("Z", "+00:00")).timestamp()
        if previous.start_time
        else end
    )
    window_s: dict[str, float] = {
        m.name: parse_duration(m.interval or spec.interval) for m in spec.metrics
    }
    attribution = parse_duration(spec.attribution_window)
    closed_buckets = [b for b in buckets_between(start, end) if closed(b, end, attribution)]
    results: list[analysis.MetricResult] = []
    shadow = None
    try:
        if isinstance(online, OnlineStoreUnavailable):
            raise online
        since = await counts(online, keys, previous.canary, buckets_between(start, end))
        if since.shadow_requests:
            quantile = since.shadow_latency_quantile_ms(analysis.DURATION_QUANTILE)
            shadow = ShadowStatus(
                requests=since.shadow_requests,
                errors=since.shadow_errors,
                overlap=round(100 * since.shadow_overlap, 2)
                if since.shadow_overlap is not None
                else None,
                rank_correlation=round(since.shadow_rank, 4)
                if since.shadow_rank is not None
                else None,
                p99_ms=quantile,
            )
        closed_counts = {
            variant: await counts(online, keys, version, closed_buckets)
            for variant, version in (("canary", previous.canary), ("stable", previous.stable))
        }
        for seconds in sorted(set(window_s.values())):
            buckets = buckets_between(max(start, end - seconds), end)
            window = {
                variant: await counts(online, keys, version, buckets)
                for variant, version in (("canary", previous.canary), ("stable", previous.stable))
            }
            results.extend(
                analysis.evaluate(
                    [m for m in metrics if window_s[m.name] == seconds],
                    window=window,
                    closed=closed_counts,
                    min_requests=spec.min_requests,
                    min_impressions=spec.min_impressions,
                )
            )
    except OnlineStoreUnavailable as exc:
        results = [
            analysis.MetricResult(
                m.name, None, None, m.min, m.max, "Inconclusive", f"counters unreadable: {exc}"
            )
            for m in metrics
        ]
    for m in asked:
        results.append(await _prometheus_metric(ctx, rec, previous, m, spec.interval))
    order = {m.name: i for i, m in enumerate(spec.metrics)}
    results.sort(key=lambda r: order[r.name])
    ANALYSIS_CHECKS.labels(analysis.overall(results)).inc()
    return (
        AnalysisResult(
            time=at,
            verdict=analysis.overall(results),
            metrics=[
                MetricResult(
                    name=r.name,
                    canary=r.canary,
                    stable=r.stable,
                    min=r.min,
                    max=r.max,
                    verdict=r.verdict,
                    message=r.message[:1024],
                )
                for r in results
            ],
        ),
        shadow,
    )


async def _drift_check(ctx: Context, ns: str, name: str) -> JobOutcome | None:
    """The newest finished drift check Job, with its summary."""
    jobs = ctx.cache.list(
        "batch/v1",
        "Job",
        ns,
        {RECOMMENDER_LABEL: name, "app.kubernetes.io/component": drift_planner.COMPONENT},
    )
    job = newest([j for j in jobs if job_outcome(j, None).finished])
    if job is None:
        return None
    return job_outcome(job, await summary_of(ctx.kube, ns, job))


def _feature_views(ctx: Context, rec: Recommender) -> dict[str, FeatureView]:
    """The Recommender's FeatureViews found in the cache, by name: the gateway reads each under
    its own key prefix."""
    refs = rec.spec.feature_views
    found: dict[str, FeatureView] = {}
    for ref in [*(refs.user or []), *(refs.item or [])] if refs else []:
        obj = ctx.cache.get(API_VERSION, "FeatureView", ref.name, rec.metadata.namespace)
        if obj is not None:
            found[ref.name] = FeatureView.model_validate(obj)
    return found


async def _ensure_served(ctx: Context, child: dict[str, Any]) -> dict[str, Any]:
    """``ensure``, with the pod count handed to the autoscaler first where one takes over.

    A Deployment applied without ``replicas`` loses the field if the operator was its only
    manager, and the apiserver defaults it to one pod until the autoscaler scales back up.
    Applying the current count under a second manager first keeps it owned (Kubernetes'
    documented ownership transfer), so turning autoscaling on never drops pods; the
    autoscaler's next change of the count takes it over from that manager.
    """
    if child["kind"] == "Deployment" and "replicas" not in child["spec"]:
        meta = child["metadata"]
        observed = ctx.cache.get("apps/v1", "Deployment", meta["name"], meta["namespace"])
        replicas = ((observed or {}).get("spec") or {}).get("replicas")
        if replicas is not None and needs_apply(stamped(child), observed):
            await ctx.kube.apply(
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                    "spec": {"replicas": replicas},
                },
                field_manager=REPLICAS_HANDOVER_MANAGER,
            )
    return await ensure(ctx, child)


async def _remove_unused_tritons(ctx: Context, ns: str, rec: str, keep: set[str]) -> None:
    """Triton Deployments of versions that no longer serve (their Services and repository
    ConfigMaps go the same way)."""
    for dep in ctx.cache.list(
        "apps/v1",
        "Deployment",
        ns,
        {RECOMMENDER_LABEL: rec, "app.kubernetes.io/component": "triton"},
    ):
        version = dep["metadata"]["labels"].get("recsys.dev/model-version")
        if version not in keep:
            for api_version, kind in (
                HPA,
                PDB,
                ("apps/v1", "Deployment"),
                ("v1", "Service"),
                ("v1", "ConfigMap"),
            ):
                await remove(ctx, api_version, kind, dep["metadata"]["name"], ns)


async def _precompute(
    ctx: Context,
    obj: dict[str, Any],
    rec: Recommender,
    table: RoutingTable,
    views: dict[str, FeatureView],
    image: str,
    batch: precompute_planner.BatchImages,
) -> None:
    """The precompute CronJob for the stable version, and its Job run at once when the
    version has just become stable (``planning.precompute``); ``batch``: what Batch mode's
    pods run their own Triton from."""
    plan = precompute_planner.precompute_plan(rec, obj, image, table, views, batch)
    if plan is None:
        return
    await ensure(ctx, plan.config_map)
    await ensure(ctx, plan.cron_job)
    await ensure(ctx, plan.now.config_map)
    _, created = await ensure_created(ctx, plan.now.job)
    if created:
        JOBS_STARTED.labels("precompute").inc()
        await post_event(
            ctx.kube,
            obj,
            "Normal",
            "PrecomputeStarted",
            f"started Job {plan.now.job['metadata']['name']}: the head's lists for "
            f"{table.stable.model_version}",
        )


async def _remove_stale_precompute_jobs(ctx: Context, rec: Recommender, stable: str | None) -> None:
    """The versions' precompute Jobs (and their ConfigMaps) that no longer serve a purpose."""
    ns = rec.metadata.namespace or "default"
    selector = {
        RECOMMENDER_LABEL: rec.metadata.name,
        "app.kubernetes.io/component": precompute_planner.COMPONENT,
    }
    jobs = [
        j["metadata"]["name"]
        for j in ctx.cache.list("batch/v1", "Job", ns, selector)
        if "recsys.dev/model-version" in (j["metadata"].get("labels") or {})
    ]
    for name in precompute_planner.stale_jobs(rec, jobs, stable):
        for api_version, kind in (("batch/v1", "Job"), ("v1", "ConfigMap")):
            await remove(ctx, api_version, kind, name, ns)


async def _seed_history(
    ctx: Context, obj: dict[str, Any], rec: Recommender, problems: list[planner.Problem]
) -> None:
    """The Job that loads users' histories into the gateway's store, once per source."""
    plan = history_job(rec, obj, ctx.images.get("workloads", ""))
    try:
        await ensure(ctx, plan.config_map)
        _, created = await ensure_created(ctx, plan.job)
    except Refusal as refusal:
        problems.append(planner.Problem("HistoryJobRefused", str(refusal)))
        return
    if created:
        JOBS_STARTED.labels("history").inc()
        await post_event(
            ctx.kube,
            obj,
            "Normal",
            "HistorySeeding",
            f"started Job {plan.job['metadata']['name']}: users' recent items from "
            "spec.interactions into the gateway's history",
        )
