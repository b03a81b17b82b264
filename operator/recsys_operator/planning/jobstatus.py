"""What a finished (or running) Job says: its conditions plus its pod's termination message.

Workloads report their result as a JSON summary in the termination message, so the operator
learns rows written, metrics or artifact digests without extra storage or RBAC for pods. The
message's envelope is ``recsys_contract.termination.Outcome``, each workload's summary a
``recsys_contract`` model (``JobOutcome.parsed``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from recsys_contract.base import Summary
from recsys_contract.materialize import MaterializeSummary
from recsys_contract.termination import Outcome
from recsys_operator.planning.pods import MAIN_CONTAINER

S = TypeVar("S", bound=Summary)


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

    def parsed(self, model: type[S]) -> S | None:
        """The summary as the workload's ``recsys_contract`` model; None when the pod left
        none, or one that is not a successful run's of that model."""
        return model.read(dict(self.summary))

    def run_status(self) -> dict[str, Any]:
        """The FeatureView's ``MaterializationRun`` status block."""
        out: dict[str, Any] = {"jobName": self.name}
        if self.start_time:
            out["startTime"] = self.start_time
        if self.completion_time:
            out["completionTime"] = self.completion_time
        summary = self.parsed(MaterializeSummary)
        if summary is not None:
            out["rows"] = summary.entities_written
            out["watermark"] = summary.watermark
            if summary.duration_seconds is not None:
                out["durationSeconds"] = summary.duration_seconds
        return out


def termination_summary(pods: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The JSON summary that speaks for the Job among its pods' main containers: a successful
    run's result first, then a failure's words, then a worker's share (a pod of a multi-pod run
    whose result another pod reports); the most recently terminated of a kind. A failed attempt
    that a retry mended does not hide the retry's result, and a worker's success does not hide
    the failure that stopped the run."""
    best: tuple[bool, bool, str, dict[str, Any]] | None = None
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
            outcome = Outcome.read(parsed)
            reports = outcome is None or outcome.role != "worker"
            result = reports and outcome is not None and outcome.status == "Succeeded"
            rank = (result, reports, str(term.get("finishedAt", "")))
            if best is None or rank > best[:3]:
                best = (*rank, parsed)
    return best[3] if best else None


def _condition(job: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for cond in job.get("status", {}).get("conditions", []) or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return dict(cond)
    return None


#: What "nothing it made is used" means for the workloads whose Jobs split their work.
_NOT_USED = {
    "materialize": " (the live version was not switched)",
    "backfill": " (the live version was not switched)",
    "train": " (no model was published)",
}


def job_outcome(job: Mapping[str, Any], summary: Mapping[str, Any] | None) -> JobOutcome:
    name = job["metadata"]["name"]
    st = job.get("status", {})
    summary = dict(summary or {})
    complete, failed = _condition(job, "Complete"), _condition(job, "Failed")
    said = Outcome.read(summary)
    if (
        complete is not None
        and said is not None
        and (said.role == "worker" or said.status == "Failed")
    ):
        # The Job counts every pod (or its retry) done, but the pod whose message is the run's
        # result left none: a split materialization whose record Redis lost mid-run (a restart)
        # finishes without switching, a multi-pod training without rank 0's report. Nothing
        # the run made is taken; the next run starts anew.
        left = "workers' shares" if said.role == "worker" else f"a failed attempt's: {said.message}"
        component = job["metadata"].get("labels", {}).get("app.kubernetes.io/component", "")
        return JobOutcome(
            name,
            True,
            False,
            "ResultNotReported",
            f"Job {name} completed, but none of its pods reported the run's result, only "
            f"{left}; nothing it made is used{_NOT_USED.get(component, '')}, and the next run "
            "starts anew",
            st.get("startTime"),
            st.get("completionTime"),
            summary,
        )
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
        reason = str((said and said.reason) or failed.get("reason") or "Failed")
        message = str((said and said.message) or failed.get("message") or "the Job failed")
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
