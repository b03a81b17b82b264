"""Pure planners: (spec, observed state, now) -> desired objects and status. No I/O here."""

from __future__ import annotations

from typing import Literal

#: An Event a planner decided to post: (type, reason, message). The reconciler posts it.
EventSpec = tuple[Literal["Normal", "Warning"], str, str]
