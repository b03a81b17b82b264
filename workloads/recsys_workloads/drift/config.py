"""The drift check's config: the JSON the operator renders for the drift CronJob's pods.

Kept in its own module (a pydantic model like every workload's) so it can move into the
shared operator/workload contract package as it is.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from recsys_workloads.drift.stats import DEFAULT_THRESHOLDS, Method
from recsys_workloads.history import GatewayStoreConfig
from recsys_workloads.runtime import BadInputError, ConfigSection, describe_validation_error

#: Threshold ranges per method, the CRD's (``spec.drift.threshold``).
THRESHOLD_RANGES: dict[Method, tuple[float, float]] = {"PSI": (0.01, 2.0), "KL": (0.001, 1.0)}
Reference = Literal["interactionRows", "entityRows"]


class DriftConfig(ConfigSection):
    recommender: str = Field(min_length=3, pattern=r"^[^.\s]+\.[^.\s]+$")
    #: the gateway's Redis: the served log is ``<keyPrefix>recsys:<recommender>:served``
    served_log: GatewayStoreConfig
    #: the serving version's model artifact (its profile.json and encoders.json are read)
    model_artifact_uri: str = Field(min_length=1)
    storage_options: dict[str, Any] = Field(default_factory=dict)
    #: only entries served by this version; every entry when unset
    model_version: str | None = Field(default=None, min_length=1)
    sample_size: int = Field(default=10_000, ge=100, le=10_000_000)
    #: fewer entries than this in the log: nothing is judged (``judged: false``)
    min_sample_size: int = Field(default=100, ge=1)
    method: Method = "PSI"
    #: per feature and for the score histogram; the method's default when unset
    threshold: float | None = None
    #: the served share of items training never saw above which the catalog counts as drifted;
    #: reported only when unset
    unseen_item_threshold: float | None = Field(default=None, gt=0, le=1)
    #: features compared: ``age`` or ``user.age``; every user feature of the model when unset
    features: list[str] | None = Field(default=None, min_length=1)
    top_features: int = Field(default=5, ge=1, le=20)
    #: which training distribution serving is compared with: rows weighted by interactions
    #: (what request traffic looks like) or each entity once
    reference: Reference = "interactionRows"

    @model_validator(mode="after")
    def _threshold_in_range(self) -> DriftConfig:
        low, high = THRESHOLD_RANGES[self.method]
        if self.threshold is not None and not low <= self.threshold <= high:
            raise ValueError(
                f"threshold {self.threshold} is out of range for {self.method}: "
                f"it takes {low}-{high}"
            )
        if self.min_sample_size > self.sample_size:
            raise ValueError(
                f"minSampleSize ({self.min_sample_size}) exceeds sampleSize ({self.sample_size})"
            )
        return self

    @property
    def effective_threshold(self) -> float:
        return DEFAULT_THRESHOLDS[self.method] if self.threshold is None else self.threshold


def parse_drift_config(raw: dict[str, Any]) -> DriftConfig:
    try:
        return DriftConfig.model_validate(raw)
    except ValidationError as exc:
        raise BadInputError("drift config: " + describe_validation_error(exc)) from exc
