"""How a batch workload reaches the Redis the operator names: the URL from its config, the
password only from ``REDIS_PASSWORD`` (the Secret the pod gets as an env var, never in a
config or a URL), and redis-py's failures sorted into bad input and worth-a-retry."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import redis

from recsys_contract.formats import REDIS_PASSWORD_ENV
from recsys_workloads.runtime import BadInputError, TransientError


def redis_password() -> str | None:
    return os.environ.get(REDIS_PASSWORD_ENV) or None


def redis_client(
    url: str,
    connect_timeout_s: float,
    socket_timeout_s: float | None = None,
    *,
    password: str | None = None,
) -> redis.Redis:
    """A client for ``url``; ``connect_timeout_s`` bounds each connection attempt, and
    ``socket_timeout_s`` (unset: none) each reply. The password is ``REDIS_PASSWORD``'s unless
    one is given."""
    return redis.Redis.from_url(
        url,
        password=password if password is not None else redis_password(),
        socket_connect_timeout=connect_timeout_s,
        socket_timeout=socket_timeout_s,
    )


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
