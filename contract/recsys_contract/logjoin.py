"""The log join's config (rendered from a Recommender's ``spec.training.loggedData``) and its
summary: the "wait" half of log and wait.

Config (camelCase, unknown fields refused)::

    {
      "recommender": "shop.movies",
      "onlineStore": {"redisUrl": "redis://redis.shop.svc:6379/0", "keyPrefix": ""},
      "outputUri": "s3://recsys/movies/logged",
      "storageOptions": {},
      "waitSeconds": 1800,
      "maxRows": 1000000,
      "retainSeconds": 86400
    }

``onlineStore`` is the Recommender's (``keyspace.GatewayKeys``): the ``served`` and ``events``
streams the gateways append to, and the join's cursor. ``outputUri`` is where the dated
partitions go (the operator sets ``<spec.stores.artifacts.storageUri>/logged``); training
reads them from there (``recsys_contract.train.DataConfig.loggedUri``). What a run does, and
why a crash writes no row twice, is told in ``recsys_workloads.logjoin``.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from recsys_contract.base import ConfigSection, Summary
from recsys_contract.history import RecommenderStoreConfig
from recsys_contract.keyspace import RECOMMENDER_PATTERN

#: The partition directories under ``outputUri``: ``date=YYYY-MM-DD`` (UTC, by serving time),
#: the Hive layout Spark, DuckDB and pyarrow datasets read as a ``date`` column.
PARTITION_KEY = "date"
#: The logged rows' files inside a partition: ``part-<first id>-<last id>.parquet``, the
#: ``served`` stream ids of the batch's first and last response in that partition.
PART_PREFIX = "part-"
PART_SUFFIX = ".parquet"


class LogJoinConfig(ConfigSection):
    recommender: str = Field(min_length=3, pattern=RECOMMENDER_PATTERN)
    #: the gateway's Redis: the streams are ``<keyPrefix>recsys:<recommender>:served|events``
    online_store: RecommenderStoreConfig
    output_uri: str = Field(min_length=1)
    storage_options: dict[str, Any] = Field(default_factory=dict)
    #: only responses at least this old are joined: their late outcomes have landed (the
    #: attribution window); an outcome later than that is not attributed
    wait_seconds: float = Field(default=1800.0, ge=0)
    #: the most rows (served items) one run writes; the rest waits for the next run, so one
    #: run after a long outage stays within its pod's memory
    max_rows: int = Field(default=1_000_000, ge=1)
    #: entries stay in the streams this long after being written to the logged store (the
    #: drift check and the rollout analysis read them too), then are trimmed
    retain_seconds: float = Field(default=86400.0, ge=0)


class LogJoinSummary(Summary):
    """What one run reports (its termination message)."""

    #: served responses joined, and the rows (one per served item) written for them
    responses: int
    rows: int
    #: rows with a click or purchase
    positives: int = 0
    #: the partition files written, relative to ``outputUri`` (``date=.../part-...parquet``)
    partitions: list[str] = Field(default_factory=list)
    #: the cursor before and after the run (``served`` stream ids)
    previous_cursor: str
    cursor: str
    #: the run replayed a batch a killed run had begun (same files, overwritten)
    replayed: bool = False
    #: outcome events read, and those matching no served item of the batch (dropped)
    events: int = 0
    unmatched_events: int = 0
    #: stream entries removed (XTRIM MINID), only below what is written and ``retainSeconds``
    trimmed_served: int = 0
    trimmed_events: int = 0
    #: more responses are old enough than ``maxRows`` allowed: the next run continues
    more: bool = False
