"""Deterministic names for the objects the operator creates.

A child's name is a pure function of its owner and its role, so a restarted operator finds
what it made before instead of making it twice. Kubernetes caps most names at 63 characters
(DNS-1123 labels: Services, label values); a long name keeps a readable prefix and ends in a
short hash of the full name, so two long names never collide by truncation.
"""

from __future__ import annotations

import hashlib
import re

MAX_NAME_LENGTH = 63
_HASH_LENGTH = 8
_INVALID = re.compile(r"[^a-z0-9-]+")


def _dns_label(text: str) -> str:
    return _INVALID.sub("-", text.lower()).strip("-")


def child_name(*parts: str, max_length: int = MAX_NAME_LENGTH) -> str:
    """Join ``parts`` with dashes into a valid DNS-1123 label of at most ``max_length``."""
    full = "-".join(_dns_label(p) for p in parts if p)
    if not full:
        raise ValueError("a child name needs at least one non-empty part")
    if len(full) <= max_length:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:_HASH_LENGTH]
    prefix = full[: max_length - _HASH_LENGTH - 1].rstrip("-")
    return f"{prefix}-{digest}"


def short_hash(text: str, length: int = _HASH_LENGTH) -> str:
    """A stable short digest, for names that must change when ``text`` changes."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]
