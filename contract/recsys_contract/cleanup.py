"""The artifact cleanup Job's config (rendered from a Recommender being deleted with
``spec.stores.artifacts.retentionPolicy: Delete``) and its summary.

Config (camelCase, unknown fields refused)::

    {
      "uris": ["s3://models/movies/models", "s3://models/movies/indexes",
               "s3://models/movies/logged"],
      "storageOptions": {}
    }

``uris`` are the directories the operator's own workloads write under the Recommender's
``storageUri`` (``planning.training``: models, indexes, logged rows). An imported
ModelVersion's own ``storageUri`` is never among them: the user's files stay the user's. What
the Job does is told in ``recsys_workloads.cleanup``.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from recsys_contract.base import ConfigSection, Summary


class CleanupConfig(ConfigSection):
    #: directories removed with everything below them; one that is already gone is skipped
    uris: list[str] = Field(min_length=1, max_length=16)
    storage_options: dict[str, Any] = Field(default_factory=dict)


class CleanupSummary(Summary):
    """What the run reports (its termination message)."""

    #: the directories that existed and were removed
    removed: list[str] = Field(default_factory=list)
    #: the directories that were already gone (a retried run, or nothing was ever written)
    absent: list[str] = Field(default_factory=list)
