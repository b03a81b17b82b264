"""How a workload's run ends: its exit code and the JSON in its termination message.

Every entry point ends by writing one JSON object to its container's termination message,
which the operator reads from the finished pod (no extra storage, no RBAC for pods)::

    {"status": "Succeeded", ...the workload's summary (its module here)...}
    {"status": "Failed", "reason": "BadInput" | "Transient" | "Crash", "message": "..."}

A summary longer than Kubernetes keeps (``TERMINATION_MESSAGE_LIMIT``) is cut to its status,
reason and message with ``"truncated": true``. The exit code tells the Job's
``podFailurePolicy`` whether a retry can help.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

#: Done; the summary says what was produced.
EXIT_OK = 0
#: An unexpected crash (a bug or an unknown failure): retried, within the Job's backoffLimit.
EXIT_CRASH = 1
#: Bad input that no retry can fix (missing column, wrong type, empty source, invalid config).
#: The same code argparse uses for usage errors, so both fail the Job fast.
EXIT_BAD_INPUT = 2
#: A transient failure (an unreachable store, a timeout): worth retrying. EX_TEMPFAIL of sysexits.h.
EXIT_TRANSIENT = 75

#: Kubernetes truncates termination messages at 4096 bytes; summaries must stay below it.
TERMINATION_MESSAGE_LIMIT = 4096

Status = Literal["Succeeded", "Failed", "Unknown"]
FailureReason = Literal["BadInput", "Transient", "Crash"]


class Outcome(BaseModel):
    """The envelope every termination message has, whatever the workload: how it ended and,
    for a failure, why. The rest of a successful run's message is its summary."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    status: Status
    #: a failure's kind (``FailureReason``); another string when the message came from elsewhere
    reason: str | None = None
    #: a failure's explanation, naming the field or column to fix
    message: str | None = None
    #: the summary was longer than Kubernetes keeps, so only this envelope was written
    truncated: bool = False
    #: ``worker``: one of several pods of a run, whose result another pod (rank 0) reports
    role: Literal["worker"] | None = None

    @classmethod
    def read(cls, raw: Any) -> Outcome | None:
        """The envelope of a parsed termination message, or None when it has none."""
        if not isinstance(raw, dict):
            return None
        try:
            return cls.model_validate(raw)
        except ValueError:
            return None

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_defaults=True)


def failure(reason: FailureReason, message: str) -> Outcome:
    return Outcome(status="Failed", reason=reason, message=message)
