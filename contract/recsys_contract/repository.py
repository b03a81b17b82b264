"""The Triton repository builder's config (rendered for each served ModelVersion) and summary.

Config (camelCase, unknown fields refused; everything but the two URIs has a default)::

    {
      "artifactUri": "s3://recsys/movies/models/movies-v3",
      "repositoryUri": "/models",
      "storageOptions": {},
      "maxBatchSize": 64,
      "maxQueueDelayMicroseconds": 500,
      "instances": 1,
      "torchThreads": 1,
      "device": "cpu"
    }

What the init container builds from it is told in ``recsys_workloads.serving.repository``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from recsys_contract.base import ConfigSection, Summary


class RepositoryConfig(ConfigSection):
    artifact_uri: str = Field(min_length=1)
    repository_uri: str = Field(min_length=1)
    storage_options: dict[str, Any] = Field(default_factory=dict)
    max_batch_size: int = Field(default=64, ge=1, le=4096)
    max_queue_delay_microseconds: int = Field(default=500, ge=0, le=1_000_000)
    instances: int = Field(default=1, ge=1, le=64)
    torch_threads: int = Field(default=1, ge=1, le=256)
    device: Literal["cpu", "cuda"] = "cpu"


class RepositoryModels(Summary):
    user_tower: str
    ranker: str


class RepositorySummary(Summary):
    version: str
    repository_uri: str
    artifact_digest: str
    models: RepositoryModels
    items: int
