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
from recsys_operator.metrics import JOBS_STARTED
from recsys_operator.planning import recommender as planner
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
    plan = planner.plan(obj, rec, versions, now_dt)

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
        except Refusal as refusal:
            plan.problems.append(planner.Problem("ServingObjectRefused", str(refusal)))

    await _seed_history(ctx, obj, rec, plan.problems)

    previous = obj.get("status") or {}
    new_status = planner.status(rec, previous, plan, versions, serving_ready, blocked, now)
    if await write_status(ctx, obj, new_status):
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
