"""Recommender: one recommender system, run as a closed loop — data, models, training,
serving, rollout and drift-triggered retraining. It owns its ModelVersions."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field

from recsys_contract.drift import THRESHOLD_RANGES
from recsys_operator.api.base import ApiModel, ListMap, ListSet, Rule
from recsys_operator.api.common import (
    ATOMIC,
    Conditions,
    Cron,
    Duration,
    Fraction,
    Identifier,
    Name,
    StorageUri,
    Timestamp,
    TimeZone,
)
from recsys_operator.api.kinds import AGE, ApiObject, KindInfo, PrinterColumn
from recsys_operator.api.serving import Serving
from recsys_operator.api.stores import ArtifactStore, RedisStore
from recsys_operator.api.training import Training

# --- data ---------------------------------------------------------------------------------------


class InteractionsSource(ApiModel):
    """The log of who interacted with what and when: the training data."""

    __rules__ = (
        Rule(
            cel="self.userIdColumn != self.itemIdColumn",
            message="must differ from userIdColumn: users and items need their own columns",
            field_path=".itemIdColumn",
            check=lambda m: m.user_id_column != m.item_id_column,
        ),
    )

    path: StorageUri
    """Parquet file or directory, any fsspec URI (``s3://bucket/interactions/``)."""
    user_id_column: Identifier = "user_id"
    """Column with the user id (the user FeatureViews' join key)."""
    item_id_column: Identifier = "item_id"
    """Column with the item id (the item FeatureViews' join key)."""
    timestamp_field: Identifier = "event_timestamp"
    """Event-time column; evaluation holds out the newest interactions by it."""
    label_column: Identifier | None = None
    """Optional outcome column (clicked, rating); unset means every row is a positive
    interaction (implicit feedback)."""


class FeatureViewRef(ApiModel):
    """A FeatureView (same namespace) and the features taken from it."""

    name: Name
    """Name of the FeatureView."""
    features: Annotated[list[Identifier], Field(min_length=1, max_length=200), ListSet()] | None = (
        None
    )
    """Features to use; all of the FeatureView's when unset."""


FeatureViewList = Annotated[list[FeatureViewRef], Field(max_length=8), ListMap(("name",))]


class FeatureViews(ApiModel):
    """The FeatureViews that describe users and items."""

    __rules__ = (
        Rule(
            cel="!has(self.user) || !has(self.item) || "
            "self.user.all(u, !self.item.exists(i, i.name == u.name))",
            message="a FeatureView describes one entity: list it under user or item, not both",
            field_path=".item",
            check=lambda m: (
                not m.user
                or not m.item
                or not ({u.name for u in m.user} & {i.name for i in m.item})
            ),
        ),
    )

    user: FeatureViewList | None = None
    """FeatureViews keyed by the user id; read at request time from the online store."""
    item: FeatureViewList | None = None
    """FeatureViews keyed by the item id; used to embed items and to rank them."""


# --- models -------------------------------------------------------------------------------------


class HnswParams(ApiModel):
    """Parameters of an HNSW graph index (names as in the HNSW paper and FAISS)."""

    __rules__ = (
        Rule(
            cel="self.efConstruction >= self.m",
            message="must be at least m: raise efConstruction or lower m",
            field_path=".efConstruction",
            check=lambda m: m.ef_construction >= m.m,
        ),
    )

    m: Annotated[int, Field(ge=4, le=128)] = 32
    """Neighbours per node (M): more improves recall and costs memory and build time."""
    ef_construction: Annotated[int, Field(ge=8, le=4096)] = 200
    """Candidate list size while building; more gives a better graph, slower."""
    ef_search: Annotated[int, Field(ge=1, le=4096)] = 128
    """Candidate list size while searching; more raises recall and latency."""


class IvfParams(ApiModel):
    """Parameters of an inverted-file index."""

    __rules__ = (
        Rule(
            cel="self.nprobe <= self.nlist",
            message="must not exceed nlist (there are only nlist lists to probe): "
            "lower nprobe or raise nlist",
            field_path=".nprobe",
            check=lambda m: m.nprobe <= m.nlist,
        ),
    )

    nlist: Annotated[int, Field(ge=1, le=65536)] = 1024
    """Number of k-means clusters (inverted lists), at most one per item: a catalogue with
    fewer items gets as many lists as it has items. About 4·sqrt(items) is a common choice."""
    nprobe: Annotated[int, Field(ge=1, le=65536)] = 16
    """Clusters searched per query; more raises recall and latency. When the index misses
    minRecall at this value, the index build raises it until recall passes (the value used is
    in the index manifest)."""


class AnnIndex(ApiModel):
    """The approximate-nearest-neighbour index over item embeddings. Each ModelVersion gets
    its own index; serving follows an alias that moves only when a version is promoted."""

    __rules__ = (
        Rule(
            cel="self.type == 'HNSW' || !has(self.hnsw)",
            message="applies only to type HNSW: remove hnsw or set type: HNSW",
            field_path=".hnsw",
            check=lambda m: m.type == "HNSW" or m.hnsw is None,
        ),
        Rule(
            cel="self.type == 'IVFFlat' || !has(self.ivf)",
            message="applies only to type IVFFlat: remove ivf or set type: IVFFlat",
            field_path=".ivf",
            check=lambda m: m.type == "IVFFlat" or m.ivf is None,
        ),
        Rule(
            cel="!has(self.metric) || self.metric == 'InnerProduct'",
            message="L2 is not supported yet: the two-tower model ends in L2-normalised "
            "vectors trained for inner product (cosine), on which L2 finds the same neighbours; "
            "remove metric or set InnerProduct",
            field_path=".metric",
            check=lambda m: m.metric == "InnerProduct",
        ),
    )

    type: Literal["HNSW", "IVFFlat", "Flat"] = "HNSW"
    """HNSW: graph index, the best recall/latency for most catalogues; IVFFlat: k-means
    clusters (FAISS ``IndexIVFFlat``), searched ``nprobe`` at a time, less memory and a faster
    build; Flat: exact search, for small catalogues and for checking the others. HNSW and
    IVFFlat are checked against exact search (minRecall) before their version may serve."""
    metric: Literal["InnerProduct", "L2"] = "InnerProduct"
    """Similarity the index searches by. InnerProduct: the dot product, a cosine here because
    the towers end in L2-normalised vectors (the model is trained for it). L2 is refused for
    now: on normalised vectors it finds the same neighbours."""
    hnsw: HnswParams | None = None
    """HNSW parameters; defaults when unset."""
    ivf: IvfParams | None = None
    """IVFFlat parameters; defaults when unset."""
    flat_below_items: Annotated[int, Field(ge=0, le=100000000)] = 10000
    """Catalogues with fewer items get an exact Flat index whatever the type: as fast, and
    exact."""
    min_recall: Fraction = 0.95
    """Recall@K of the index against exact search that a new index must reach before its
    version can be promoted."""


class Retrieval(ApiModel):
    """Stage one of serving: find candidates for a user among all items."""

    model: Literal["TwoTower"] = "TwoTower"
    """TwoTower: a user tower and an item tower map ids and features into one embedding
    space; items are retrieved by nearest neighbour search."""
    embedding_dim: Annotated[int, Field(ge=8, le=1024)] = 64
    """Size of the user and item embeddings (and of the index vectors)."""
    hidden_units: (
        Annotated[
            list[Annotated[int, Field(ge=1, le=8192)]],
            Field(min_length=1, max_length=8),
            Field(json_schema_extra=ATOMIC),
        ]
        | None
    ) = None
    """Widths of the hidden layers of each tower's MLP (user and item tower alike), e.g.
    ``[256, 128]``; the tower then ends in a layer of embeddingDim. ``[128]`` when unset."""
    num_candidates: Annotated[int, Field(ge=1, le=10000)] = 200
    """Candidates retrieved per request and passed on to filtering and ranking."""
    index: AnnIndex = Field(default_factory=AnnIndex)
    """The ANN index over item embeddings."""


class Ranking(ApiModel):
    """Stage three of serving: score the filtered candidates and keep the best."""

    model: Literal["DCN"] = "DCN"
    """DCN: a deep & cross network over user, item and cross features."""
    top_k: Annotated[int, Field(ge=1, le=1000)] = 20
    """Items returned per request unless the request asks for fewer."""
    cross_layers: Annotated[int, Field(ge=0, le=8)] = 2
    """Cross layers of the DCN."""
    hidden_units: (
        Annotated[
            list[Annotated[int, Field(ge=1, le=8192)]],
            Field(min_length=1, max_length=8),
            Field(json_schema_extra=ATOMIC),
        ]
        | None
    ) = None
    """Widths of the hidden layers of the DCN's deep part (the MLP after the cross layers,
    which ends in one logit), e.g. ``[256, 128]``. ``[128, 64]`` when unset."""


# --- business rules -----------------------------------------------------------------------------

_NUMBER = r"^-?[0-9]+([.][0-9]+)?$"


class MatchExpression(ApiModel):
    """A condition on an item feature, in the shape of a Kubernetes label selector
    requirement (``key``, ``operator``, ``values``)."""

    __rules__ = (
        Rule(
            cel="!(self.operator in ['In', 'NotIn']) || (has(self.values) && "
            "size(self.values) > 0)",
            message="In and NotIn need at least one value: add values",
            field_path=".values",
            reason="FieldValueRequired",
            check=lambda m: m.operator not in ("In", "NotIn") or bool(m.values),
        ),
        Rule(
            cel="!(self.operator in ['Exists', 'DoesNotExist']) || !has(self.values) || "
            "size(self.values) == 0",
            message="Exists and DoesNotExist take no values: remove values",
            field_path=".values",
            reason="FieldValueForbidden",
            check=lambda m: m.operator not in ("Exists", "DoesNotExist") or not m.values,
        ),
        Rule(
            cel="!(self.operator in ['Gt', 'Lt']) || (has(self.values) && "
            f"size(self.values) == 1 && self.values[0].matches('{_NUMBER}'))",
            message="Gt and Lt take exactly one numeric value, e.g. values: ['4.5']",
            field_path=".values",
            check=lambda m: (
                m.operator not in ("Gt", "Lt")
                or (m.values is not None and len(m.values) == 1 and _is_number(m.values[0]))
            ),
        ),
    )

    key: Identifier
    """Item feature to test (a feature of an item FeatureView)."""
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]
    """In/NotIn: the value is (not) among values; Exists/DoesNotExist: the item has (no)
    value; Gt/Lt: the numeric value is greater/less than the one value."""
    values: (
        Annotated[
            list[Annotated[str, Field(max_length=256)]],
            Field(max_length=64),
            Field(json_schema_extra=ATOMIC),
        ]
        | None
    ) = None
    """Values compared against, as strings."""


def _is_number(text: str) -> bool:
    return re.fullmatch(_NUMBER, text) is not None


MatchExpressions = Annotated[
    list[MatchExpression], Field(min_length=1, max_length=16, json_schema_extra=ATOMIC)
]


class ItemSelector(ApiModel):
    """Which items may be recommended at all."""

    match_expressions: MatchExpressions
    """Conditions an item must meet, all of them."""


class Filtering(ApiModel):
    """Stage two of serving: remove candidates that must not be shown."""

    exclude_seen: bool = True
    """Remove items the user already interacted with."""
    seen_window: Duration | None = None
    """How far back an interaction counts as seen (``720h``); all history when unset."""
    exclude_blocked: bool = True
    """Remove items on the block lists in the online store (one global, one per user)."""
    item_selector: ItemSelector | None = None
    """Only recommend items that match, e.g. in stock."""


class Boost(ApiModel):
    """Multiply the score of items that match."""

    name: Name
    """Name of the rule, shown in metrics."""
    match_expressions: MatchExpressions
    """Conditions an item must meet, all of them."""
    factor: Annotated[float, Field(gt=0.0, le=100.0)]
    """Score multiplier: above 1 promotes, below 1 demotes."""


class Diversity(ApiModel):
    """Limit how many results may share a value, e.g. at most 3 items per genre."""

    key: Identifier
    """Item feature whose values are spread out."""
    max_per_value: Annotated[int, Field(ge=1, le=1000)]
    """Most results with the same value of key."""


class Ordering(ApiModel):
    """Stage four of serving: business rules applied to the ranked list. Duplicates are
    always removed."""

    boosts: Annotated[list[Boost], Field(max_length=16), ListMap(("name",))] | None = None
    """Score multipliers for matching items, applied in order."""
    diversity: Diversity | None = None
    """A cap on results sharing one value."""


# --- drift --------------------------------------------------------------------------------------


def _threshold_in_range(m: Drift) -> bool:
    low, high = THRESHOLD_RANGES[m.method]
    return m.threshold is None or low <= m.threshold <= high


class Drift(ApiModel):
    """Compare what serving sees with what the serving model was trained on, and act when
    they part."""

    __rules__ = (
        Rule(
            cel="!has(self.threshold) || (self.method == 'PSI' ? "
            "(self.threshold >= 0.01 && self.threshold <= 2.0) : "
            "(self.threshold >= 0.001 && self.threshold <= 1.0))",
            message="out of range for the method: PSI takes 0.01–2 (0.1 moderate, "
            "0.25 major shift), KL takes 0.001–1; adjust threshold or method",
            field_path=".threshold",
            check=_threshold_in_range,
        ),
    )

    schedule: Cron
    """Cron schedule of the drift check CronJob (``0 * * * *``: hourly)."""
    time_zone: TimeZone | None = None
    """IANA time zone the schedule is read in."""
    suspend: bool = False
    """Stop the checks."""
    method: Literal["PSI", "KL"] = "PSI"
    """PSI: population stability index over binned feature values; KL: Kullback–Leibler
    divergence of serving from training."""
    threshold: float | None = None
    """Score above which a feature counts as drifted. PSI: 0.01–2 (default 0.2);
    KL: 0.001–1 (default 0.1)."""
    consecutive_checks: Annotated[int, Field(ge=1, le=100)] = 2
    """Checks in a row that must exceed the threshold before acting, so one noisy sample
    does not retrain."""
    action: Literal["Retrain", "Alert"] = "Retrain"
    """Retrain: create a new ModelVersion (reason Drift) that goes through the gate and the
    canary; Alert: only set the Drifted condition and an Event."""
    cooldown: Duration = "6h"
    """Least time between two actions, however long drift lasts."""
    sample_size: Annotated[int, Field(ge=100, le=10000000)] = 10000
    """Logged serving requests sampled per check."""
    features: Annotated[list[Identifier], Field(min_length=1, max_length=200), ListSet()] | None = (
        None
    )
    """Features to monitor; all features the model uses when unset."""


# --- the spec -----------------------------------------------------------------------------------


class Stores(ApiModel):
    """Where the Recommender keeps state outside Kubernetes."""

    redis: RedisStore
    """Online store of the gateway: routing table, index alias, seen and blocked items, and
    the log of served responses."""
    artifacts: ArtifactStore
    """Model artifacts, item embeddings and indexes."""


class RecommenderSpec(ApiModel):
    """Desired state of a Recommender."""

    __rules__ = (
        Rule(
            cel="self.ranking.topK <= self.retrieval.numCandidates",
            message="ranking.topK must not exceed retrieval.numCandidates: ranking can only "
            "order the candidates retrieval found; raise numCandidates or lower topK",
            field_path=".ranking.topK",
            check=lambda m: m.ranking.top_k <= m.retrieval.num_candidates,
        ),
        Rule(
            cel="!has(self.serving.precompute) || "
            "(self.serving.precompute.topN >= self.ranking.topK && "
            "self.serving.precompute.topN <= self.retrieval.numCandidates)",
            message="serving.precompute.topN must be between ranking.topK and "
            "retrieval.numCandidates: a stored list shorter than topK is never served, and "
            "no list holds more than the candidates; change topN",
            field_path=".serving.precompute.topN",
            check=lambda m: (
                m.serving.precompute is None
                or m.ranking.top_k <= m.serving.precompute.top_n <= m.retrieval.num_candidates
            ),
        ),
    )

    interactions: InteractionsSource
    """The interactions log that models are trained on."""
    feature_views: FeatureViews | None = None
    """User and item features; without them the models learn from ids alone."""
    retrieval: Retrieval = Field(default_factory=Retrieval)
    """Candidate retrieval: the two-tower model and its ANN index."""
    ranking: Ranking = Field(default_factory=Ranking)
    """The ranking model and how many items a response carries."""
    filtering: Filtering = Field(default_factory=Filtering)
    """Candidates removed before ranking."""
    ordering: Ordering | None = None
    """Business rules applied after ranking."""
    training: Training = Field(default_factory=Training)
    """When and how models are trained, and the gate they must pass."""
    serving: Serving = Field(default_factory=Serving)
    """Serving workloads, rollout of new versions, and rollback."""
    drift: Drift | None = None
    """Drift detection; off when unset."""
    stores: Stores
    """Redis and the artifact store."""
    revision_history_limit: Annotated[int, Field(ge=0, le=100)] = 5
    """Retired ModelVersions kept for rollback; older ones are deleted."""


# --- status -------------------------------------------------------------------------------------


RolloutPhase = Literal["Progressing", "Paused", "Promoting", "Healthy", "Aborted"]
Verdict = Literal["Passed", "Failed", "Inconclusive"]


class MetricResult(ApiModel):
    """One metric of one analysis check, for canary and stable."""

    name: Annotated[str, Field(max_length=63)]
    """The metric (``spec.serving.rollout.analysis.metrics[].name``)."""
    canary: float | None = None
    """The canary's value (for click-through-rate and conversion-rate its rate in %; the
    message gives it as % of stable's, what the range bounds)."""
    stable: float | None = None
    """The stable's value over the same window, where it has one."""
    min: float | None = None
    """The range's lower bound."""
    max: float | None = None
    """The range's upper bound."""
    verdict: Verdict
    """Passed, Failed, or Inconclusive (too little data, or not yet decided)."""
    message: Annotated[str, Field(max_length=1024)] | None = None
    """The numbers behind the verdict."""


class AnalysisResult(ApiModel):
    """One analysis check of the canary."""

    time: Timestamp
    """When the check ran."""
    verdict: Verdict
    """Failed when any metric failed; Inconclusive when any could not decide."""
    metrics: Annotated[list[MetricResult], Field(max_length=8)] = Field(default_factory=list)
    """Each metric's result."""


class ShadowStatus(ApiModel):
    """How the canary answered the stable requests mirrored to it, since the rollout began."""

    requests: Annotated[int, Field(ge=0)] | None = None
    """Stable requests the canary also answered."""
    errors: Annotated[int, Field(ge=0)] | None = None
    """Of those, answered with an error or fallback items."""
    overlap: float | None = None
    """Mean overlap@k with the stable's served list, in %."""
    rank_correlation: float | None = None
    """Mean Spearman's rho of the shared items' order (-1 to 1)."""
    p99_ms: float | None = None
    """The canary's p99 latency on them, in ms."""


class RolloutStatus(ApiModel):
    """Where the rollout stands: the one place a version's serving role is written."""

    phase: RolloutPhase | None = None
    """Progressing: canary steps run; Paused: held by a pause step, by spec paused, or until
    promoted (pauseReason says which); Promoting: waiting for every gateway replica to load the
    new version before it becomes stable; Healthy: one stable version serves everyone;
    Aborted: the canary was rolled back and traffic is on the stable."""
    pause_reason: Literal["PauseStep", "AwaitingPromote", "UserPaused"] | None = None
    """Why the rollout is Paused."""
    stable: Name | None = None
    """The ModelVersion serving every user outside the canary."""
    canary: Name | None = None
    """The ModelVersion being rolled out."""
    canary_weight: Annotated[int, Field(ge=0, le=100)] | None = None
    """Percentage of users sent to the canary."""
    current_step_index: Annotated[int, Field(ge=0, le=20)] | None = None
    """Index of the step being executed; the number of steps once all are done."""
    step_started_at: Timestamp | None = None
    """When the current step began: a pause's duration counts from here."""
    start_time: Timestamp | None = None
    """When the current rollout began; the analysis counts traffic from here."""
    failed_checks: Annotated[int, Field(ge=0)] | None = None
    """Failed analysis checks of the current canary."""
    last_check_time: Timestamp | None = None
    """When the last analysis check ran; the next one is an interval later."""
    analysis: Annotated[list[AnalysisResult], Field(max_length=5)] | None = None
    """The last analysis checks, newest last."""
    shadow: ShadowStatus | None = None
    """The canary's answers to mirrored stable requests (shadow steps), at the last check."""
    previous_stable: Name | None = None
    """The version replaced by the last promotion, kept ready (its Triton and its index) so a
    rollback is a routing change."""
    previous_stable_until: Timestamp | None = None
    """When the previous stable's rollback window ends and it is removed."""
    aborted_version: Name | None = None
    """The last version rolled back; it is not rolled out again."""
    last_promote_token: Annotated[str, Field(max_length=253)] | None = None
    """The ``recsys.dev/promote`` value last acted on (each value acts once)."""
    last_abort_token: Annotated[str, Field(max_length=253)] | None = None
    """The ``recsys.dev/abort`` value last acted on."""
    message: Annotated[str, Field(max_length=4096)] | None = None
    """What the rollout is doing or why it stopped, with the metric values."""


class TrainingStatus(ApiModel):
    """The most recent training run."""

    model_version: Name | None = None
    """The ModelVersion it produced."""
    reason: Literal["Initial", "Schedule", "Drift", "Manual"] | None = None
    """Why it ran."""
    start_time: Timestamp | None = None
    """When it was requested."""


class FeatureViewState(ApiModel):
    """How one FeatureView the Recommender reads stands: ready, and how fresh its data is
    (measured as the FeatureView's own ``Stale`` condition measures it)."""

    name: Name
    """The FeatureView."""
    ready: bool
    """Whether it exists and a run has made its data live."""
    stale: Literal["True", "False", "Unknown"]
    """Whether its live watermark lags past its ``maxStaleness`` (Unknown: no data live)."""
    watermark: Timestamp | None = None
    """The live data's watermark."""
    stale_after: Timestamp | None = None
    """When the data turns stale unless a newer run makes data live first."""


class DriftStatus(ApiModel):
    """Results of the drift checks."""

    last_check_time: Timestamp | None = None
    """When the last check finished."""
    scores: Annotated[dict[str, float], Field(max_length=256)] | None = None
    """Score per feature at the last check."""
    consecutive_breaches: Annotated[int, Field(ge=0)] | None = None
    """Checks in a row above the threshold."""
    last_action_time: Timestamp | None = None
    """When drift last triggered its action; the cooldown counts from here."""
    method: Literal["PSI", "KL"] | None = None
    """The method of the last check."""
    drifted_features: Annotated[list[str], Field(max_length=256)] | None = None
    """Features above the threshold at the last check."""
    last_check_job: Name | None = None
    """The Job of the last check taken into account (each is counted once)."""
    retrain_trigger: Annotated[str, Field(max_length=253)] | None = None
    """The trigger of the last retraining drift asked for (``drift/<check Job>``); the
    Recommender creates its ModelVersion once no other training runs."""


class Endpoints(ApiModel):
    """Where to reach the serving workloads inside the cluster."""

    gateway: Annotated[str, Field(max_length=512)] | None = None
    """Base URL of the gateway (``http://NAME-gateway.NAMESPACE.svc:8080``)."""
    triton: Annotated[str, Field(max_length=512)] | None = None
    """Triton's HTTP endpoint of the stable version; none in Batch mode, which runs no
    Triton Deployment."""


class RecommenderStatus(ApiModel):
    """Observed state of a Recommender, written by the operator."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The ``metadata.generation`` this status describes."""
    conditions: Conditions | None = None
    """Ready (serving a version), Progressing (training or rolling out), Degraded,
    Drifted."""
    active_index: Annotated[str, Field(max_length=253)] | None = None
    """The index version behind the serving alias."""
    rollout: RolloutStatus | None = None
    """The rollout: which versions serve, with what weight, and how the canary is judged."""
    last_training: TrainingStatus | None = None
    """The most recent training run."""
    next_training_time: Timestamp | None = None
    """When the training schedule fires next."""
    drift: DriftStatus | None = None
    """Drift check results."""
    endpoints: Endpoints | None = None
    """Service URLs."""
    feature_views: (
        Annotated[list[FeatureViewState], Field(max_length=16), ListMap(("name",))] | None
    ) = None
    """The FeatureViews the Recommender reads (``spec.featureViews``), in that order."""


class Recommender(ApiObject):
    """A Recommender object as stored by the apiserver."""

    kind: Literal["Recommender"] = "Recommender"
    spec: RecommenderSpec
    status: RecommenderStatus | None = None


RECOMMENDER = KindInfo(
    kind="Recommender",
    plural="recommenders",
    singular="recommender",
    short_names=("rec",),
    description="Recommender: a recommender system run as a closed loop. From its interactions "
    "and FeatureViews the operator trains ModelVersions (two-tower retrieval with an ANN "
    "index, then a ranking model), checks each against an evaluation gate, serves it on "
    "Triton behind a gateway, rolls it out as a canary judged by live metrics, and retrains "
    "on a schedule or when drift is detected.",
    object_model=Recommender,
    spec_model=RecommenderSpec,
    status_model=RecommenderStatus,
    printer_columns=(
        PrinterColumn(
            "Ready", "string", '.status.conditions[?(@.type=="Ready")].status',
            "Whether a version is serving.",
        ),
        PrinterColumn("Stable", "string", ".status.rollout.stable", "The stable ModelVersion."),
        PrinterColumn("Canary", "string", ".status.rollout.canary", "The canary ModelVersion."),
        PrinterColumn(
            "Weight", "integer", ".status.rollout.canaryWeight",
            "Percentage of users on the canary."
        ),
        PrinterColumn(
            "Index", "string", ".status.activeIndex", "Index behind the serving alias.",
            priority=1,
        ),
        AGE,
    ),
)  # fmt: skip
