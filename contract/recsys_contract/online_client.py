"""The one place an asyncio client of the online store is made, for the gateway, the
pre-computation Job and the operator: a single Redis or a Redis Cluster, from the same URL.

A cluster's URL names any one node; redis-py's cluster client asks it for the slot map and
finds the other nodes, follows MOVED/ASK redirects, and splits a non-transactional pipeline by
node, so each node gets its own pipeline and the callers batch the same way on either kind.
Multi-key atomic operations need their keys in one slot (``keyspace``'s module doc lists them).
The cluster has only database 0, which the API's rule on ``mode: Cluster`` enforces.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio
import redis.asyncio.cluster

#: What every async caller holds: either kind answers the commands the callers send.
AsyncRedis = redis.asyncio.Redis | redis.asyncio.cluster.RedisCluster


def async_redis(
    url: str,
    *,
    cluster: bool = False,
    password: str | None = None,
    socket_timeout_s: float | None = None,
    connect_timeout_s: float | None = None,
    **options: Any,
) -> AsyncRedis:
    """A client for ``url``: a cluster client when ``cluster`` (``url`` is its seed node).
    ``options`` go to redis-py as they are (e.g. a ``retry`` policy)."""
    common: dict[str, Any] = {
        "password": password,
        "socket_timeout": socket_timeout_s,
        "socket_connect_timeout": connect_timeout_s,
        **options,
    }
    if cluster:
        return redis.asyncio.cluster.RedisCluster.from_url(url, **common)
    return redis.asyncio.Redis.from_url(url, **common)
