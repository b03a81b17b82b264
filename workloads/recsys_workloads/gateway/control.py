"""What the operator (and an admin) writes for the gateways to follow: the routing table, the
index alias, block lists and seen items. Plain synchronous Redis calls, one key each.

The values are validated before they are written, so a gateway never has to guess at a
half-valid table; a gateway that still reads a value it cannot parse keeps its previous one
and counts the error.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from typing import Any

from recsys_contract.keyspace import GatewayKeys, IndexAlias
from recsys_workloads.gateway.config import parse_routing
from recsys_workloads.redis_client import SyncRedis


def publish_routing(client: SyncRedis, keys: GatewayKeys, table: Mapping[str, Any]) -> None:
    """Set the routing table every gateway replica picks up at its next poll."""
    parse_routing(table)
    client.set(keys.routing, json.dumps(table, sort_keys=True))


def move_index_alias(client: SyncRedis, keys: GatewayKeys, alias: IndexAlias) -> None:
    """Point stable traffic at another index; gateways load it in the background, then swap."""
    client.set(keys.index_alias, alias.to_json())


def block_items(
    client: SyncRedis, keys: GatewayKeys, items: Iterable[int], user_id: int | None = None
) -> None:
    key = keys.blocked if user_id is None else keys.blocked_for(user_id)
    members = [str(int(i)) for i in items]
    if members:
        client.sadd(key, *members)


def mark_seen(
    client: SyncRedis,
    keys: GatewayKeys,
    user_id: int,
    items: Iterable[int],
    at_ms: int | None = None,
) -> None:
    """Record interactions (e.g. backfilled from the interactions table) as seen."""
    stamp = int(time.time() * 1000) if at_ms is None else at_ms
    mapping = {str(int(i)): stamp for i in items}
    if mapping:
        client.zadd(keys.seen(user_id), mapping)


def backfill_seen(
    client: SyncRedis,
    keys: GatewayKeys,
    user_ids: Iterable[int],
    item_ids: Iterable[int],
    times_ms: Iterable[int],
    batch: int = 10_000,
) -> int:
    """Load past interactions (e.g. the interactions table's columns) into the seen sets,
    which are also the users' histories for the models; a later time wins. Returns the
    number of (user, item) pairs written."""
    pipe = client.pipeline(transaction=False)
    n = 0
    for user, item, at in zip(user_ids, item_ids, times_ms, strict=True):
        pipe.zadd(keys.seen(int(user)), {str(int(item)): int(at)}, gt=True)
        n += 1
        if n % batch == 0:
            pipe.execute()
    pipe.execute()
    return n
