"""How a batch workload reaches the Redis the operator names: the URL from its config, the
password only from ``REDIS_PASSWORD`` (the Secret the pod gets as an env var, never in a
config or a URL), and redis-py's failures sorted into bad input and worth-a-retry.

The same factory gives a Redis Cluster client when the config says so (``redisCluster``): the
URL names one node and redis-py finds the rest, routes each command by its key's slot and splits
a non-transactional pipeline by node, so each node gets its own pipeline. The asyncio twin is
``recsys_contract.online_client``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import redis
import redis.cluster

from recsys_contract.formats import REDIS_PASSWORD_ENV
from recsys_workloads.runtime import BadInputError, TransientError


def redis_password() -> str | None:
    return os.environ.get(REDIS_PASSWORD_ENV) or None


#: What every batch workload holds: either kind answers the commands they send.
SyncRedis = redis.Redis | redis.cluster.RedisCluster


def redis_client(
    url: str,
    connect_timeout_s: float,
    socket_timeout_s: float | None = None,
    *,
    password: str | None = None,
    cluster: bool = False,
) -> SyncRedis:
    """A client for ``url`` (a cluster's seed node when ``cluster``); ``connect_timeout_s``
    bounds each connection attempt, and ``socket_timeout_s`` (unset: none) each reply. The
    password is ``REDIS_PASSWORD``'s unless one is given."""
    options: dict[str, Any] = {
        "password": password if password is not None else redis_password(),
        "socket_connect_timeout": connect_timeout_s,
        "socket_timeout": socket_timeout_s,
    }
    if cluster:
        return redis.cluster.RedisCluster.from_url(url, **options)
    return redis.Redis.from_url(url, **options)


@contextlib.contextmanager
def redis_errors(where: str) -> Iterator[None]:
    """Sort redis-py failures: wrong credentials are bad input, the rest is worth a retry."""
    try:
        yield
    except redis.exceptions.AuthenticationError as exc:
        raise BadInputError(
            f"Redis at {where} refused the credentials ({exc}); set {REDIS_PASSWORD_ENV}"
        ) from exc
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
        raise TransientError(f"Redis at {where} is unreachable ({exc})") from exc
    except redis.exceptions.ResponseError as exc:
        if str(exc).startswith(("NOAUTH", "WRONGPASS")):
            raise BadInputError(f"Redis at {where}: {exc}; set {REDIS_PASSWORD_ENV}") from exc
        raise TransientError(f"Redis at {where} failed: {exc}") from exc
