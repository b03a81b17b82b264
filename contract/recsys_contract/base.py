"""What every wire document shares: camelCase JSON, and how each side turns a model into it."""

from __future__ import annotations

from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from recsys_contract.formats import redis_url_without_password


class ConfigSection(BaseModel):
    """Base of every section of a workload's config: the camelCase JSON the operator renders,
    unknown fields refused (a misspelt field is an error, never a silent default), frozen."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    def to_wire(self) -> dict[str, Any]:
        """The JSON object the operator renders: the fields it set, by their camelCase names;
        a field left unset or set to None is the workload's default, so it is not written."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True, exclude_none=True)


class RedisConnection(ConfigSection):
    """How a Job reaches a Redis: its URL (never with a password: that comes from
    ``$REDIS_PASSWORD``) and how long to wait for it. Each store adds its key prefix."""

    redis_url: str = Field(min_length=1)
    #: the URL names one node of a Redis Cluster (``mode: Cluster``); the client finds the rest
    redis_cluster: bool = False
    connect_timeout_seconds: float = Field(default=10.0, gt=0)

    @field_validator("redis_url")
    @classmethod
    def _no_secret_in_url(cls, url: str) -> str:
        return redis_url_without_password(url, ("redis://", "rediss://"))


class Summary(BaseModel):
    """Base of what a workload writes to its termination message when it succeeds.

    Read leniently (unknown fields ignored): a newer workload may report more than this
    operator knows about, and what it knows must still be read.
    """

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )

    def to_wire(self) -> dict[str, Any]:
        """The summary's JSON object: the fields the workload set, None included (a field set
        to None says "none", e.g. no live version)."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)

    @classmethod
    def read(cls, raw: Any) -> Self | None:
        """The summary in ``raw`` (a parsed termination message), or None when it is not one
        (absent, a failure's, cut short or from another workload)."""
        if not isinstance(raw, dict) or raw.get("status", "Succeeded") != "Succeeded":
            return None
        try:
            return cls.model_validate(raw)
        except ValueError:
            return None
