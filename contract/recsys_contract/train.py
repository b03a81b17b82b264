"""The training Job's config (rendered from a Recommender and a ModelVersion) and its summary.

Field names are camelCase, like the Recommender spec they come from. Unknown fields are
rejected (a typo such as ``embedingDim`` must not silently train with the default), and every
validation error is reported as bad input naming the field's JSON path.

Example (every field but the URIs has a default)::

    {
      "version": "movies-v3",
      "seed": 42,
      "data": {
        "interactionsUri": "s3://recsys/movies/interactions.parquet",
        "interactionColumns": {"userId": "user_id", "itemId": "item_id",
                               "timestamp": "event_timestamp", "label": "rating"},
        "usersUri": "s3://recsys/movies/users.parquet",
        "itemsUri": "s3://recsys/movies/items.parquet"
      },
      "storageOptions": {"client_kwargs": {"endpoint_url": "http://minio:9000"}},
      "artifactUri": "s3://recsys/movies/models/movies-v3",
      "checkpointUri": "s3://recsys/movies/checkpoints/movies-v3",
      "features": {"user": ["age", "gender", "occupation"], "item": ["genres", "release_year"],
                   "numericBuckets": 10, "minCount": 1, "maxMultiHot": 8},
      "model": {"embeddingDim": 64, "featureDim": 16, "towerHidden": [128],
                "temperature": 0.1, "logQCorrection": true, "negatives": "inBatch",
                "idDropout": 0.0, "historyLength": 50,
                "rankerCrossLayers": 2, "rankerHidden": [128, 64]},
      "training": {"epochs": 10, "batchSize": 1024, "learningRate": 0.003,
                   "weightDecay": 0.0, "maxStepsPerEpoch": null,
                   "rankerNegatives": 4, "rankerHardNegatives": 0.0, "device": "auto",
                   "cpuThreads": null},
      "evaluation": {"k": [10, 20, 50], "holdoutFraction": 0.1, "users": "warm",
                     "split": "time",
                     "rankingNegatives": 100, "candidates": 200,
                     "baselines": ["popularity", "als"],
                     "als": {"factors": 64, "regularization": 0.05, "iterations": 15,
                             "alpha": 1.0}}
    }

- ``data.usersUri`` / ``data.itemsUri`` are optional: without them the towers use ids only.
- ``data.loggedUri`` (optional): the log join's partitions (``recsys_contract.logjoin``), read
  beside the interactions: every clicked or purchased served item is one more interaction
  (rating 1 click, 2 purchase, at the outcome's time), and, with a users table, the user's
  features as served at that moment join it (no skew between training and serving). Only
  rows served at or after ``loggedSince`` and joined before ``loggedUntil`` are read (the
  operator sets ``loggedUntil`` to the ModelVersion's creation time, so a retry reads the same
  rows); no partitions yet is no logged data, not an error. The summary's ``lineage`` says
  what was read.
- ``data.interactionColumns`` name the interactions table's columns (the Recommender's
  ``spec.interactions``); unset, they are ``user_id``, ``item_id``, ``event_timestamp`` and
  (when the table has it) ``rating``.
- ``storageOptions`` go to fsspec for every URI (data, artifact, checkpoints); credentials
  belong in the environment (``AWS_ACCESS_KEY_ID`` from a Secret), not here.
- ``artifactUri`` is the directory of *this* version; it is immutable once its manifest exists
  (a re-run after success returns the published summary instead of training again).
- ``checkpointUri`` defaults to ``<artifactUri>/checkpoints``; a restarted pod resumes from the
  last complete epoch found there.
- ``features.user`` / ``features.item`` default to every column of the entity table except the
  key and ``event_timestamp``; integer and float columns are bucketed, strings are
  categorical, lists of strings are multi-hot.
- ``model.historyLength``: the user tower (and ranker) also see the user's last N items
  (0: off). Serving must then pass each user's recent items, most recent first
  (``inference.user_vectors(..., history=...)``); without them a user looks history-less.
  The defaults (50, temperature 0.1, 10 epochs) are what benchmarks/train_quality.py chose
  on MovieLens-100k's validation split.
- ``model.negatives``: ``inBatch`` (the batch's other items, logQ-corrected; scales to any
  catalogue) or ``full`` (an exact softmax over every catalogue item each step: no sampling
  bias, cost linear in the catalogue, sensible up to some tens of thousands of items).
- ``training.cpuThreads``: torch's intra-op threads; set it to the pod's CPU limit (torch
  otherwise sizes its pool by the node's cores and oversubscribes a throttled container).
- ``training.device``: ``auto`` (CUDA when present), ``cpu`` or ``cuda``. With WORLD_SIZE > 1
  in the environment (torchrun) training runs data-parallel with DDP.
- ``warmStart`` (optional; the Recommender's ``spec.training.warmStart``): start from the
  published artifact at ``warmStart.artifactUri`` (the serving version) and take gradient
  steps only on the training interactions of the last ``windowSeconds`` before the holdout
  cutoff, for ``warmStart.epochs`` (unset: ``training.epochs``). Everything else reads as a
  cold run does: the same tables, the same time split and holdout (so the gate judges warm
  and cold models on the same rows), every earlier interaction as user history and as the
  seen items evaluation masks. The new version's vocabularies are the checkpoint's ids plus
  the ids of the window (new ids start from a fresh initialisation), its feature encoders the
  checkpoint's (so every embedding row keeps its meaning; a feature value new since then
  reads as unknown until a cold retrain). A checkpoint whose architecture or features do not
  fit this config (another ``embeddingDim``, other hidden layers, other features) is not an
  error: the run trains cold on all data with ``training.epochs`` and the summary's
  ``lineage.warmStart`` says why. An artifact that cannot be read, or whose digest is not
  ``warmStart.digest``, is bad input.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import AwareDatetime, Field, model_validator

from recsys_contract.base import ConfigSection, Summary
from recsys_contract.formats import join_uri

Baseline = Literal["popularity", "als"]
BASELINES: tuple[Baseline, ...] = ("popularity", "als")


class InteractionColumns(ConfigSection):
    """The interactions table's column names, as the Recommender's ``spec.interactions`` names
    them; training and history seeding read the table by them."""

    user_id: str = Field(default="user_id", min_length=1)
    item_id: str = Field(default="item_id", min_length=1)
    timestamp: str = Field(default="event_timestamp", min_length=1)
    #: the outcome (rating, click) column; unset, ``rating`` when the table has one; without
    #: any, every row is a positive interaction
    label: str | None = None

    @model_validator(mode="after")
    def _distinct(self) -> InteractionColumns:
        names = [self.user_id, self.item_id, self.timestamp, *([self.label] if self.label else [])]
        if len(set(names)) != len(names):
            raise ValueError(f"the interactions' columns must differ, got {names}")
        return self


class DataConfig(ConfigSection):
    interactions_uri: str = Field(min_length=1)
    #: unset: the default names (``InteractionColumns()``)
    interaction_columns: InteractionColumns | None = None
    users_uri: str | None = None
    items_uri: str | None = None
    #: the log join's ``outputUri``; unset: no logged rows are read
    logged_uri: str | None = Field(default=None, min_length=1)
    #: only logged rows served at or after this
    logged_since: AwareDatetime | None = None
    #: only logged rows joined before this
    logged_until: AwareDatetime | None = None

    @model_validator(mode="after")
    def _logged_range(self) -> DataConfig:
        if (self.logged_since or self.logged_until) and not self.logged_uri:
            raise ValueError("loggedSince and loggedUntil need loggedUri")
        if self.logged_since and self.logged_until and self.logged_since >= self.logged_until:
            raise ValueError(
                f"loggedSince ({self.logged_since.isoformat()}) must be before loggedUntil "
                f"({self.logged_until.isoformat()})"
            )
        return self

    @property
    def columns(self) -> InteractionColumns:
        return self.interaction_columns or InteractionColumns()


class FeatureConfig(ConfigSection):
    user: list[str] | None = None
    item: list[str] | None = None
    numeric_buckets: int = Field(default=10, ge=2, le=1000)
    min_count: int = Field(default=1, ge=1)
    max_multi_hot: int = Field(default=8, ge=1, le=256)


class ModelConfig(ConfigSection):
    embedding_dim: int = Field(default=64, ge=2, le=4096)
    feature_dim: int = Field(default=16, ge=1, le=1024)
    tower_hidden: list[int] = Field(default_factory=lambda: [128])
    temperature: float = Field(default=0.1, gt=0, le=10)
    log_q_correction: bool = True
    negatives: Literal["inBatch", "full"] = "inBatch"
    id_dropout: float = Field(default=0.0, ge=0, lt=1)
    history_length: int = Field(default=50, ge=0, le=1000)
    ranker_cross_layers: int = Field(default=2, ge=0, le=8)
    ranker_hidden: list[int] = Field(default_factory=lambda: [128, 64])

    @model_validator(mode="after")
    def _positive_widths(self) -> ModelConfig:
        for name, widths in (
            ("towerHidden", self.tower_hidden),
            ("rankerHidden", self.ranker_hidden),
        ):
            if any(w < 1 for w in widths):
                raise ValueError(f"{name} entries must be positive layer widths, got {widths}")
        return self


class TrainingConfig(ConfigSection):
    epochs: int = Field(default=10, ge=1, le=10_000)
    batch_size: int = Field(default=1024, ge=2, le=1 << 20)
    learning_rate: float = Field(default=0.003, gt=0, le=10)
    weight_decay: float = Field(default=0.0, ge=0)
    max_steps_per_epoch: int | None = Field(default=None, ge=1)
    ranker_negatives: int = Field(default=4, ge=1, le=1000)
    #: share of the ranker's negatives drawn from the user's retrieval candidates (the
    #: two-tower's top ``evaluation.candidates``, the user's training items replaced by uniform
    #: draws), the rest uniform over the catalogue: serving ranks candidates, not random items.
    #: 0 by default: benchmarks/train_quality.py found uniform negatives best on validation
    #: (the candidates hold the items a user will like next, which hard negatives teach the
    #: ranker to push down)
    ranker_hard_negatives: float = Field(default=0.0, ge=0, le=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cpu_threads: int | None = Field(default=None, ge=1, le=1024)


class AlsConfig(ConfigSection):
    factors: int = Field(default=64, ge=1)
    regularization: float = Field(default=0.05, ge=0)
    iterations: int = Field(default=15, ge=1)
    alpha: float = Field(default=1.0, gt=0)


class EvaluationConfig(ConfigSection):
    k: list[int] = Field(default_factory=lambda: [10, 20, 50], min_length=1)
    holdout_fraction: float = Field(default=0.1, gt=0, lt=1)
    users: Literal["warm", "all"] = "warm"
    #: ``time``: one global cut, the newest ``holdoutFraction`` of interactions test (the model
    #: only knows the past); ``perUser``: each user's last ``holdoutFraction`` of interactions
    #: test (``data.per_user_split``), so every user with some history counts
    split: Literal["time", "perUser"] = "time"
    ranking_negatives: int = Field(default=100, ge=1)
    #: the two-tower candidates the served list is ranked from (the Recommender's
    #: ``retrieval.numCandidates``): the end-to-end evaluation replays serving with this many
    candidates: int = Field(default=200, ge=1, le=10_000)
    baselines: list[Baseline] = Field(default_factory=lambda: list(BASELINES))
    als: AlsConfig = Field(default_factory=AlsConfig)

    @model_validator(mode="after")
    def _positive_k(self) -> EvaluationConfig:
        if any(k < 1 for k in self.k):
            raise ValueError(f"k entries must be positive, got {self.k}")
        return self


class WarmStartConfig(ConfigSection):
    """Where a warm-started run starts from and what it trains on (see the module's notes)."""

    #: the published model artifact to start from (the serving version's ``artifactUri``)
    artifact_uri: str = Field(min_length=1)
    #: its ModelVersion, for the lineage
    version: str | None = Field(default=None, min_length=1)
    #: its manifest digest; another artifact found at the URI is refused
    digest: str | None = Field(default=None, min_length=1)
    #: the training interactions this long before the holdout cutoff are trained on
    window_seconds: float = Field(gt=0)
    #: passes over the window; unset: ``training.epochs``
    epochs: int | None = Field(default=None, ge=1, le=10_000)


class TrainConfig(ConfigSection):
    version: str = Field(default="dev", min_length=1, max_length=253)
    seed: int = 0
    storage_options: dict[str, Any] = Field(default_factory=dict)
    data: DataConfig
    artifact_uri: str = Field(min_length=1)
    checkpoint_uri: str | None = None
    features: FeatureConfig = Field(default_factory=FeatureConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    #: unset: a cold run (fresh weights, every training interaction)
    warm_start: WarmStartConfig | None = None

    @property
    def resolved_checkpoint_uri(self) -> str:
        return self.checkpoint_uri or join_uri(self.artifact_uri, "checkpoints")


#: The models whose metrics the training summary carries, by these names.
TWO_TOWER = "twoTower"
RANKER = "ranker"


def retrieval_metric(model: str, metric: str) -> str:
    """The headline name of a retrieval metric (``twoTower.recall@20``)."""
    return f"{model}.{metric}"


def ranking_metric(model: str, metric: str) -> str:
    """The headline name of a ranking metric (``ranker.ranking.auc``)."""
    return f"{model}.ranking.{metric}"


#: The end-to-end evaluation's lists (``served`` in metrics.json): the final list the gateway
#: would serve (two-tower candidates, ranker scores, ordering rules), the candidates in
#: retrieval order, and the baselines ranking the whole catalog.
SERVED = "served"
FINAL = "final"
RETRIEVAL_ORDER = "retrievalOrder"
#: suffix of a metric's standard error over the evaluated users
STANDARD_ERROR = ".se"


def served_metric(model: str, metric: str) -> str:
    """The headline name of an end-to-end metric (``served.final.ndcg@20``,
    ``served.popularity.ndcg@20.se``)."""
    return f"{SERVED}.{model}.{metric}"


class LoggedLineage(Summary):
    """The logged rows a training run read (``data.loggedUri``)."""

    uri: str
    #: the range asked for (``loggedSince``, ``loggedUntil``), RFC 3339
    since: str | None = None
    until: str | None = None
    #: the partitions (``date=YYYY-MM-DD``) that held rows in range, oldest first
    partitions: list[str] = Field(default_factory=list)
    #: the files read, and the logged rows (served items) in range in them
    files: int = 0
    rows: int = 0
    #: the clicked or purchased ones, each one more interaction
    interactions: int = 0
    #: the serving times of the first and last row read, RFC 3339
    first_served: str | None = None
    last_served: str | None = None
    #: the served user features joined those interactions (False: no users table, or they
    #: did not fit its columns, and the batch features were used)
    served_features: bool = False


class WarmStartLineage(Summary):
    """Whether a run started from a checkpoint (``warmStart``), from which, and on what."""

    from_version: str | None = None
    from_uri: str
    from_digest: str | None = None
    #: False: the checkpoint did not fit and the run trained cold on all data (``reason``)
    applied: bool
    reason: str | None = None
    #: the window trained on (RFC 3339): interactions at or after ``since``, before ``until``
    #: (the holdout cutoff)
    since: str | None = None
    until: str | None = None
    #: training interactions in the window: the only rows gradient steps were taken on
    interactions: int = 0
    #: ids whose embeddings came from the checkpoint, and ids new in the window (fresh)
    carried_users: int = 0
    new_users: int = 0
    carried_items: int = 0
    new_items: int = 0


class Lineage(Summary):
    """What a model learned from: the batch interactions and the logged rows, and the
    checkpoint a warm start began at."""

    interactions_uri: str
    #: interactions read from ``interactionsUri``
    interactions: int
    logged: LoggedLineage | None = None
    warm_start: WarmStartLineage | None = None


def timestamp(value: dt.datetime) -> str:
    """RFC 3339 in UTC, to the second, as Kubernetes writes times."""
    return value.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class TrainSummary(Summary):
    """What a finished training run reports (rank 0's pod): the published artifact and the
    headline metrics the evaluation gate judges."""

    version: str | None = None
    artifact_uri: str
    digest: str
    item_count: int | None = None
    embedding_dim: int | None = None
    #: flat names (``retrieval_metric``, ``ranking_metric``) -> value
    metrics: dict[str, float] = Field(default_factory=dict)
    #: the artifact existed already: this run trained nothing and reports what was published
    already_published: bool = False
    resumed_from_epoch: int | None = None
    train_seconds: float | None = None
    samples_per_second: float | None = None
    device: str | None = None
    #: the data the model learned from
    lineage: Lineage | None = None


class WorkerSummary(Summary):
    """What every other pod of a multi-process run reports: rank 0 reports the result."""

    version: str
    role: Literal["worker"]
    rank: int
