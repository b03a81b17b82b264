"""Reconcile a Recommender: its ModelVersions (create on triggers, prune history) and serving."""

from __future__ import annotations

import logging
from typing import Any

from recsys_operator import GROUP, VERSION
from recsys_operator.api.featureview import FeatureView
from recsys_operator.api.recommender import Recommender
from recsys_operator.conditions import now_rfc3339
from recsys_operator.controller import Context, Key
from recsys_operator.labels import RECOMMENDER_LABEL
from recsys_operator.metrics import DRIFT_RETRAINS, JOBS_STARTED, observe_drift
from recsys_operator.planning import drift as drift_planner
from recsys_operator.planning import recommender as planner
from recsys_operator.planning.jobstatus import JobOutcome, job_outcome, newest
from recsys_operator.planning.serving import (
    gateway_objects,
    history_job,
    routing_table,
    triton_objects,
)
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
API_VERSION = f"{GROUP}/{VERSION}"


def _available(deployment: dict[str, Any]) -> bool:
    want = deployment.get("spec", {}).get("replicas", 1)
    return bool(int(deployment.get("status", {}).get("availableReplicas", 0) or 0) >= want)


async def reconcile(ctx: Context, ns: str, name: str) -> float | None:
    obj = ctx.cache.get(API_VERSION, "Recommender", name, ns)
    if obj is None or obj["metadata"].get("deletionTimestamp"):
        return None
    rec = Recommender.model_validate(obj)
    now_dt = ctx.now()
    now = now_rfc3339()
    mv_objs = ctx.cache.list(
        API_VERSION,
        "ModelVersion",
        ns,
        where=lambda m: (m.get("spec") or {}).get("recommenderRef", {}).get("name") == name,
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
    plan = planner.plan(obj, rec, versions, now_dt, drift.retrain)

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

    serving_ready = False
    if plan.stable:
        by_name = {m["metadata"]["name"]: m for m in mv_objs}
        indexes = {v.name: v.index_name for v in versions}
        triton_image, workloads_image = (
            ctx.images.get("triton", ""),
            ctx.images.get("workloads", ""),
        )
        try:
            ready = True
            for version in filter(None, (plan.stable, plan.canary)):
                uri = (by_name[version].get("status") or {}).get("artifactUri", "")
                for child in triton_objects(rec, obj, version, uri, triton_image, workloads_image):
                    applied = await ensure(ctx, child)
                    if child["kind"] == "Deployment":
                        ready = ready and _available(applied)
            table = routing_table(rec, plan.stable, plan.canary, plan.canary_weight, indexes)
            views = _feature_views(ctx, rec)
            for child in gateway_objects(rec, obj, table, ctx.images.get("gateway", ""), views):
                applied = await ensure(ctx, child)
                if child["kind"] == "Deployment":
                    ready = ready and _available(applied)
            serving_ready = ready
            await _remove_unused_tritons(ctx, ns, name, {plan.stable, plan.canary})
            stable_uri = (by_name[plan.stable].get("status") or {}).get("artifactUri", "")
            for child in drift_planner.drift_objects(
                rec, obj, workloads_image, plan.stable, stable_uri
            ):
                await ensure(ctx, child)
        except Refusal as refusal:
            plan.problems.append(planner.Problem("ServingObjectRefused", str(refusal)))

    if rec.spec.drift is None or not plan.stable:  # checks only judge a serving version
        for api_version, kind in (("batch/v1", "CronJob"), ("v1", "ConfigMap")):
            await remove(ctx, api_version, kind, drift_planner.drift_name(rec), ns)
    await _seed_history(ctx, obj, rec, plan.problems)

    previous = obj.get("status") or {}
    new_status = planner.status(rec, previous, plan, versions, serving_ready, blocked, now, drift)
    observe_drift(ns, name, drift.status)
    if await write_status(ctx, obj, new_status):
        for type_, reason, message in drift.events:
            await post_event(ctx.kube, obj, type_, reason, message)
        if drift.retrain and drift.retrain != (previous_drift or {}).get("retrainTrigger"):
            DRIFT_RETRAINS.inc()
        if new_status.stable_version != previous.get("stableVersion"):
            await post_event(
                ctx.kube,
                obj,
                "Normal",
                "Promoted",
                f"{new_status.stable_version} is the stable version",
            )
        # Versions whose role changed learn it from this status.
        for known in versions:
            ctx.queue.add(Key("ModelVersion", ns, known.name))
    if plan.next_training is not None:
        return max(1.0, (plan.next_training - now_dt).total_seconds())
    return None


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


async def _remove_unused_tritons(ctx: Context, ns: str, rec: str, keep: set[str | None]) -> None:
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
                ("apps/v1", "Deployment"),
                ("v1", "Service"),
                ("v1", "ConfigMap"),
            ):
                await remove(ctx, api_version, kind, dep["metadata"]["name"], ns)


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
