"""Reconcile a FeatureView: its config, CronJob and backfill Job, and a truthful status; on
deletion, its Redis keyspace (the finalizer ``KEYSPACE_FINALIZER``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from recsys_contract.keyspace import FeatureViewKeys
from recsys_operator.api.featureview import FeatureView
from recsys_operator.conditions import now_rfc3339
from recsys_operator.controller import Context
from recsys_operator.kube import ApiError
from recsys_operator.labels import FEATURE_VIEW_LABEL
from recsys_operator.metrics import FRESHNESS
from recsys_operator.planning import featureview as planner
from recsys_operator.planning import finalizers
from recsys_operator.planning.finalizers import KEYSPACE_FINALIZER
from recsys_operator.planning.jobstatus import JobOutcome, job_outcome, newest
from recsys_operator.reconcilers import teardown
from recsys_operator.reconcilers.common import (
    Refusal,
    ensure,
    ensure_created,
    post_event,
    summary_of,
    write_status,
)
from recsys_operator.workqueue import TerminalError

log = logging.getLogger(__name__)
API_VERSION = "recsys.dev/v1alpha1"


async def _outcome(ctx: Context, ns: str, job: Mapping[str, Any] | None) -> JobOutcome | None:
    if job is None:
        return None
    return job_outcome(job, await summary_of(ctx.kube, ns, job))


async def reconcile(ctx: Context, ns: str, name: str) -> float | None:
    obj = ctx.cache.get(API_VERSION, "FeatureView", name, ns)
    if obj is None or obj["metadata"].get("deletionTimestamp"):
        FRESHNESS.forget(ns, name)
        return None if obj is None else await _tear_down(ctx, obj, ns, name)
    previous = obj.get("status") or {}
    try:
        fv = FeatureView.model_validate(obj)
    except ValidationError as exc:  # the CRD admitted it, so this is an operator/CRD mismatch
        raise TerminalError(f"FeatureView {ns}/{name} does not parse: {exc}") from exc

    spec_error: planner.SpecError | None = None
    cron_job: dict[str, Any] | None = None
    try:
        plan = planner.plan(fv, obj, ctx.images.get("workloads", ""))
    except planner.SpecError as exc:
        spec_error = exc
    else:
        try:
            await ensure(ctx, plan.config_map)
            cron_job = await ensure(ctx, plan.cron_job)
            if plan.backfill_job is not None and plan.backfill_config_map is not None:
                await ensure(ctx, plan.backfill_config_map)
                _, created = await ensure_created(ctx, plan.backfill_job)
                if created:
                    await post_event(
                        ctx.kube,
                        obj,
                        "Normal",
                        "BackfillStarted",
                        f"started backfill Job {plan.backfill_job['metadata']['name']}",
                    )
        except ApiError as exc:
            if exc.rbac_denied:
                # Report it where the user looks, and look again: fixing RBAC heals it.
                log.warning("FeatureView %s/%s: %s", ns, name, exc.message)
                denied = planner.permission_denied(fv, previous, exc.message, now_rfc3339())
                await write_status(ctx, obj, denied)
                return 60.0
            raise
        except Refusal as refusal:
            spec_error = planner.SpecError("spec", str(refusal))

    jobs = ctx.cache.list("batch/v1", "Job", ns, {FEATURE_VIEW_LABEL: name})
    if finalizers.needs_finalizer(obj, KEYSPACE_FINALIZER, wrote=bool(jobs)):
        # A run (materialization or backfill Job, the only writers) may write the keyspace
        # from now on: keep the FeatureView until it is removed.
        obj = await ctx.kube.apply(finalizers.finalizer_apply(obj, KEYSPACE_FINALIZER, keep=True))
        ctx.cache.upsert(obj)
    runs = [
        j
        for j in jobs
        if j["metadata"]["labels"].get("app.kubernetes.io/component") == "materialize"
    ]
    backfills = [
        j for j in jobs if j["metadata"]["labels"].get("app.kubernetes.io/component") == "backfill"
    ]
    last_run = await _outcome(ctx, ns, newest(runs))
    last_backfill = await _outcome(ctx, ns, newest(backfills))

    new_status = planner.status(
        fv,
        previous=previous,
        cron_job=cron_job,
        last_run=last_run,
        last_backfill=last_backfill,
        spec_error=spec_error,
        now=now_rfc3339(),
    )
    if await write_status(ctx, obj, new_status):
        for type_, reason, message in planner.events(previous, new_status, last_run, last_backfill):
            await post_event(ctx.kube, obj, type_, reason, message)
    now = ctx.now()
    fresh = planner.freshness_of(fv.spec, new_status, now)
    FRESHNESS.observe(ns, name, fresh.watermark, fresh.limit_seconds)
    waits = []
    if any(o is not None and not o.finished for o in (last_run, last_backfill)):
        waits.append(30.0)
    if fresh.fresh and fresh.stale_after is not None:
        # Nothing else happens when data turns stale: look again the moment it does.
        waits.append(max(1.0, (fresh.stale_after - now).total_seconds()))
    return min(waits) if waits else None


async def _tear_down(ctx: Context, obj: Mapping[str, Any], ns: str, name: str) -> float | None:
    """One step of a deletion: stop the writers (the CronJob, so no new run starts, and its
    Jobs), wait for them to go, delete the keyspace, remove the finalizer."""
    crons = ctx.cache.list("batch/v1", "CronJob", ns, {FEATURE_VIEW_LABEL: name})
    jobs = ctx.cache.list("batch/v1", "Job", ns, {FEATURE_VIEW_LABEL: name})
    step = await teardown.stop_writers(ctx, obj, KEYSPACE_FINALIZER, [*crons, *jobs])
    if step is None:
        return None
    if step.wait:
        return teardown.WAIT_SECONDS
    # The cache may not hold yet a Job the CronJob started just before it went: ask once.
    if await ctx.kube.list("batch/v1", "Job", ns, {FEATURE_VIEW_LABEL: name}):
        return teardown.WAIT_SECONDS
    try:
        fv = FeatureView.model_validate(obj)
    except ValidationError as exc:
        raise TerminalError(f"FeatureView {ns}/{name} does not parse: {exc}") from exc
    redis_spec = fv.spec.online_store.redis
    keys = FeatureViewKeys.of(planner.store_view_name(fv), redis_spec.key_prefix)
    await teardown.delete_keyspace_of(ctx, obj, KEYSPACE_FINALIZER, redis_spec, keys.base)
    await teardown.release(ctx, obj, KEYSPACE_FINALIZER)
    return None
