"""The steps every deletion held by a finalizer executes (``planning.finalizers``): stop the
writers, delete a keyspace in Redis, release the object; and a Recommender's whole deletion
(``planning.cleanup``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from recsys_contract.keyspace import GatewayKeys, store_name
from recsys_operator import GROUP, VERSION
from recsys_operator.api.recommender import Recommender
from recsys_operator.api.stores import RedisStore
from recsys_operator.controller import BY_RECOMMENDER, Context
from recsys_operator.kube import ApiError
from recsys_operator.labels import RECOMMENDER_LABEL
from recsys_operator.online import OnlineStoreUnavailable, delete_keyspace
from recsys_operator.planning import cleanup, finalizers
from recsys_operator.planning.finalizers import CLEANUP_FINALIZER
from recsys_operator.planning.jobstatus import job_outcome
from recsys_operator.reconcilers.common import (
    ensure,
    ensure_created,
    post_event,
    summary_of,
)
from recsys_operator.workqueue import TerminalError

log = logging.getLogger(__name__)
API_VERSION = f"{GROUP}/{VERSION}"
#: How often a deletion looks again while its writers go.
WAIT_SECONDS = 2.0


class KeyspaceNotDeleted(Exception):
    """Redis (or the Secret with its password) could not be reached: the finalizer stays and
    the deletion is retried with backoff."""


async def stop_writers(
    ctx: Context, obj: Mapping[str, Any], finalizer: str, writers: Sequence[Mapping[str, Any]]
) -> finalizers.Teardown | None:
    """Delete the writers still there (in the foreground, so each goes only with its pods);
    the step, whose ``clean`` says whether none is left."""
    step = finalizers.teardown(obj, finalizer, writers)
    if step is None:
        return None
    meta = obj["metadata"]
    for api_version, kind, child in step.delete:
        log.info(
            "%s %s/%s is being deleted: deleting %s %s",
            obj["kind"], meta.get("namespace"), meta["name"], kind, child,
        )  # fmt: skip
        await ctx.kube.delete(api_version, kind, child, meta.get("namespace"), "Foreground")
    return step


async def delete_keyspace_of(
    ctx: Context,
    obj: Mapping[str, Any],
    finalizer: str,
    store: RedisStore,
    base: str,
) -> int:
    """Delete ``<base>:*`` in ``store`` (on every primary of a cluster); a Normal event says
    how many keys went, or a Warning event says why not and ``KeyspaceNotDeleted`` is raised
    (the finalizer stays)."""
    ns = obj["metadata"].get("namespace") or "default"
    try:
        client = await ctx.online.client(store, ns)
        ctx.kube.fence()  # a Redis write: only the leader's
        removed = await delete_keyspace(client, base)
    except (OnlineStoreUnavailable, ApiError) as exc:
        message = (
            f"cannot delete the keyspace {base}:* at {store.url} ({exc}); the {obj['kind']} stays "
            f"(finalizer {finalizer}) and the deletion is retried"
        )
        await post_event(ctx.kube, obj, "Warning", "KeyspaceNotDeleted", message)
        raise KeyspaceNotDeleted(message) from exc
    await post_event(
        ctx.kube, obj, "Normal", "KeyspaceDeleted", f"deleted {removed} keys of {base}:*"
    )
    log.info("%s %s/%s: deleted %d keys of %s:*", obj["kind"], ns, obj["metadata"]["name"],
             removed, base)  # fmt: skip
    return removed


async def release(ctx: Context, obj: Mapping[str, Any], finalizer: str) -> None:
    """Remove the operator's finalizer. The answer is not put back into the cache: the object
    may be gone already, and its DELETED event may have come before the answer."""
    await ctx.kube.apply(finalizers.finalizer_apply(obj, finalizer, keep=False))


async def tear_down_recommender(ctx: Context, obj: Mapping[str, Any]) -> float | None:
    """One step of a Recommender's deletion (``planning.cleanup``)."""
    meta = obj["metadata"]
    ns, name = meta.get("namespace") or "default", meta["name"]
    mine = {RECOMMENDER_LABEL: name}
    versions = ctx.cache.list(
        API_VERSION,
        "ModelVersion",
        ns,
        indexed=(BY_RECOMMENDER, name),
    )
    workloads = [
        w
        for api_version, kind in cleanup.WRITER_KINDS
        for w in ctx.cache.list(api_version, kind, ns, mine)
        if not cleanup.is_cleanup(w)
    ]
    step = await stop_writers(ctx, obj, CLEANUP_FINALIZER, [*versions, *workloads])
    if step is None:
        return None
    if step.wait:
        return WAIT_SECONDS
    # The cache may not hold yet a Job started just before its owner went: ask once.
    if any(not cleanup.is_cleanup(j) for j in await ctx.kube.list("batch/v1", "Job", ns, mine)):
        return WAIT_SECONDS
    # The cache may still hold the object a moment after an earlier pass released it: read it
    # once more, so a stale copy never deletes the keyspace twice or starts a cleanup again.
    obj = await ctx.kube.get(API_VERSION, "Recommender", name, ns) or {}
    if not finalizers.has_finalizer(obj, CLEANUP_FINALIZER):
        return None
    try:
        rec = Recommender.model_validate(obj)
    except ValidationError as exc:
        raise TerminalError(f"Recommender {ns}/{name} does not parse: {exc}") from exc
    job_name = cleanup.cleanup_name(rec)
    job = ctx.cache.get("batch/v1", "Job", job_name, ns)
    outcome = job_outcome(job, await summary_of(ctx.kube, ns, job)) if job else None
    after = cleanup.after_writers(rec, outcome, job is not None, ctx.now())
    if after.delete_keyspace:
        redis_spec = rec.spec.stores.redis
        keys = GatewayKeys.of(store_name(ns, name), redis_spec.key_prefix)
        await delete_keyspace_of(ctx, obj, CLEANUP_FINALIZER, redis_spec, keys.base)
    if after.failed is not None:
        await post_event(
            ctx.kube,
            obj,
            "Warning",
            "ArtifactsNotDeleted",
            f"{after.failed}; the Recommender stays (finalizer {CLEANUP_FINALIZER}) and the "
            f"cleanup is retried: fix the artifact store's access, or set "
            "spec.stores.artifacts.retentionPolicy: Retain to keep the artifacts",
        )
    if after.remove_job:
        for api_version, kind in (("batch/v1", "Job"), ("v1", "ConfigMap")):
            await ctx.kube.delete(api_version, kind, job_name, ns, "Foreground")
            ctx.cache.remove(api_version, kind, job_name, ns)
        if outcome is not None and outcome.succeeded:
            uris = ", ".join(cleanup.cleanup_uris(rec))
            await post_event(ctx.kube, obj, "Normal", "ArtifactsDeleted", f"deleted {uris}")
    if after.start_job:
        config_map, new_job = cleanup.cleanup_objects(rec, obj, ctx.images.get("workloads", ""))
        await ensure(ctx, config_map)
        await ensure_created(ctx, new_job)
        await post_event(
            ctx.kube, obj, "Normal", "CleanupStarted", f"started cleanup Job {job_name}"
        )
    if after.release:
        await release(ctx, obj, CLEANUP_FINALIZER)
    return after.requeue_after
