"""How a Recommender trains its models: schedule, placement, distributed workers,
hyper-parameters and the evaluation gate a new model must pass.

Distributed training is described the Kubeflow Trainer way (``numNodes`` pods, each running
``numProcPerNode`` torchrun processes); placement the Pod way (``nodeSelector``,
``tolerations``, ``priorityClassName``); a Kueue queue by ``queueName``.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field

from recsys_contract.formats import DURATION, parse_duration
from recsys_operator.api.base import ApiModel, ListMap, Rule
from recsys_operator.api.common import (
    Cron,
    Duration,
    Fraction,
    Image,
    Name,
    NodeSelector,
    ResourceRequirements,
    SubdomainName,
    TimeZone,
    Tolerations,
)


class ThresholdRange(ApiModel):
    """Bounds a metric must stay within, as Flagger's ``thresholdRange``."""

    __rules__ = (
        Rule(
            cel="has(self.min) || has(self.max)",
            message="give min, max or both",
            check=lambda m: m.min is not None or m.max is not None,
        ),
        Rule(
            cel="!has(self.min) || !has(self.max) || self.min <= self.max",
            message="must not be above max: swap or correct the bounds",
            field_path=".min",
            check=lambda m: m.min is None or m.max is None or m.min <= m.max,
        ),
    )

    min: float | None = None
    """Lowest acceptable value (inclusive)."""
    max: float | None = None
    """Highest acceptable value (inclusive)."""


EvaluationMetricName = Literal["recallAtK", "ndcgAtK", "auc"]


class EvaluationMetric(ApiModel):
    """One offline metric the gate checks on the holdout."""

    __rules__ = (
        Rule(
            cel="has(self.thresholdRange) || has(self.maxRegression)",
            message="a gate metric needs thresholdRange, maxRegression or both; "
            "otherwise it checks nothing",
            check=lambda m: m.threshold_range is not None or m.max_regression is not None,
        ),
    )

    name: EvaluationMetricName
    """recallAtK and ndcgAtK of retrieval at the gate's ``k``, or auc of the ranking model."""
    threshold_range: ThresholdRange | None = None
    """Absolute bounds, e.g. ``{min: 0.05}``."""
    max_regression: Fraction | None = None
    """Largest relative drop allowed against the version serving now, e.g. ``0.05``: a new
    model more than 5% worse than the one it would replace is Rejected. Not checked for the
    first version, nor against an imported version (it has no holdout metrics)."""


BaselineName = Literal["popularity", "als", "none"]


class BaselineComparison(ApiModel):
    """The served list must beat a baseline of the same evaluation, as Flagger's analysis
    compares a canary with its primary: the final list (retrieval candidates, ranker,
    ordering) against popularity or ALS, both measured by the training Job on the same
    holdout, users and K. A model that cannot beat "most popular first" is not worth serving,
    whatever its absolute numbers."""

    __rules__ = (
        Rule(
            cel="self.name != 'none' || !has(self.minLift)",
            message="applies only to a baseline: name popularity or als, or remove minLift",
            field_path=".minLift",
            check=lambda m: m.name != "none" or m.min_lift is None,
        ),
    )

    name: BaselineName = "popularity"
    """The baseline the served list must beat: ``popularity`` (most interacted items first),
    ``als`` (implicit's ALS, the classic collaborative filter), or ``none`` to compare with
    no baseline."""
    metric: Literal["recallAtK", "ndcgAtK"] = "ndcgAtK"
    """The metric of both lists compared, at the gate's ``k``."""
    min_lift: Annotated[float, Field(ge=-1.0, le=10.0)] | None = None
    """Relative margin the served list must win by: ``0.1`` asks for 10% above the baseline;
    unset means 0 (strictly above it). A negative lift tolerates a list below the baseline
    (``-0.2``: at most 20% below), for a demo that trains too briefly to win."""


def _default_gate_metrics() -> list[EvaluationMetric]:
    return [EvaluationMetric(name="recallAtK", max_regression=0.05)]


class EvaluationGate(ApiModel):
    """The checks a freshly trained model must pass before it may serve. A model that fails
    them ends Rejected, with the numbers in its status message."""

    k: Annotated[int, Field(ge=1, le=1000)] = 20
    """The cut-off K of recallAtK and ndcgAtK."""
    holdout_fraction: Annotated[float, Field(gt=0.0, le=0.5)] = 0.1
    """Share of the newest interactions held out for evaluation: of all of them (``split:
    Time``) or of each user's (``PerUser``)."""
    split: Literal["Time", "PerUser"] = "Time"
    """``Time``: one global cut by event time, as production only ever knows the past; only
    users active on both sides of the cut are evaluated. ``PerUser``: each user's newest
    interactions are held out and everything before them trains, so every user with some
    history counts (more users, a smaller standard error), though the model has seen other
    users' later interactions."""
    metrics: Annotated[
        list[EvaluationMetric], Field(min_length=1, max_length=8), ListMap(("name",))
    ] = Field(default_factory=_default_gate_metrics)
    """The metrics and their limits; by default recall@K may not drop more than 5% below
    the serving version's."""
    baseline: BaselineComparison = Field(default_factory=BaselineComparison)
    """The baseline the served list must beat; by default its NDCG@K must be above
    popularity's."""


class HyperParameters(ApiModel):
    """Training hyper-parameters shared by the two-tower and the ranking model."""

    epochs: Annotated[int, Field(ge=1, le=10000)] = 10
    """Passes over the training interactions."""
    batch_size: Annotated[int, Field(ge=2, le=1048576)] = 1024
    """Interactions per step (per worker when distributed); in-batch negatives come from it."""
    learning_rate: Annotated[float, Field(gt=0.0, le=10.0)] = 0.003
    """Step size of the optimizer."""
    weight_decay: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    """L2 penalty on the weights."""
    temperature: Annotated[float, Field(gt=0.0, le=10.0)] = 0.05
    """Softmax temperature of the two-tower loss; lower sharpens it."""
    seed: Annotated[int, Field(ge=0, le=2147483647)] = 42
    """Random seed, for runs that can be repeated."""
    max_steps_per_epoch: Annotated[int, Field(ge=1, le=100000000)] | None = None
    """Stop an epoch after this many steps (for quick runs); the whole data when unset."""


class HyperParameterOverrides(ApiModel):
    """Hyper-parameters for one ModelVersion; unset ones come from the Recommender."""

    epochs: Annotated[int, Field(ge=1, le=10000)] | None = None
    """Passes over the training interactions."""
    batch_size: Annotated[int, Field(ge=2, le=1048576)] | None = None
    """Interactions per step."""
    learning_rate: Annotated[float, Field(gt=0.0, le=10.0)] | None = None
    """Step size of the optimizer."""
    weight_decay: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    """L2 penalty on the weights."""
    temperature: Annotated[float, Field(gt=0.0, le=10.0)] | None = None
    """Softmax temperature of the two-tower loss."""
    seed: Annotated[int, Field(ge=0, le=2147483647)] | None = None
    """Random seed."""
    max_steps_per_epoch: Annotated[int, Field(ge=1, le=100000000)] | None = None
    """Stop an epoch after this many steps."""


_GPU_IN_RESOURCES = (
    "!has(self.resourcesPerNode) || "
    "((!has(self.resourcesPerNode.limits) || "
    "!(self.gpuResourceName in self.resourcesPerNode.limits))"
    " && (!has(self.resourcesPerNode.requests) || "
    "!(self.gpuResourceName in self.resourcesPerNode.requests)))"
)


def _gpu_in_resources(m: Training) -> bool:
    r = m.resources_per_node
    return r is None or (
        m.gpu_resource_name not in (r.limits or {})
        and m.gpu_resource_name not in (r.requests or {})
    )


class LoggedData(ApiModel):
    """Train on what serving logged: every served item joined with its click or purchase
    after the attribution window, as Feast's feature logging keeps the features a feature
    server served, so the next model learns from the features exactly as served (no skew
    between training and serving).

    A log-join CronJob (``<recommender>-logjoin``) runs while the Recommender serves: it
    writes dated parquet partitions under ``<spec.stores.artifacts.storageUri>/logged``
    (``date=YYYY-MM-DD/part-*.parquet``, one row per served item with its position, score,
    variant, model version, features and labels), exactly once through crashes and reruns
    (its cursor lives in Redis beside the log), and trims the Redis streams only behind what
    is written. Each training run reads those rows beside ``spec.interactions``: the
    clicked and purchased ones as more interactions. Its ModelVersion's ``status.lineage``
    says which partitions and which time range it learned from."""

    enabled: bool = True
    """Run the log join and train on its rows. False removes the CronJob; rows already
    written stay in the artifact store but are no longer read."""
    schedule: Cron = "*/15 * * * *"
    """Cron schedule of the log-join CronJob."""
    time_zone: TimeZone | None = None
    """IANA time zone the schedule is read in; UTC when unset."""
    attribution_window: Duration | None = None
    """How long after a response its clicks and purchases still count: a response is joined
    only once it is this old, and a later outcome is not attributed. Unset: the rollout
    analysis' ``attributionWindow``, so the canary and the training agree on what a click
    is."""
    retention: Duration = "24h"
    """How long joined entries stay in the Redis streams (the drift check samples them)
    before they are trimmed; entries not yet joined are never trimmed by the log join."""
    lookback: Duration | None = None
    """Train on rows served at most this long before the ModelVersion was created; every
    logged row when unset."""


class WarmStart(ApiModel):
    """Retrain cheaply: a Drift or Schedule retrain starts from the serving version's weights
    and takes its gradient steps on the recent window only (continual training), instead of
    training from scratch on everything.

    The window is the last ``window`` of training interactions before the holdout cutoff
    (the newest ``evaluation.holdoutFraction`` of interactions stay held out, as for a cold
    run, so the gate judges both kinds of model on the same rows); older interactions still
    serve as user history and as the items evaluation treats as seen. Users and items the
    serving version knew keep their embeddings; ids new in the window start fresh; feature
    vocabularies stay the serving version's (a category new since then reads as unknown
    until a cold retrain). The Initial version, a Manual retrain (``recsys.dev/retrain``:
    the way to force a full cold retrain) and a Recommender with no serving version train
    cold. A serving version whose architecture no longer fits the spec (another
    ``embeddingDim``, other hidden layers or features) is not an error: that retrain trains
    cold on all data and says why. The version it starts from is the one serving when the
    operator created the retrain (annotation ``recsys.dev/warm-start-from``), so a promotion
    during training does not change what a retried pod reads. The ModelVersion's
    ``status.lineage.warmStart`` says whether and from which version it was warm-started,
    and on which window."""

    __rules__ = (
        Rule(
            # the format check reports a malformed window; CEL parses only a well-formed one
            cel="!has(self.window) || !self.window.matches(r'" + DURATION + "') "
            "|| duration(self.window) >= duration('1m')",
            message="must be at least 1m: a warm retrain needs some recent interactions to "
            "train on; widen the window",
            field_path=".window",
            check=lambda m: (
                re.fullmatch(DURATION, m.window) is None or parse_duration(m.window) >= 60
            ),
        ),
    )

    enabled: bool = False
    """Warm-start Drift and Schedule retrains. Off: every retrain trains cold on all data."""
    window: Duration = "168h"
    """How much recent training data a warm retrain takes gradient steps on, counted back
    from the holdout cutoff (``168h``: the last week); a day is ``24h``."""
    epochs: Annotated[int, Field(ge=1, le=10000)] | None = None
    """Passes over the window; ``hyperParameters.epochs`` when unset. A warm start usually
    needs fewer passes than a cold run, and its window is smaller too."""


class Training(ApiModel):
    """Training runs: when they happen, where their pods go, and what they must achieve."""

    __rules__ = (
        Rule(
            cel="!has(self.numNodes) || self.numNodes == 1 || has(self.gpusPerNode)",
            message="must be set when numNodes > 1, so every worker gets the same number of "
            "GPUs (0 for CPU-only training): set gpusPerNode or use numNodes: 1",
            field_path=".gpusPerNode",
            reason="FieldValueRequired",
            check=lambda m: m.num_nodes == 1 or m.gpus_per_node is not None,
        ),
        Rule(
            cel="!has(self.numProcPerNode) || !has(self.gpusPerNode) || self.gpusPerNode == 0 "
            "|| self.numProcPerNode == self.gpusPerNode",
            message="must equal gpusPerNode when GPUs are used (torchrun starts one process "
            "per GPU): set numProcPerNode to gpusPerNode or remove it",
            field_path=".numProcPerNode",
            check=lambda m: (
                m.num_proc_per_node is None
                or not m.gpus_per_node
                or m.num_proc_per_node == m.gpus_per_node
            ),
        ),
        Rule(
            cel=_GPU_IN_RESOURCES,
            message="GPUs are set with gpusPerNode, not in resourcesPerNode: move the GPU "
            "count to gpusPerNode",
            field_path=".resourcesPerNode",
            check=_gpu_in_resources,
        ),
        Rule(
            cel="!has(self.timeZone) || has(self.schedule)",
            message="applies only to a schedule: set schedule or remove timeZone",
            field_path=".timeZone",
            check=lambda m: m.time_zone is None or m.schedule is not None,
        ),
    )

    schedule: Cron | None = None
    """Cron schedule of regular retraining (``0 3 * * 0``: Sundays 03:00). Unset: the model
    is trained once, then only on drift or on request."""
    time_zone: TimeZone | None = None
    """IANA time zone the schedule is read in; UTC when unset."""
    suspend: bool = False
    """Stop starting scheduled and drift-triggered training; serving is unaffected."""
    image: Image | None = None
    """Container image of the training Job; the operator's default when unset."""
    num_nodes: Annotated[int, Field(ge=1, le=64)] = 1
    """Worker pods (Kubeflow Trainer's ``numNodes``). Above 1, training runs data-parallel
    with torchrun across an Indexed Job; worker 0 is the rendezvous point."""
    num_proc_per_node: Annotated[int, Field(ge=1, le=16)] | None = None
    """torchrun processes per pod (``--nproc-per-node``); one per GPU when unset."""
    gpus_per_node: Annotated[int, Field(ge=0, le=16)] | None = None
    """GPUs per pod, requested as ``gpuResourceName``. Unset means 0 (CPU training) and
    must be set explicitly when numNodes > 1."""
    gpu_resource_name: Annotated[
        str, Field(min_length=1, max_length=253, pattern=r"^[a-z0-9.-]+/[a-z0-9.-]+$")
    ] = "nvidia.com/gpu"
    """Extended resource name of a GPU on this cluster (``amd.com/gpu`` on AMD nodes)."""
    resources_per_node: ResourceRequirements | None = None
    """CPU and memory of each worker pod (GPUs go in gpusPerNode)."""
    node_selector: NodeSelector | None = None
    """Labels a node must have to run training pods, e.g. a GPU pool."""
    tolerations: Tolerations | None = None
    """Taints training pods tolerate, e.g. ``nvidia.com/gpu:NoSchedule`` on a GPU pool."""
    priority_class_name: SubdomainName | None = None
    """PriorityClass of training pods, so batch training yields to serving."""
    queue_name: Name | None = None
    """Kueue LocalQueue to submit training to: the Job gets the
    ``kueue.x-k8s.io/queue-name`` label and is created suspended for Kueue to admit."""
    backoff_limit: Annotated[int, Field(ge=0, le=20)] = 3
    """Retries of a training pod after infrastructure failures (bad input fails at once)."""
    active_deadline_seconds: Annotated[int, Field(ge=60, le=2592000)] | None = None
    """Longest a training run may take before it is stopped and marked Failed."""
    hyper_parameters: HyperParameters = Field(default_factory=HyperParameters)
    """Hyper-parameters of training."""
    evaluation: EvaluationGate = Field(default_factory=EvaluationGate)
    """The evaluation gate each new model must pass."""
    logged_data: LoggedData = Field(default_factory=LoggedData)
    """Training on the served log joined with its outcomes (log and wait); on by default."""
    warm_start: WarmStart = Field(default_factory=WarmStart)
    """Warm-started retraining from the serving version on recent data; off by default."""


class TrainingOverrides(ApiModel):
    """What one ModelVersion trains differently from its Recommender."""

    image: Image | None = None
    """Container image of this training run."""
    hyper_parameters: HyperParameterOverrides | None = None
    """Hyper-parameters that differ from the Recommender's."""
