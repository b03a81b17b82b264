"""Reconcile a ModelVersion: one lifecycle step per pass (planning.modelversion decides)."""

from __future__ import annotations

import logging
from typing import Any

from recsys_operator import GROUP, VERSION
from recsys_operator.api.featureview import FeatureView
from recsys_operator.api.modelversion import ModelVersion
from recsys_operator.api.recommender import FeatureViewRef, Recommender
from recsys_operator.conditions import now_rfc3339
from recsys_operator.controller import Context, Key
from recsys_operator.metrics import JOBS_FAILED, JOBS_STARTED
from recsys_operator.naming import child_name
from recsys_operator.planning import modelversion as planner
from recsys_operator.planning.jobstatus import JobOutcome, job_outcome
from recsys_operator.planning.recommender import WARM_START_ANNOTATION
from recsys_operator.planning.training import FeatureSources, JobPlan, index_job, training_job
from recsys_operator.reconcilers.common import (
    Refusal,
    ensure,
    ensure_created,
    post_event,
    summary_of,
    write_status,
)

log = logging.getLogger(__name__)
API_VERSION = f"{GROUP}/{VERSION}"


async def _job(ctx: Context, ns: str, name: str) -> JobOutcome | None:
    job = ctx.cache.get("batch/v1", "Job", name, ns)
    if job is None:
        return None
    return job_outcome(job, await summary_of(ctx.kube, ns, job))


def feature_sources(ctx: Context, rec: Recommender) -> tuple[FeatureSources, str | None]:
    """The parquet of the first user and item FeatureViews; a message when one is missing."""
    refs = rec.spec.feature_views
    found: dict[str, tuple[str, list[str]]] = {}
    for entity, lst in (
        ("user", refs.user if refs else None),
        ("item", refs.item if refs else None),
    ):
        if not lst:
            continue
        ref: FeatureViewRef = lst[0]
        obj = ctx.cache.get(API_VERSION, "FeatureView", ref.name, rec.metadata.namespace)
        if obj is None:
            return FeatureSources(), (
                f"FeatureView {ref.name} (spec.featureViews.{entity}) does not exist; create it"
            )
        fv = FeatureView.model_validate(obj)
        names = ref.features or [f.name for f in fv.spec.features]
        found[entity] = (fv.spec.source.path, names)
    user, item = found.get("user"), found.get("item")
    return FeatureSources(
        users_uri=user[0] if user else None,
        user_features=user[1] if user else None,
        items_uri=item[0] if item else None,
        item_features=item[1] if item else None,
    ), None


async def _run(ctx: Context, plan: JobPlan, purpose: str, obj: dict[str, Any]) -> None:
    await ensure(ctx, plan.config_map)
    if plan.service is not None:
        await ensure(ctx, plan.service)
    _, created = await ensure_created(ctx, plan.job)
    if created:
        JOBS_STARTED.labels(purpose).inc()
        await post_event(
            ctx.kube,
            obj,
            "Normal",
            f"{purpose.capitalize()}JobCreated",
            f"created Job {plan.job['metadata']['name']}",
        )


async def reconcile(ctx: Context, ns: str, name: str) -> float | None:
    obj = ctx.cache.get(API_VERSION, "ModelVersion", name, ns)
    if obj is None or obj["metadata"].get("deletionTimestamp"):
        return None
    mv = ModelVersion.model_validate(obj)
    rec_name = mv.spec.recommender_ref.name
    rec_obj = ctx.cache.get(API_VERSION, "Recommender", rec_name, ns)
    rec = Recommender.model_validate(rec_obj) if rec_obj else None
    rec_status = (rec_obj or {}).get("status") or {}
    baseline = baseline_name = None
    stable_mv: ModelVersion | None = None
    stable = (rec_status.get("rollout") or {}).get("stable")
    if stable and stable != name:
        stable_obj = ctx.cache.get(API_VERSION, "ModelVersion", stable, ns)
        if stable_obj:
            baseline = (stable_obj.get("status") or {}).get("metrics")
            baseline_name = stable
            stable_mv = ModelVersion.model_validate(stable_obj)
    # a warm start reads the version serving when this one was made, even after a promotion
    warm_from = mv.metadata.annotations.get(WARM_START_ANNOTATION)
    if warm_from and warm_from != stable:
        warm_obj = ctx.cache.get(API_VERSION, "ModelVersion", warm_from, ns)
        stable_mv = ModelVersion.model_validate(warm_obj) if warm_obj else None
    phase = (obj.get("status") or {}).get("phase") or "Pending"
    train = await _job(ctx, ns, child_name(name, "train")) if phase == "Training" else None
    index = await _job(ctx, ns, child_name(name, "index")) if phase == "Indexing" else None
    sources, blocked = FeatureSources(), None
    if rec is not None and phase in ("Pending", "Training") and mv.spec.storage_uri is None:
        sources, blocked = feature_sources(ctx, rec)
    observed = planner.Observed(rec, train, index, baseline, baseline_name, blocked)
    now = now_rfc3339()
    decision = planner.decide(mv, observed, now)

    if rec is not None and decision.run is not None:
        try:
            if decision.run == "train":
                image = ctx.images.get("trainer", "")
                await _run(ctx, training_job(rec, mv, obj, image, sources, stable_mv), "train", obj)
            else:
                image = ctx.images.get("workloads", "")
                await _run(ctx, index_job(rec, mv, obj, image), "index", obj)
        except Refusal as refusal:
            decision = planner.fail(mv, "JobRejected", str(refusal), now)
    for outcome, purpose in ((train, "train"), (index, "index")):
        if outcome is not None and outcome.failed and decision.status.phase == "Failed":
            JOBS_FAILED.labels(purpose, outcome.reason).inc()
    if await write_status(ctx, obj, decision.status):
        for type_, reason, message in decision.events:
            await post_event(ctx.kube, obj, type_, reason, message)
        ctx.queue.add(Key("Recommender", ns, rec_name))  # a new phase may change serving
    return None
