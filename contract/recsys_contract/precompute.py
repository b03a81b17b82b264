"""The pre-computation Job's config (rendered from a Recommender's ``spec.serving.precompute``)
and its summary: hybrid serving's offline half.

Config (camelCase, unknown fields refused)::

    {
      "gateway": {...the gateway's config, its routing naming only the stable variant,
                  "precomputed": {"maxAge": "2h"}},
      "audience": {"mostActive": 10000, "windowSeconds": 86400},
      "topN": 100,
      "concurrency": 8,
      "batchSize": 256,
      "scoringTimeout": "10s"
    }

``audience`` is one of ``mostActive`` (a count), ``mostActivePercent`` (a share of the users
active in the window) or ``all``. The lists are computed with the gateway's own stages for
``gateway.routing.stable`` and written under its version (``keyspace.PrecomputedList``), with
``gateway.precomputed.maxAge`` as their TTL. What a run does is told in
``recsys_workloads.precompute``.
"""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from recsys_contract.base import ConfigSection, Summary
from recsys_contract.formats import duration
from recsys_contract.gateway import GatewayConfig


class Audience(ConfigSection):
    most_active: int | None = Field(default=None, ge=1)
    most_active_percent: int | None = Field(default=None, ge=1, le=100)
    all: bool = False
    #: how far back served requests are counted for the most active users
    window_seconds: float = Field(default=86400.0, gt=0)

    @model_validator(mode="after")
    def _one_audience(self) -> Audience:
        named = [self.most_active is not None, self.most_active_percent is not None, self.all]
        if named.count(True) != 1:
            raise ValueError("audience: give exactly one of mostActive, mostActivePercent or all")
        return self


class PrecomputeConfig(ConfigSection):
    gateway: GatewayConfig
    audience: Audience
    top_n: int = Field(default=100, ge=1, le=10_000)
    #: users computed at once (Triton calls in flight)
    concurrency: int = Field(default=8, ge=1, le=1024)
    #: users per round: read, computed and written before the next round is read, so memory
    #: stays bounded by this, not by the audience
    batch_size: int = Field(default=256, ge=1, le=100_000)
    #: how long one user's Triton calls may take, in place of the gateway's
    #: ``scoringTimeout``: that one is a request's deadline, and a Job that waits longer
    #: skips fewer users when Triton is busy serving
    scoring_timeout: str = "10s"

    @field_validator("scoring_timeout")
    @classmethod
    def _timeout(cls, value: str) -> str:
        return duration(value)

    @model_validator(mode="after")
    def _needs_max_age(self) -> PrecomputeConfig:
        if self.gateway.precomputed is None:
            raise ValueError("gateway.precomputed: set maxAge, the lists' TTL")
        if self.gateway.routing.stable.triton is None:
            raise ValueError("gateway.routing.stable.triton: the Job computes the lists on it")
        if self.top_n > self.gateway.candidates:
            raise ValueError(
                f"topN ({self.top_n}) exceeds gateway.candidates ({self.gateway.candidates})"
            )
        return self

    @property
    def model_version(self) -> str:
        return self.gateway.routing.stable.model_version

    @property
    def stages_config(self) -> GatewayConfig:
        """The gateway's config the Job runs the stages with: its own Triton deadline."""
        return self.gateway.model_copy(update={"scoring_timeout": self.scoring_timeout})


class PrecomputeSummary(Summary):
    """What one run reports (its termination message)."""

    model_version: str
    #: users in the audience
    users: int
    #: lists written
    written: int
    #: users with no list this run: Triton failed for them, or no item survived the filters
    skipped: int = 0
    #: why, by the fallback reason (``timeout``, ``unavailable``, ...) or ``empty``
    skipped_by: dict[str, int] = Field(default_factory=dict)
    #: when the lists were computed (ms since the epoch), the time each list carries
    computed_ms: int
