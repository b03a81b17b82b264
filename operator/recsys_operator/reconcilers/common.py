"""The I/O steps every reconciler shares: apply-if-different, create-once, remove, status and
Events. Reads come from the watch-fed cache; every write's answer goes back into it."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

from recsys_operator.api.base import ApiModel
from recsys_operator.conditions import now_rfc3339
from recsys_operator.controller import Context
from recsys_operator.diffing import merge_patch, needs_apply, stamped
from recsys_operator.kube import ApiError, KubeClient
from recsys_operator.metrics import PHASES
from recsys_operator.planning.jobstatus import termination_summary

log = logging.getLogger(__name__)

#: Termination summaries of finished Jobs, by Job uid: a finished Job's pods are read once per
#: operator process. After a restart they are read again (reads, never writes).
_SUMMARIES: dict[str, dict[str, Any] | None] = {}
_SUMMARY_CACHE_LIMIT = 10_000


class Refusal(Exception):
    """The API server refused a child for a reason about the object itself (a 4xx that is not
    a conflict, throttling or missing RBAC): the same intent would be refused again, so the
    reconciler reports it in status instead of retrying. Retryable errors propagate as
    :class:`ApiError` to the work queue's backoff."""

    def __init__(self, desired: Mapping[str, Any], error: ApiError) -> None:
        self.kind = str(desired["kind"])
        self.name = str(desired["metadata"]["name"])
        self.error = error
        super().__init__(f"the API server refused {self.kind} {self.name}: {error.message}")


def _refusal(desired: Mapping[str, Any], exc: ApiError) -> Exception:
    return exc if exc.retryable else Refusal(desired, exc)


async def ensure(ctx: Context, desired: Mapping[str, Any]) -> dict[str, Any]:
    """Make ``desired`` true and return the object as the server has it. Reads the cache;
    writes only when the intent or a field the operator sets differs (diffing.py)."""
    meta = desired["metadata"]
    want = stamped(desired)
    observed = ctx.cache.get(
        desired["apiVersion"], desired["kind"], meta["name"], meta.get("namespace")
    )
    if not needs_apply(want, observed):
        assert observed is not None
        return observed
    log.info("applying %s %s/%s", desired["kind"], meta.get("namespace"), meta["name"])
    try:
        applied = await ctx.kube.apply(want)
    except ApiError as exc:
        raise _refusal(desired, exc) from exc
    ctx.cache.upsert(applied)
    return applied


async def ensure_created(ctx: Context, desired: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
    """Create ``desired`` unless it exists (Jobs are immutable: a Job is made once, never
    re-applied). Returns the object and whether this call created it."""
    meta = desired["metadata"]
    api_version, kind, name, ns = (
        desired["apiVersion"],
        desired["kind"],
        meta["name"],
        meta.get("namespace"),
    )
    observed = ctx.cache.get(api_version, kind, name, ns)
    if observed is not None:
        return observed, False
    try:
        created = await ctx.kube.create(desired)
    except ApiError as exc:
        if exc.status != 409:
            raise _refusal(desired, exc) from exc
    else:
        ctx.cache.upsert(created)
        return created, True
    # AlreadyExists: made by a pass whose watch event has not arrived yet; take that one.
    again = await ctx.kube.get(api_version, kind, name, ns)
    if again is None:
        raise ApiError(409, "Conflict", f"{kind} {name} vanished after 409")
    ctx.cache.upsert(again)
    return again, False


async def remove(ctx: Context, api_version: str, kind: str, name: str, namespace: str) -> bool:
    """Delete a child the operator no longer wants; False when it was already gone."""
    if ctx.cache.get(api_version, kind, name, namespace) is None:
        return False
    gone = await ctx.kube.delete(api_version, kind, name, namespace)
    ctx.cache.remove(api_version, kind, name, namespace)
    return gone


def _phase(status: Mapping[str, Any]) -> str:
    """ModelVersions by phase; other kinds by their Ready condition."""
    if status.get("phase"):
        return str(status["phase"])
    for cond in status.get("conditions", []) or []:
        if cond.get("type") == "Ready":
            return "Ready" if cond.get("status") == "True" else "NotReady"
    return "Unknown"


async def write_status(ctx: Context, obj: Mapping[str, Any], typed: ApiModel) -> bool:
    """Patch status only when its wire form differs from what the object has, with the fields
    it no longer has removed; True when written."""
    status = typed.to_k8s()
    meta = obj["metadata"]
    PHASES.observe(obj["kind"], f"{meta.get('namespace')}/{meta['name']}", _phase(status))
    patch = merge_patch(obj.get("status") or {}, status)
    if not patch:
        return False
    written = await ctx.kube.patch_status(
        obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"), patch
    )
    ctx.cache.upsert(written)
    return True


async def post_event(
    kube: KubeClient,
    obj: Mapping[str, Any],
    type_: Literal["Normal", "Warning"],
    reason: str,
    message: str,
) -> None:
    """An Event on ``obj`` for ``kubectl describe``; failing to post one never fails a reconcile."""
    meta = obj["metadata"]
    now = now_rfc3339()
    event = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta.get("namespace")},
        "involvedObject": {
            "apiVersion": obj["apiVersion"],
            "kind": obj["kind"],
            "name": meta["name"],
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": "recsys-operator"},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "reportingComponent": "recsys-operator",
    }
    try:
        await kube.create(event)
    except ApiError as exc:
        log.warning("could not post event %s on %s: %s", reason, meta["name"], exc)


async def summary_of(kube: KubeClient, ns: str, job: Mapping[str, Any]) -> dict[str, Any] | None:
    """The JSON summary a finished Job's workload left in its termination message."""
    conditions = job.get("status", {}).get("conditions", []) or []
    if not any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conditions
    ):
        return None
    uid = job["metadata"]["uid"]
    if uid not in _SUMMARIES:
        if len(_SUMMARIES) >= _SUMMARY_CACHE_LIMIT:
            _SUMMARIES.pop(next(iter(_SUMMARIES)))
        pods = await kube.list("v1", "Pod", ns, {"job-name": job["metadata"]["name"]})
        _SUMMARIES[uid] = termination_summary(pods)
    return _SUMMARIES[uid]
