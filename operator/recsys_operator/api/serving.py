"""How a Recommender serves: Triton and gateway workloads, and how a new ModelVersion is
rolled out (canary steps judged by analysis metrics) or rolled back (a pinned version).

The rollout speaks Argo Rollouts (``steps[]{setWeight, pause{duration}}``, ``paused``) and
Flagger (``analysis{interval, metrics[]{name, thresholdRange, interval}}``); ``failureLimit``
is Argo's name for what Flagger calls ``threshold``.
"""

from __future__ import annotations

import re
from itertools import pairwise
from typing import Annotated, Literal, get_args

from pydantic import Field, WithJsonSchema

from recsys_operator.api.base import ApiModel, ListMap, Rule
from recsys_operator.api.common import (
    ATOMIC,
    Cron,
    Duration,
    Image,
    Name,
    NodeSelector,
    ResourceRequirements,
    TimeZone,
    Tolerations,
)
from recsys_operator.api.training import ThresholdRange


def _cpu_set(resources: ResourceRequirements | None) -> bool:
    return resources is not None and any(
        "cpu" in (part or {}) for part in (resources.requests, resources.limits)
    )


#: CEL for "the container has a CPU request" (a CPU limit alone defaults the request).
_CPU_SET_CEL = (
    "has(self.resources) && ((has(self.resources.requests) && 'cpu' in self.resources.requests)"
    " || (has(self.resources.limits) && 'cpu' in self.resources.limits))"
)


class Autoscaling(ApiModel):
    """A HorizontalPodAutoscaler (``autoscaling/v2``) on CPU utilization, between
    ``minReplicas`` and ``maxReplicas``. While it is set, the operator leaves the pod count
    to the autoscaler (``replicas`` is not applied), so the two never fight."""

    __rules__ = (
        Rule(
            cel="self.minReplicas <= self.maxReplicas",
            message="minReplicas must not exceed maxReplicas: lower minReplicas or raise "
            "maxReplicas",
            field_path=".minReplicas",
            check=lambda m: m.min_replicas <= m.max_replicas,
        ),
    )

    min_replicas: Annotated[int, Field(ge=1, le=100)] = 1
    """Fewest pods the autoscaler keeps; with two or more, a PodDisruptionBudget keeps all
    but one through a node drain."""
    max_replicas: Annotated[int, Field(ge=1, le=100)]
    """Most pods the autoscaler makes."""
    target_cpu_utilization_percentage: Annotated[
        int, Field(ge=1, le=100, alias="targetCPUUtilizationPercentage")
    ] = 80
    """Average CPU use the autoscaler aims for, as a percentage of the container's CPU
    request (which must therefore be set in ``resources``)."""


def _autoscaling_rule(component: str) -> Rule:
    return Rule(
        cel=f"!has(self.autoscaling) || ({_CPU_SET_CEL})",
        message=f"serving.{component}.autoscaling scales on CPU utilization, a share of the "
        f"container's CPU request: set serving.{component}.resources.requests.cpu",
        field_path=".autoscaling",
        check=lambda m: m.autoscaling is None or _cpu_set(m.resources),
    )


class TritonServing(ApiModel):
    """The Triton Inference Server Deployment that runs the user tower and the ranking
    model. With ``precompute.mode: Batch`` there is no Deployment: Triton runs in each
    precompute Job's pod, with this ``image``, ``resources`` and ``maxBatchSize``, and the
    pod is placed by this ``nodeSelector`` and ``tolerations`` (a GPU node, say)."""

    __rules__ = (_autoscaling_rule("triton"),)

    replicas: Annotated[int, Field(ge=0, le=100)] = 1
    """Pods per served version (stable and canary each get this many) while ``autoscaling``
    is unset; with two or more, a PodDisruptionBudget keeps all but one through a node
    drain."""
    autoscaling: Autoscaling | None = None
    """Scale each served version's Triton on CPU instead of a fixed ``replicas`` (each
    version gets its own autoscaler with these bounds)."""
    image: Image | None = None
    """Triton image; the operator's default when unset."""
    resources: ResourceRequirements | None = None
    """Resources of the Triton container; put GPUs in ``limits`` (``nvidia.com/gpu: 1``)."""
    max_batch_size: Annotated[int, Field(ge=1, le=4096)] = 64
    """Largest batch Triton's dynamic batcher forms from concurrent requests."""
    node_selector: NodeSelector | None = None
    """Labels a node must have to run Triton pods."""
    tolerations: Tolerations | None = None
    """Taints Triton pods tolerate."""


class GatewayServing(ApiModel):
    """The recommendation gateway: the HTTP API clients call, which runs retrieval,
    filtering, scoring and ordering and logs every response."""

    __rules__ = (_autoscaling_rule("gateway"),)

    replicas: Annotated[int, Field(ge=0, le=100)] = 2
    """Gateway pods while ``autoscaling`` is unset; with two or more, a
    PodDisruptionBudget keeps all but one through a node drain."""
    autoscaling: Autoscaling | None = None
    """Scale the gateway on CPU instead of a fixed ``replicas``."""
    image: Image | None = None
    """Gateway image; the operator's default when unset."""
    resources: ResourceRequirements | None = None
    """Resources of the gateway container."""
    scoring_timeout: Duration = "50ms"
    """How long the gateway waits for Triton before it answers with fallback items (and
    says so in the response and in metrics). With ``precompute.mode: Batch`` the gateway
    calls no Triton, so there is nothing for it to bound."""
    node_selector: NodeSelector | None = None
    """Labels a node must have to run gateway pods."""
    tolerations: Tolerations | None = None
    """Taints gateway pods tolerate."""


class Pause(ApiModel):
    """Hold the current canary weight."""

    duration: Duration | None = None
    """How long to hold (``10m``). Without it the rollout waits until promoted by hand
    (annotation ``recsys.dev/promote``)."""


class Shadow(ApiModel):
    """Mirror stable requests to the canary without serving its answers."""

    duration: Duration
    """How long to mirror (``5m``)."""
    percent: Annotated[int, Field(ge=1, le=100)] = 100
    """Share of the stable's requests the canary also answers, in the background."""


class CanaryStep(ApiModel):
    """One step of a canary: set a traffic weight, pause, or shadow. As an Argo Rollouts step,
    plus ``shadow``: for its duration the canary also answers a sample of the stable's requests
    without serving them; the gateways record how its ranked lists agree with the stable's
    (overlap@k, rank correlation) and its latency, which the ``shadow-*`` analysis metrics
    judge."""

    __rules__ = (
        Rule(
            cel="[has(self.setWeight), has(self.pause), has(self.shadow)].filter(x, x).size() == 1",
            message="a step has exactly one of setWeight, pause or shadow: split it into steps",
            check=lambda m: [m.set_weight, m.pause, m.shadow].count(None) == 2,
        ),
    )

    set_weight: Annotated[int, Field(ge=1, le=100)] | None = None
    """Percentage of users sent to the canary version from this step on."""
    pause: Pause | None = None
    """Hold the weight, for a duration or until promoted; analysis keeps running."""
    shadow: Shadow | None = None
    """Mirror a share of the stable's requests to the canary for a duration."""


AnalysisMetricName = Literal[
    "request-success-rate",
    "request-duration",
    "fallback-rate",
    "click-through-rate",
    "conversion-rate",
    "shadow-overlap",
    "shadow-rank-correlation",
    "shadow-duration",
]
RELATIVE_METRICS = ("click-through-rate", "conversion-rate")
BUILT_IN_METRICS: tuple[str, ...] = get_args(AnalysisMetricName)
#: The placeholders a Prometheus query may use (recsys_operator.prometheus renders them).
QUERY_PLACEHOLDERS = ("variant", "modelVersion", "interval", "namespace", "recommender")
_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")


class PrometheusQuery(ApiModel):
    """A metric read from Prometheus, as a Flagger ``MetricTemplate``: one PromQL template,
    rendered for the canary and for the stable. It must return one number (aggregate with
    ``sum``/``avg``); no data is Inconclusive."""

    __rules__ = (
        Rule(
            cel="self.query.findAll('\\\\{\\\\{[^}]*\\\\}\\\\}').all(p, p.matches("
            "'^\\\\{\\\\{ *(variant|modelVersion|interval|namespace|recommender) "
            "*\\\\}\\\\}$'))",
            message="uses an unknown placeholder: the query may use {{variant}}, "
            "{{modelVersion}}, {{interval}}, {{namespace}} and {{recommender}}",
            field_path=".query",
            check=lambda m: all(
                name in QUERY_PLACEHOLDERS for name in _PLACEHOLDER.findall(m.query)
            ),
        ),
    )

    address: Annotated[str, Field(min_length=8, max_length=512, pattern=r"^https?://[^\s]+$")]
    """Prometheus' base URL, e.g. ``http://prometheus.monitoring:9090``."""
    query: Annotated[str, Field(min_length=1, max_length=4096)]
    """PromQL with ``{{variant}}`` (canary / stable, the gateway metrics' label),
    ``{{modelVersion}}``, ``{{interval}}`` (the metric's window), ``{{namespace}}`` and
    ``{{recommender}}``, e.g. ``sum(rate(recsys_gateway_requests_total{variant="{{variant}}",
    code="200"}[{{interval}}])) / sum(rate(recsys_gateway_requests_total{variant=
    "{{variant}}"}[{{interval}}])) * 100``."""


MetricName = Annotated[
    str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
]


class AnalysisMetric(ApiModel):
    """A metric of the canary checked at every analysis interval, as a Flagger metric.

    The gateways count every variant's traffic in Redis; no Prometheus is needed. The traffic
    metrics (success rate, duration, fallback rate) are the canary's own over the last
    ``interval``. The business metrics (click-through-rate, conversion-rate) compare the canary
    with the stable over everything since the rollout began, counting an event only toward
    the impression that caused it and only within ``attributionWindow``, and judge only
    impressions whose window has closed. They use a sequential test (an always-valid
    confidence interval), so checking again at every interval does not raise the chance of a
    false abort; too few impressions is inconclusive, not failed."""

    __rules__ = (
        Rule(
            cel="!has(self.eventType) || self.name == 'conversion-rate'",
            message="eventType applies only to conversion-rate; remove it",
            check=lambda m: m.event_type is None or m.name == "conversion-rate",
        ),
        Rule(
            cel="has(self.prometheus) != (self.name in "
            + str(list(BUILT_IN_METRICS)).replace('"', "'")
            + ")",
            message="is a built-in metric name without prometheus, or any other name with a "
            "prometheus query: " + ", ".join(BUILT_IN_METRICS) + " are built in",
            field_path=".name",
            check=lambda m: (m.prometheus is not None) != (m.name in BUILT_IN_METRICS),
        ),
    )

    name: MetricName
    """request-success-rate: % of requests answered without error (Flagger's built-in);
    request-duration: p99 latency in milliseconds (Flagger's built-in);
    fallback-rate: % of responses served from fallback items;
    click-through-rate: the canary's clicks per impression as % of the stable's;
    conversion-rate: the same for ``eventType`` events;
    shadow-overlap: % of the stable's top-k the canary also ranks in its top-k, on mirrored
    requests (a ``shadow`` step); shadow-rank-correlation: Spearman's rho of the shared items'
    order (-1 to 1); shadow-duration: the canary's p99 latency in ms on mirrored requests."""
    threshold_range: ThresholdRange
    """Bounds the metric must stay within, e.g. ``{min: 99}`` for success rate,
    ``{max: 50}`` for request-duration, ``{min: 95}`` for click-through-rate (the canary's
    CTR at least 95 % of the stable's)."""
    interval: Duration | None = None
    """Window a traffic metric is computed over; the analysis interval when unset. Business
    metrics always count from the start of the rollout."""
    event_type: Literal["purchase", "click"] | None = None
    """The outcome event conversion-rate counts (``purchase`` when unset)."""
    prometheus: PrometheusQuery | None = None
    """Read this metric from Prometheus instead (any name but the built-in ones); its
    ``thresholdRange`` bounds the canary's value."""


def _default_analysis_metrics() -> list[AnalysisMetric]:
    return [AnalysisMetric(name="request-success-rate", threshold_range=ThresholdRange(min=99.0))]


class Analysis(ApiModel):
    """How the canary is judged. A check fails when any metric leaves its range; after
    ``failureLimit`` failed checks the canary is rolled back."""

    interval: Duration = "1m"
    """Time between checks."""
    failure_limit: Annotated[int, Field(ge=1, le=100)] = 3
    """Failed checks that roll the canary back (Flagger's ``threshold``). A failed check also
    holds the steps until a check passes."""
    min_requests: Annotated[int, Field(ge=0, le=100000000)] = 100
    """Requests the canary must have served in a window before a check counts; fewer makes
    the check inconclusive, not failed."""
    min_impressions: Annotated[int, Field(ge=0, le=1000000000)] = 1000
    """Closed impressions each side needs before a business metric is judged."""
    attribution_window: Duration = "30m"
    """How long after an impression a click or purchase still counts toward it. A business
    metric judges only impressions at least this old."""
    metrics: Annotated[
        list[AnalysisMetric], Field(min_length=1, max_length=8), ListMap(("name",))
    ] = Field(default_factory=_default_analysis_metrics)
    """Metrics checked at each interval; by default a success rate of at least 99%."""


def _default_steps() -> list[CanaryStep]:
    return [
        CanaryStep(set_weight=10),
        CanaryStep(pause=Pause(duration="10m")),
        CanaryStep(set_weight=50),
        CanaryStep(pause=Pause(duration="10m")),
    ]


def _weights(steps: list[CanaryStep]) -> list[int]:
    return [s.set_weight for s in steps if s.set_weight is not None]


def _strictly_increasing(values: list[int]) -> bool:
    return all(a < b for a, b in pairwise(values))


class Rollout(ApiModel):
    """How a new ModelVersion replaces the serving one.

    The new version starts as a canary: steps raise its share of users (setWeight) and hold
    it (pause), as Argo Rollouts steps do; at every analysis interval its live metrics are
    checked against their thresholdRange, as in Flagger. After failureLimit failed checks it
    is rolled back; after the last step it is promoted to 100% and becomes stable. A version
    is promoted or rolled back together with the ANN index built from its embeddings.

    Example: steps [{setWeight: 10}, {pause: {duration: 10m}}, {setWeight: 50},
    {pause: {duration: 10m}}] with analysis.metrics [{name: request-success-rate,
    thresholdRange: {min: 99}}]. To roll back declaratively, set
    spec.serving.pinnedModelVersion; to hold a rollout, set paused: true.
    """

    __rules__ = (
        Rule(
            cel="!has(self.steps) || "
            "(self.steps.filter(s, has(s.setWeight)).map(s, s.setWeight).isSorted() && "
            "self.steps.filter(s, has(s.setWeight)).all(s, "
            "self.steps.filter(t, has(t.setWeight) && t.setWeight == s.setWeight).size() == 1))",
            message="setWeight must be strictly increasing from step to step (e.g. 10, 25, 50): "
            "reorder the steps or remove the repeated weight",
            field_path=".steps",
            check=lambda m: _strictly_increasing(_weights(m.steps)),
        ),
    )

    paused: bool = False
    """Freeze the rollout where it is (weights stay; no step advances, no promotion)."""
    steps: Annotated[list[CanaryStep], Field(max_length=20, json_schema_extra=ATOMIC)] = Field(
        default_factory=_default_steps
    )
    """Canary steps in order. After the last step the canary is promoted to 100%. Empty:
    a new version replaces the serving one at once."""
    analysis: Analysis = Field(default_factory=Analysis)
    """Metrics and limits that judge the canary."""
    user_sticky: bool = True
    """Assign users to stable or canary by a hash of the user id, so each user sees one
    version for the whole rollout (a growing weight only moves users to the canary)."""
    rollback_window: Duration = "1h"
    """How long the previous version and its index are kept ready after a promotion, so a
    rollback is instant."""
    max_feature_staleness: Duration | None = None
    """Hold the canary's steps (and its promotion) while a FeatureView the Recommender reads
    last materialized longer ago than this (or never did): a canary judged on stale features
    is judged on the wrong inputs. Unset: no such gate."""


#: A share of users as Kubernetes writes one (``maxSurge: 25%``): 1 to 100 and a percent sign.
SHARE_PATTERN = r"^([1-9][0-9]?|100)%$"
_SHARE = re.compile(SHARE_PATTERN)
#: The recent-traffic window the most active users are counted over when ``window`` is unset.
DEFAULT_AUDIENCE_WINDOW = "24h"


#: ``x-kubernetes-int-or-string``: a count (``10000``) or a share (``"5%"``), as Deployments'
#: ``maxSurge`` takes one; the audience's rule checks both forms, with one message for both.
CountOrShare = Annotated[
    int | str,
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
        }
    ),
]


class PrecomputeAudience(ApiModel):
    """The users whose lists are computed ahead: the most active ones by recent traffic
    (the head, where a stored list saves the most work), or all users."""

    __rules__ = (
        Rule(
            cel="has(self.mostActive) != (has(self.all) && self.all)",
            message="name the audience with exactly one of mostActive (a count such as 10000 "
            "or a share such as '5%') or all: true",
            check=lambda m: (m.most_active is not None) != m.all,
        ),
        Rule(
            cel="!has(self.mostActive) || (type(self.mostActive) == int ? "
            "self.mostActive >= 1 && self.mostActive <= 100000000 : "
            "self.mostActive.matches('" + SHARE_PATTERN + "'))",
            message="must be a count of users (1 to 100000000) or a share written '1%' to "
            "'100%', e.g. 10000 or '5%'",
            field_path=".mostActive",
            check=lambda m: (
                m.most_active is None
                or (isinstance(m.most_active, int) and 1 <= m.most_active <= 100_000_000)
                or (isinstance(m.most_active, str) and bool(_SHARE.match(m.most_active)))
            ),
        ),
        Rule(
            cel="!has(self.window) || has(self.mostActive)",
            message="window counts recent traffic for mostActive; remove it with all: true",
            field_path=".window",
            check=lambda m: m.window is None or m.most_active is not None,
        ),
    )

    most_active: CountOrShare | None = None
    """The users with the most served requests in ``window``: a count (``10000``) or a share
    of the users active in the window (``"5%"``)."""
    window: Duration | None = None
    """How far back requests are counted for ``mostActive`` (``24h`` when unset); users
    with no request in it are the tail, served live."""
    all: bool = False
    """Every user with features online (the user FeatureViews' keys), for catalogs where
    batch lists for everyone are cheap enough."""


#: How lists computed ahead are served: beside live computation, or instead of it.
PrecomputeMode = Literal["Hybrid", "Batch"]


class Precompute(ApiModel):
    """Serving from lists computed ahead: a CronJob computes the top-N lists of an audience
    with the stable version, through the gateway's own stages, and stores them in Redis; the
    gateway serves a stored list (after the live filters and ordering) instead of calling
    Triton. A list carries its model version and time: the gateway ignores one of another
    version than the user's variant, or one older than ``maxAge``, so after a promotion no
    user gets the previous version's list (the operator also runs a Job for the new version
    at once).

    ``mode: Hybrid`` computes live for everyone else, on the versions' Triton Deployments.
    ``mode: Batch`` runs no Triton Deployment at all: each precompute Job runs Triton inside
    its own pod, beside the computation, and the gateway serves stored lists only; a user
    without a usable list gets the version's popular items (``fallback: no-list``)."""

    mode: PrecomputeMode = "Hybrid"
    """Hybrid: stored lists for the audience, live computation on Triton for everyone else.
    Batch: no Triton Deployment, Service or autoscaler; the precompute Jobs run Triton in
    their own pod (a native sidecar) and the gateway serves stored lists only, popular items
    to users without one. After a promotion, until the new version's Job has written its
    lists, its users get popular items. Batch has no live traffic to judge a canary on, so it
    needs ``rollout.steps: []`` (a new version replaces the stable at once), no Triton
    ``autoscaling`` and Triton ``replicas`` left at 1; ``audience.all: true`` gives every user
    a list."""
    schedule: Cron
    """Cron schedule of the pre-computation CronJob (``0 * * * *``: hourly)."""
    time_zone: TimeZone | None = None
    """IANA time zone the schedule is read in."""
    suspend: bool = False
    """Stop scheduling runs; stored lists are still served until ``maxAge``."""
    audience: PrecomputeAudience
    """Whose lists are computed."""
    top_n: Annotated[int, Field(ge=1, le=1000)] = 100
    """Items stored per user, before the live filters; at least ``ranking.topK`` and at most
    ``retrieval.numCandidates``. More than topK leaves room for what the live filters remove
    since the list was computed (a list with fewer than k items left is not served)."""
    max_age: Duration = "24h"
    """The oldest stored list the gateway serves (and the lists' TTL in Redis); set it a
    little above the schedule's period, so a late run does not send the head to live
    computation."""


def _batch(m: Serving) -> bool:
    return m.precompute is not None and m.precompute.mode == "Batch"


#: CEL for "the Recommender serves in Batch mode" (on ``Serving``).
_BATCH_CEL = "has(self.precompute) && has(self.precompute.mode) && self.precompute.mode == 'Batch'"


class Serving(ApiModel):
    """The online side: workloads, rollout, and an optional pinned version."""

    __rules__ = (
        Rule(
            cel=f"!({_BATCH_CEL}) || !has(self.rollout) || !has(self.rollout.steps) "
            "|| self.rollout.steps.size() == 0",
            message="precompute.mode Batch serves no live traffic, so a canary's steps (setWeight, "
            "pause, shadow) have nothing to judge: set rollout.steps: [] (a new version then "
            "replaces the stable at once) or use mode Hybrid",
            field_path=".rollout.steps",
            check=lambda m: not _batch(m) or not m.rollout.steps,
        ),
        Rule(
            cel=f"!({_BATCH_CEL}) || !has(self.triton) || !has(self.triton.autoscaling)",
            message="precompute.mode Batch runs no Triton Deployment for an autoscaler to scale "
            "(Triton runs inside each precompute Job): remove triton.autoscaling or use mode "
            "Hybrid",
            field_path=".triton.autoscaling",
            check=lambda m: not _batch(m) or m.triton.autoscaling is None,
        ),
        Rule(
            cel=f"!({_BATCH_CEL}) || !has(self.triton) || !has(self.triton.replicas) "
            "|| self.triton.replicas == 1",
            message="precompute.mode Batch runs no Triton Deployment to size (each precompute "
            "Job runs one Triton in its pod): remove triton.replicas (or set it to 1) or use mode "
            "Hybrid",
            field_path=".triton.replicas",
            check=lambda m: not _batch(m) or m.triton.replicas == 1,
        ),
    )

    triton: TritonServing = Field(default_factory=TritonServing)
    """The Triton model server."""
    gateway: GatewayServing = Field(default_factory=GatewayServing)
    """The recommendation gateway."""
    rollout: Rollout = Field(default_factory=Rollout)
    """Canary rollout of new ModelVersions."""
    pinned_model_version: Name | None = None
    """Serve exactly this ModelVersion (of this Recommender) and nothing else: a declarative
    rollback that a GitOps repository can hold. New versions are still trained but not
    rolled out while it is set; remove it to resume rollouts."""
    precompute: Precompute | None = None
    """Pre-compute the head's lists with the stable version (hybrid serving), or everyone's
    with no Triton Deployment at all (``mode: Batch``); off when unset, and removing it
    removes the CronJob."""
