"""The I/O steps every reconciler shares: apply-if-different, create-once, status, Events."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

from recsys_operator.conditions import now_rfc3339
from recsys_operator.diffing import needs_apply
from recsys_operator.kube import ApiError, KubeClient
from recsys_operator.metrics import PHASES
from recsys_operator.planning.jobstatus import termination_summary

log = logging.getLogger(__name__)

#: Termination summaries of finished Jobs, by Job uid: a finished Job's pods are read once per
#: operator process. After a restart they are read again (reads, never writes).
_SUMMARIES: dict[str, dict[str, Any] | None] = {}
_SUMMARY_CACHE_LIMIT = 10_000


async def ensure(kube: KubeClient, desired: Mapping[str, Any]) -> dict[str, Any]:
    """Make ``desired`` true and return the object as the server has it; writes only on a diff."""
    meta = desired["metadata"]
    observed = await kube.get(
        desired["apiVersion"], desired["kind"], meta["name"], meta.get("namespace")
    )
    if not needs_apply(desired, observed):
        assert observed is not None
        return observed
    log.info("applying %s %s/%s", desired["kind"], meta.get("namespace"), meta["name"])
    return await kube.apply(desired)


async def ensure_created(
    kube: KubeClient, desired: Mapping[str, Any]
) -> tuple[dict[str, Any], bool]:
    """Create ``desired`` unless it exists (Jobs are immutable: a Job is made once, never
    re-applied). Returns the object and whether this call created it."""
    meta = desired["metadata"]
    observed = await kube.get(
        desired["apiVersion"], desired["kind"], meta["name"], meta.get("namespace")
    )
    if observed is not None:
        return observed, False
    try:
        return await kube.create(desired), True
    except ApiError as exc:
        if exc.status != 409:  # AlreadyExists: a concurrent pass made it; take that one
            raise
    again = await kube.get(
        desired["apiVersion"], desired["kind"], meta["name"], meta.get("namespace")
    )
    if again is None:
        raise ApiError(409, "Conflict", f"{desired['kind']} {meta['name']} vanished after 409")
    return again, False


def _phase(status: Mapping[str, Any]) -> str:
    """ModelVersions by phase; other kinds by their Ready condition."""
    if status.get("phase"):
        return str(status["phase"])
    for cond in status.get("conditions", []) or []:
        if cond.get("type") == "Ready":
            return "Ready" if cond.get("status") == "True" else "NotReady"
    return "Unknown"


async def write_status(kube: KubeClient, obj: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """Patch status only when it differs from what the object has; True when written."""
    meta = obj["metadata"]
    PHASES.observe(obj["kind"], f"{meta.get('namespace')}/{meta['name']}", _phase(status))
    if dict(obj.get("status") or {}) == dict(status):
        return False
    await kube.patch_status(
        obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"), status
    )
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
