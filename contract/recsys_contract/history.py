"""The history seeding Job's config (rendered from a Recommender) and its summary.

Config (camelCase, unknown fields refused)::

    {
      "recommender": "shop.movies",
      "interactionsUri": "s3://data/interactions/",
      "interactionColumns": {"userId": "user_id", "itemId": "item_id",
                             "timestamp": "event_timestamp"},
      "storageOptions": {},
      "onlineStore": {"redisUrl": "redis://redis.shop.svc:6379/0", "keyPrefix": ""},
      "maxItemsPerUser": 200
    }

``interactionColumns`` are the training config's (``recsys_contract.train``), unset the
default names. ``onlineStore.keyPrefix`` is the Recommender's (``keyspace.GatewayKeys``): the
Job writes the sets the gateway reads. What the Job does is told in
``recsys_workloads.history``.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from recsys_contract.base import ConfigSection, RedisConnection, Summary
from recsys_contract.keyspace import (
    DEFAULT_RECOMMENDER_PREFIX,
    RECOMMENDER_PATTERN,
    RecommenderPrefix,
)
from recsys_contract.train import InteractionColumns


class RecommenderStoreConfig(RedisConnection):
    """The Redis a Recommender's online state lives in, and the prefix of its keys."""

    #: the Recommender's ``keyPrefix``
    key_prefix: RecommenderPrefix = DEFAULT_RECOMMENDER_PREFIX


class HistoryConfig(ConfigSection):
    recommender: str = Field(min_length=3, pattern=RECOMMENDER_PATTERN)
    interactions_uri: str = Field(min_length=1)
    #: unset: the default names (``InteractionColumns()``)
    interaction_columns: InteractionColumns | None = None
    storage_options: dict[str, Any] = Field(default_factory=dict)
    online_store: RecommenderStoreConfig
    max_items_per_user: int = Field(default=200, ge=1, le=100_000)

    @property
    def columns(self) -> InteractionColumns:
        return self.interaction_columns or InteractionColumns()


class HistorySummary(Summary):
    #: users whose history was seeded
    users: int
    #: (user, item) pairs written
    pairs: int
    #: rows of the interactions table read
    interactions: int
