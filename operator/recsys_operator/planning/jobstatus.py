"""What a finished (or running) Job says: its conditions plus its pod's termination message.

Workloads report their result as a JSON summary in the termination message, so the operator
learns rows written, metrics or artifact digests without extra storage or RBAC for pods.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from recsys_operator.planning.pods import MAIN_CONTAINER


@dataclass(frozen=True)
class JobOutcome:
    name: str
    finished: bool
    succeeded: bool
    reason: str
    message: str
    start_time: str | None = None
    completion_time: str | None = None
    summary: Mapping[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.finished and not self.succeeded

    def run_status(self) -> dict[str, Any]:
        """The FeatureView's ``MaterializationRun`` status block."""
        out: dict[str, Any] = {"jobName": self.name}
        if self.start_time:
            out["startTime"] = self.start_time
        if self.completion_time:
            out["completionTime"] = self.completion_time
        if "entitiesWritten" in self.summary:
            out["rows"] = int(self.summary["entitiesWritten"])
        if self.summary.get("watermark"):
            out["watermark"] = str(self.summary["watermark"])
        if "durationSeconds" in self.summary:
            out["durationSeconds"] = float(self.summary["durationSeconds"])
        return out


def termination_summary(pods: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The JSON summary of the most recently terminated main container among ``pods``."""
    best: tuple[str, dict[str, Any]] | None = None
    for pod in pods:
        for cs in pod.get("status", {}).get("containerStatuses", []) or []:
            if cs.get("name") != MAIN_CONTAINER:
                continue
            term = (cs.get("state") or {}).get("terminated") or {}
            text = term.get("message")
            if not text:
                continue
            try:
                parsed = json.loads(text)
            except json.JSONDecodeError:
                parsed = {"status": "Unknown", "message": text[:1024]}
            if not isinstance(parsed, dict):
                continue
            finished = str(term.get("finishedAt", ""))
            if best is None or finished > best[0]:
                best = (finished, parsed)
    return best[1] if best else None


def _condition(job: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for cond in job.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return dict(cond)
    return None


def job_outcome(job: Mapping[str, Any], summary: Mapping[str, Any] | None) -> JobOutcome:
    name = job["metadata"]["name"]
    st = job.get("status", {})
    summary = dict(summary or {})
    complete, failed = _condition(job, "Complete"), _condition(job, "Failed")
    if complete is not None:
        return JobOutcome(
            name,
            True,
            True,
            "Succeeded",
            "completed",
            st.get("startTime"),
            st.get("completionTime"),
            summary,
        )
    if failed is not None:
        # The workload's own words first: they name the column or field to fix.
        reason = str(summary.get("reason") or failed.get("reason") or "Failed")
        message = str(summary.get("message") or failed.get("message") or "the Job failed")
        return JobOutcome(
            name,
            True,
            False,
            reason,
            f"Job {name}: {message}",
            st.get("startTime"),
            failed.get("lastTransitionTime"),
            summary,
        )
    return JobOutcome(
        name, False, False, "Running", f"Job {name} is running", st.get("startTime"), None, summary
    )


def newest(jobs: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The most recently created Job (names of CronJob children sort by schedule time too)."""
    if not jobs:
        return None
    return max(
        jobs, key=lambda j: (j["metadata"].get("creationTimestamp", ""), j["metadata"]["name"])
    )
