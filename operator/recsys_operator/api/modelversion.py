"""ModelVersion: one trained model — two-tower, ranker, item embeddings and their ANN index —
immutable once created and the unit of promotion and rollback.

The operator creates one per training run; a user creates one to import a model trained
elsewhere (``storageUri``, as KServe names a model's location). A trained version goes
Pending → Training → Evaluating (the gate judges the training Job's holdout metrics) →
Indexing → Ready; an imported one goes Pending → Indexing → Ready: it is neither trained nor
evaluated, since the operator holds no holdout result for it, but its index is built and
checked like any other and its digest verified.
"""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import Field

from recsys_operator.api.base import ApiModel, Rule
from recsys_operator.api.common import (
    Conditions,
    Digest,
    Fraction,
    Name,
    StorageUri,
    SubdomainName,
    Timestamp,
)
from recsys_operator.api.kinds import AGE, ApiObject, KindInfo, PrinterColumn
from recsys_operator.api.training import TrainingOverrides

Reason = Literal["Initial", "Schedule", "Drift", "Manual"]

#: Lifecycle phases in order; Failed and Rejected end it early.
Phase = Literal[
    "Pending",
    "Training",
    "Evaluating",
    "Indexing",
    "Ready",
    "Failed",
    "Rejected",
]
PHASES: tuple[Phase, ...] = get_args(Phase)
#: Phases after which the version changes no more.
FINAL_PHASES: frozenset[Phase] = frozenset({"Ready", "Failed", "Rejected"})


class RecommenderRef(ApiModel):
    """The Recommender this version belongs to."""

    name: Name
    """Name of the Recommender, in the same namespace."""


class ModelVersionSpec(ApiModel):
    """What this version is; immutable after creation (create a new version to change it)."""

    __rules__ = (
        Rule(
            cel="!has(self.storageUri) || !has(self.training)",
            message="an imported ModelVersion (storageUri set) is not trained: remove "
            "training or storageUri",
            field_path=".training",
            reason="FieldValueForbidden",
            check=lambda m: m.storage_uri is None or m.training is None,
        ),
        Rule(
            cel="!has(self.storageUri) || self.reason == 'Manual'",
            message="an imported ModelVersion (storageUri set) has reason Manual; the other "
            "reasons belong to versions the operator trains",
            field_path=".reason",
            check=lambda m: m.storage_uri is None or m.reason == "Manual",
        ),
        Rule(
            cel="!has(self.digest) || has(self.storageUri)",
            message="verifies an imported artifact: set storageUri or remove digest",
            field_path=".digest",
            check=lambda m: m.digest is None or m.storage_uri is not None,
        ),
    )

    recommender_ref: RecommenderRef
    """The Recommender that trains and serves this version."""
    reason: Reason = "Manual"
    """Why the version exists: Initial (the Recommender's first), Schedule (the training
    schedule), Drift (drift detected), Manual (requested or imported by a user)."""
    storage_uri: StorageUri | None = None
    """Import: the artifact directory of a model trained elsewhere, in the layout the
    training Job writes. Training and the evaluation gate are skipped (phases Pending →
    Indexing → Ready): the index is built and checked against minRecall, the digest verified,
    and the canary's live analysis is what judges the model."""
    digest: Digest | None = None
    """Expected digest of the imported artifact's manifest; a mismatch fails the version."""
    training: TrainingOverrides | None = None
    """What this run trains differently from the Recommender's training section."""


class Evaluation(ApiModel):
    """Offline evaluation on the holdout, as the gate judged it (trained versions; an imported
    version carries only indexRecallAtK)."""

    k: Annotated[int, Field(ge=1, le=1000)] | None = None
    """The cut-off K of recallAtK and ndcgAtK."""
    recall_at_k: Fraction | None = None
    """Recall@K of retrieval."""
    ndcg_at_k: Fraction | None = None
    """NDCG@K of retrieval."""
    auc: Fraction | None = None
    """AUC of the ranking model."""
    index_recall_at_k: Fraction | None = None
    """Recall@K of the ANN index against exact search."""
    compared_to: Name | None = None
    """The serving version the regression limits were checked against."""
    passed: bool | None = None
    """Whether the gate let the version through."""


#: The most partitions ``status.lineage.logged.partitions`` lists (the newest ones).
LINEAGE_PARTITIONS = 100


class LoggedLineage(ApiModel):
    """The logged rows (served items joined with their outcomes) training read."""

    uri: Annotated[str, Field(max_length=2048)]
    """Where the log join writes them (``<artifacts storageUri>/logged``)."""
    since: Timestamp | None = None
    """Only rows served at or after this were read (``loggedData.lookback``)."""
    until: Timestamp | None = None
    """Only rows joined before this were read: the version's creation, so a retry reads the
    same rows."""
    partitions: Annotated[
        list[Annotated[str, Field(max_length=32)]], Field(max_length=LINEAGE_PARTITIONS)
    ] = Field(default_factory=list)
    """The dated partitions (``date=YYYY-MM-DD``) that held rows read, the newest 100 of them."""
    partition_count: Annotated[int, Field(ge=0)] = 0
    """How many partitions held rows read."""
    files: Annotated[int, Field(ge=0)] = 0
    """Partition files read."""
    rows: Annotated[int, Field(ge=0)] = 0
    """Logged rows (served items) read."""
    interactions: Annotated[int, Field(ge=0)] = 0
    """Of them, the clicked or purchased ones: each one more training interaction."""
    first_served: Timestamp | None = None
    """When the first row read was served."""
    last_served: Timestamp | None = None
    """When the last row read was served."""
    served_features: bool = False
    """Whether the features as served joined those interactions (no skew); False without a
    user FeatureView or when they did not fit its columns."""


class WarmStartLineage(ApiModel):
    """The serving version a warm-started retrain began at (``spec.training.warmStart``)."""

    from_version: SubdomainName | None = None
    """The ModelVersion whose weights it started from."""
    from_uri: Annotated[str, Field(max_length=2048)]
    """That version's artifact."""
    from_digest: Digest | None = None
    """That artifact's digest."""
    applied: bool
    """False: the checkpoint did not fit the spec (see reason) and the version trained cold
    on all data."""
    reason: Annotated[str, Field(max_length=1024)] | None = None
    """Why the warm start was not applied."""
    since: Timestamp | None = None
    """The window trained on began here (``warmStart.window`` before ``until``)."""
    until: Timestamp | None = None
    """And ended here: the holdout cutoff."""
    interactions: Annotated[int, Field(ge=0)] = 0
    """Training interactions in the window: the only ones gradient steps were taken on."""
    carried_users: Annotated[int, Field(ge=0)] = 0
    """Users whose embeddings came from the checkpoint."""
    new_users: Annotated[int, Field(ge=0)] = 0
    """Users new in the window (embeddings trained from a fresh start)."""
    carried_items: Annotated[int, Field(ge=0)] = 0
    """Items whose embeddings came from the checkpoint."""
    new_items: Annotated[int, Field(ge=0)] = 0
    """Items new in the window."""


class Lineage(ApiModel):
    """What the version learned from."""

    interactions_uri: Annotated[str, Field(max_length=2048)]
    """The batch interactions (the Recommender's ``spec.interactions.path``)."""
    interactions: Annotated[int, Field(ge=0)]
    """Interactions read from it."""
    logged: LoggedLineage | None = None
    """The logged rows read beside them (``spec.training.loggedData``); unset when off."""
    warm_start: WarmStartLineage | None = None
    """The checkpoint a warm-started retrain began at and the window it trained on
    (``spec.training.warmStart``); unset for a cold run."""


class SchemaFeature(ApiModel):
    """One feature a model was trained on, and how it encodes it."""

    name: Annotated[str, Field(max_length=253)]
    """The feature's name, as its FeatureView (and the training table) call it."""
    kind: Literal["categorical", "numeric", "multi_hot"]
    """How the model encodes it: ``numeric`` (Int and Float columns, bucketed),
    ``categorical`` (String, Bool) or ``multi_hot`` (Array(String))."""


class FeatureSchema(ApiModel):
    """The features a version was trained on, read from its artifact's encoders by the index
    build. The gateway must supply every user feature, by name and kind, for the version to
    serve; item features are built into its Triton repository from the training data."""

    user: Annotated[list[SchemaFeature], Field(max_length=256)] = Field(default_factory=list)
    """User features, in the order the model's encoder holds them."""
    item: Annotated[list[SchemaFeature], Field(max_length=256)] = Field(default_factory=list)
    """Item features, in the order the model's encoder holds them."""


class ModelVersionStatus(ApiModel):
    """Observed state of a ModelVersion, written by the operator."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The ``metadata.generation`` this status describes."""
    conditions: Conditions | None = None
    """Ready (can serve), Progressing, Degraded; and per stage Trained (the training Job
    succeeded or failed; True with reason Imported for an import), Evaluated (whether the
    gate passed; trained versions only) and Indexed (whether the index was built and
    checked)."""
    phase: Phase | None = None
    """Pending → Training → Evaluating → Indexing → Ready, or Failed / Rejected (see reason
    and message). Evaluating: training finished and the evaluation gate judges its holdout
    metrics; Rejected: the gate refused the version. An imported version skips Training and
    Evaluating. Whether a Ready version serves is in its Recommender's ``status.rollout``."""
    reason: (
        Annotated[str, Field(max_length=128, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")]
        | None
    ) = None
    """Why the version is in its phase, as one CamelCase word (e.g. GateFailed)."""
    message: Annotated[str, Field(max_length=4096)] | None = None
    """What happened, for humans; for Rejected the metrics against their limits."""
    start_time: Timestamp | None = None
    """When training (or import) started."""
    completion_time: Timestamp | None = None
    """When the version became Ready."""
    training_job: Annotated[str, Field(max_length=253)] | None = None
    """Name of the training Job."""
    artifact_uri: Annotated[str, Field(max_length=2048)] | None = None
    """Directory of the version's artifacts (models, embeddings, metrics, profile)."""
    digest: Digest | None = None
    """Digest of the artifact manifest, to tell identical artifacts apart from changed ones."""
    index_name: Annotated[str, Field(max_length=253)] | None = None
    """The ANN index built from this version's item embeddings (``<recommender>-<version>``)."""
    feature_schema: FeatureSchema | None = None
    """The features the version was trained on. A version the Recommender's user
    FeatureViews do not supply them for is not rolled out (and a canary is aborted); unset
    (an index build that could not report it), the version serves unchecked."""
    feature_schema_digest: Digest | None = None
    """Digest of ``featureSchema``: versions with the same digest read the same features."""
    metrics: Annotated[dict[str, float], Field(max_length=64)] | None = None
    """Every metric the evaluation wrote, by name (``recall@20``, ``ndcg@10``, ``auc``)."""
    evaluation: Evaluation | None = None
    """The gate's view of the metrics."""
    lineage: Lineage | None = None
    """The data the version was trained on: the interactions and the logged rows, with
    their partitions and time range."""


class ModelVersion(ApiObject):
    """A ModelVersion object as stored by the apiserver."""

    kind: Literal["ModelVersion"] = "ModelVersion"
    spec: ModelVersionSpec
    status: ModelVersionStatus | None = None


MODEL_VERSION = KindInfo(
    kind="ModelVersion",
    plural="modelversions",
    singular="modelversion",
    short_names=("mv",),
    description="ModelVersion: one trained model of a Recommender (two-tower, ranker, item "
    "embeddings and their ANN index), immutable once created and the unit of promotion and "
    "rollback. Created by the operator for each training run, or by a user to import a model "
    "trained elsewhere (an import skips training and the evaluation gate).",
    object_model=ModelVersion,
    spec_model=ModelVersionSpec,
    status_model=ModelVersionStatus,
    immutable_spec=True,
    printer_columns=(
        PrinterColumn("Phase", "string", ".status.phase", "Lifecycle phase."),
        PrinterColumn(
            "Recall", "number", ".status.evaluation.recallAtK",
            "Recall@K on the holdout (K in status.evaluation.k).",
        ),
        PrinterColumn(
            "Recommender", "string", ".spec.recommenderRef.name", "Owning Recommender.",
            priority=1,
        ),
        PrinterColumn("Reason", "string", ".spec.reason", "Why it was created.", priority=1),
        AGE,
    ),
    selectable_fields=(".spec.recommenderRef.name", ".spec.reason"),
)  # fmt: skip
