"""The drift check's config (rendered from a Recommender's ``spec.drift``) and its summary.

The check itself is told in ``recsys_workloads.drift``; the operator renders this config into
the drift CronJob's ConfigMap and reads the summary from the finished Job's termination
message. ``servedLog`` is the Recommender's store (``keyspace.GatewayKeys``): the stream the
gateways log every response to.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from recsys_contract.base import ConfigSection, Summary
from recsys_contract.history import RecommenderStoreConfig
from recsys_contract.keyspace import RECOMMENDER_PATTERN

Method = Literal["PSI", "KL"]
#: Score above which a feature counts as drifted, when ``threshold`` is unset: PSI's rule of
#: thumb for a major shift, and KL's usual counterpart (benchmarks/README.md, "Drift checks").
DEFAULT_THRESHOLDS: dict[Method, float] = {"PSI": 0.2, "KL": 0.1}
#: Threshold ranges per method (inclusive), the ones the CRD's ``spec.drift.threshold`` takes.
THRESHOLD_RANGES: dict[Method, tuple[float, float]] = {"PSI": (0.01, 2.0), "KL": (0.001, 1.0)}
Reference = Literal["interactionRows", "entityRows"]


class DriftConfig(ConfigSection):
    recommender: str = Field(min_length=3, pattern=RECOMMENDER_PATTERN)
    #: the gateway's Redis: the served log is ``<keyPrefix>recsys:<recommender>:served``
    served_log: RecommenderStoreConfig
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


class FeatureScore(Summary):
    #: ``user.age``: the entity and the feature
    name: str
    value: float
    drifted: bool = False


class DriftSummary(Summary):
    """What one check reports (more is in the message; this is what the operator acts on)."""

    #: False when the log held too few entries to judge (``reason`` says so)
    judged: bool
    drifted: bool
    method: Method
    threshold: float
    #: the highest-scoring features, highest first (``topFeatures`` of them)
    features: list[FeatureScore] = Field(default_factory=list)
    drifted_features: list[str] = Field(default_factory=list)
    reason: str | None = None
