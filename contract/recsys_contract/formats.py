"""The string formats both sides read: Go durations and artifact URIs.

The duration pattern is also the API's (the CRDs are generated with it), so a duration the
apiserver admits is one the operator and every workload parse the same way.
"""

from __future__ import annotations

import re

#: A Go duration as Flagger, Argo Rollouts and CEL's ``duration()`` read it: ``30s``, ``1h30m``.
DURATION = r"^([0-9]{1,6}(\.[0-9]{1,3})?(ms|s|m|h))+$"
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

#: The password of a Redis server travels in this environment variable (from a Secret), never
#: in a URL of a config.
REDIS_PASSWORD_ENV = "REDIS_PASSWORD"


def parse_duration(text: str) -> float:
    """Seconds in a Go duration such as ``50ms``, ``1.5s`` or ``1h30m``."""
    if not re.fullmatch(DURATION, text):
        raise ValueError(f"{text!r} is not a duration such as 50ms, 30s, 5m or 1h30m")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))


def duration(text: str) -> str:
    """``text`` when it is a duration (a field validator), else ValueError."""
    parse_duration(text)
    return text


def join_uri(base: str, *parts: str) -> str:
    """Join path segments onto a URI without doubling or dropping slashes."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def redis_url_without_password(url: str, schemes: tuple[str, ...]) -> str:
    """``url`` when it starts with one of ``schemes`` and carries no password, else ValueError
    naming where the password belongs."""
    if not url.startswith(schemes):
        raise ValueError(f"must start with {', '.join(schemes[:-1])} or {schemes[-1]}")
    authority = url.split("://", 1)[1].split("/", 1)[0]
    if "@" in authority and ":" in authority.split("@", 1)[0]:
        raise ValueError(f"must not contain a password; put it in ${REDIS_PASSWORD_ENV}")
    return url
