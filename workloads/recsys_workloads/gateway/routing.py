"""Which variant serves a user: sticky by a hash of the user id, or random per request.

A user's bucket is a hash of (canary version, user id) into 10,000 buckets; the user goes to
the canary when the bucket is below ``canaryWeight`` × 100. So a user keeps one variant for
as long as the canary version does not change, and raising the weight only moves more users
to the canary (never back): each user sees one version throughout a rollout. Salting with the
canary version gives every rollout a fresh sample of users instead of the same guinea pigs.
"""

from __future__ import annotations

import hashlib
import random
from typing import Literal

from recsys_contract.gateway import RoutingTable

BUCKETS = 10_000
VariantName = Literal["stable", "canary"]


def bucket(salt: str, user_id: object) -> int:
    digest = hashlib.blake2b(f"{salt}\x00{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def choose_variant(
    table: RoutingTable, user_id: object, rng: random.Random | None = None
) -> VariantName:
    if table.canary is None or table.canary_weight <= 0:
        return "stable"
    threshold = table.canary_weight * (BUCKETS // 100)
    if table.user_sticky:
        position = bucket(table.canary.model_version, user_id)
    else:
        position = (rng or random).randrange(BUCKETS)
    return "canary" if position < threshold else "stable"
