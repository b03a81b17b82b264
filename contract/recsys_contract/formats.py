"""The string formats both sides read: Go durations, artifact URIs and where a ``pvc://``
URI's claim is mounted.

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


#: Where the operator mounts the PersistentVolumeClaim of a ``pvc://CLAIM/path`` URI in every
#: pod whose config names one: ``/mnt/pvc/CLAIM``. The workloads read ``pvc://`` through an
#: fsspec filesystem of their own that maps it below this folder, so a URI keeps one spelling
#: everywhere (the API, the configs, the status) and only the pod's mount decides the disk.
PVC_MOUNT_ROOT = "/mnt/pvc"
PVC_SCHEME = "pvc://"


def pvc_claim(uri: str) -> str | None:
    """The claim a ``pvc://CLAIM/path`` URI names; None for any other URI."""
    if not uri.startswith(PVC_SCHEME):
        return None
    claim = uri[len(PVC_SCHEME) :].split("/", 1)[0]
    if not claim:
        raise ValueError(f"{uri}: a pvc:// URI needs a claim name, as in pvc://CLAIM/path")
    return claim


def pvc_local_path(uri: str, root: str = PVC_MOUNT_ROOT) -> str:
    """The file path of ``pvc://CLAIM/path`` in a pod that mounts CLAIM at ``root/CLAIM``."""
    claim = pvc_claim(uri)
    if claim is None:
        raise ValueError(f"{uri} is not a pvc:// URI")
    rest = uri[len(PVC_SCHEME) + len(claim) :].strip("/")
    return f"{root.rstrip('/')}/{claim}/{rest}" if rest else f"{root.rstrip('/')}/{claim}"


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
