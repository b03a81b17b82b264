"""Where data lives: the online store (Redis) and the artifact store.

Shared by FeatureView (which writes features into Redis) and Recommender (whose gateway reads
them, and whose Jobs write model artifacts).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field

from recsys_operator.api import formats
from recsys_operator.api.base import ApiModel, Rule
from recsys_operator.api.common import LocalObjectRef, SecretKeyRef, StorageUri

#: A database other than 0 at the end of a Redis URL (RE2 and Python both read it).
_NONZERO_DB = "/([1-9][0-9]?|0[1-9])$"


class RedisStore(ApiModel):
    """A Redis server used as the online store."""

    __rules__ = (
        Rule(
            cel="!self.url.contains('@')",
            message="must not carry credentials: put the password in a Secret and reference "
            "it with passwordSecretRef",
            field_path=".url",
            check=lambda m: "@" not in m.url,
        ),
        Rule(
            cel=f"!has(self.mode) || self.mode != 'Cluster' || !self.url.matches('{_NONZERO_DB}')",
            message="a Redis Cluster has only database 0: end the url with /0 or with the port, "
            "or set mode: Standalone",
            field_path=".url",
            check=lambda m: m.mode != "Cluster" or not re.search(_NONZERO_DB, m.url),
        ),
    )

    url: Annotated[str, Field(min_length=9, max_length=256, pattern=formats.REDIS_URL)]
    """Address as ``redis://HOST:PORT/DB`` (``rediss://`` for TLS), e.g.
    ``redis://redis.recsys.svc:6379/0``. Never put a password here; use passwordSecretRef."""
    password_secret_ref: SecretKeyRef | None = None
    """The Secret key holding the Redis password (AUTH). Unset: the server needs none."""
    key_prefix: Annotated[str, Field(max_length=64, pattern=r"^[A-Za-z0-9_.:-]*$")] | None = None
    """Prefix for every key this object writes, to share one Redis between projects; the
    object's namespace and name follow it."""
    mode: Literal["Standalone", "Cluster"] = "Standalone"
    """``Standalone``: one Redis server (or a primary behind a Service). ``Cluster``: a Redis
    Cluster; the url names any one of its nodes and the clients discover the others, send each
    node its own share of a batch, and follow slot moves. Keys spread over the nodes; the few
    that change together share a slot through a hash tag. A cluster has only database 0."""


class OnlineStore(ApiModel):
    """The low-latency store that serving reads features from."""

    redis: RedisStore
    """Redis connection."""


class ArtifactStore(ApiModel):
    """Where model versions, their item embeddings and ANN indexes are written, read through
    fsspec: an S3-compatible store or a PersistentVolumeClaim (or a local folder)."""

    storage_uri: StorageUri
    """Base URI; each ModelVersion gets its own directory below it. Same spelling as KServe's
    ``storageUri``: ``s3://bucket/recsys/movies`` or ``pvc://claim/path`` (the operator mounts
    the claim into every pod that reads or writes below it; pods on several nodes need a
    ReadWriteMany claim), ``file:///data/models`` on a single-node setup."""
    secret_ref: LocalObjectRef | None = None
    """A Secret whose keys become environment variables of every Job and pod that reads or
    writes artifacts (e.g. ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
    ``AWS_ENDPOINT_URL``), the way ``envFrom.secretRef`` works."""
    retention_policy: Literal["Retain", "Delete"] = "Retain"
    """What becomes of the artifacts the operator's workloads wrote below storageUri
    (``models/``, ``indexes/``, ``logged/``) when the Recommender is deleted, as a
    PersistentVolume's reclaim policy: Retain keeps them; Delete removes them with a cleanup
    Job before the Recommender goes (it stays, with an ArtifactsNotDeleted event, while the
    store refuses). An imported ModelVersion's own storageUri is never touched. With Delete,
    storageUri must be this Recommender's alone."""
