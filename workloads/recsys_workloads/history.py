"""Seed the gateway's per-user history from the interactions table.

``python -m recsys_workloads.history --config PATH`` with a ``recsys_contract.history``
config (its module shows an example); the summary is ``HistorySummary``.

Why: the models take a user's most recent items as input (``historyLength``), and the gateway
reads them, with the items to filter out as already seen, from one sorted set per user
(``recsys_contract.keyspace.GatewayKeys``: item -> time of the last interaction). The
gateway's own events keep those sets current, but a user's past lives in the interactions
table the models were trained on: without this seeding, serving would see empty histories
where training saw full ones.

Each user keeps the newest ``maxItemsPerUser`` items (enough for any ``historyLength`` and for
filtering what was seen recently). Writes are ``ZADD GT``: a newer time already in the set (an
event the gateway logged after the table was written) is never moved back, so the Job can run
again at any time. The table is validated as training validates it (``train.data``).
The Redis password comes from ``REDIS_PASSWORD``, as for materialization.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import numpy.typing as npt

from recsys_contract.history import HistoryConfig, HistorySummary
from recsys_contract.keyspace import GatewayKeys
from recsys_workloads.artifact_store import Store
from recsys_workloads.gateway.control import backfill_seen
from recsys_workloads.redis_client import redis_client, redis_errors
from recsys_workloads.runtime import parse_config, run_entrypoint
from recsys_workloads.train.data import (
    Interactions,
    interaction_columns,
    read_table,
    validate_interactions,
)


def parse_history_config(raw: Any) -> HistoryConfig:
    return parse_config(HistoryConfig, raw, "history config")


def newest_per_user(interactions: Interactions, limit: int) -> Interactions:
    """Each user's ``limit`` most recent (user, item) pairs, one per item (its last time)."""
    users, items, times = interactions.user_ids, interactions.item_ids, interactions.times_us
    # the last interaction with each (user, item): sort by time, keep the final occurrence
    order = np.lexsort((times, items, users))
    users, items, times = users[order], items[order], times[order]
    last = np.ones(users.size, dtype=bool)
    last[:-1] = (users[1:] != users[:-1]) | (items[1:] != items[:-1])
    users, items, times = users[last], items[last], times[last]
    # newest first within each user, then the first ``limit`` of each
    order = np.lexsort((-times, users))
    users, items, times = users[order], items[order], times[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    rank: npt.NDArray[np.int64] = np.arange(users.size) - np.repeat(
        starts, np.diff(np.r_[starts, users.size])
    )
    keep: npt.NDArray[np.bool_] = rank < limit
    ratings = np.ones(int(keep.sum()), dtype=np.float32)
    return Interactions(users[keep], items[keep], ratings, times[keep])


def seed(raw: dict[str, Any]) -> dict[str, Any]:
    cfg = parse_history_config(raw)
    columns = cfg.columns
    table = read_table(
        Store(cfg.storage_options),
        cfg.interactions_uri,
        "interactions",
        columns=interaction_columns(columns),
    )
    pairs = newest_per_user(validate_interactions(table, columns), cfg.max_items_per_user)
    store = cfg.online_store
    keys = GatewayKeys.of(cfg.recommender, store.key_prefix)
    client = redis_client(
        store.redis_url, store.connect_timeout_seconds, cluster=store.redis_cluster
    )
    users = np.unique(pairs.user_ids)
    with redis_errors(store.redis_url), client:
        written = backfill_seen(
            client, keys, pairs.user_ids, pairs.item_ids, (pairs.times_us // 1000).tolist()
        )
        # events logged since may have pushed a set past the cap: keep the newest only
        pipe = client.pipeline(transaction=False)
        for user in users.tolist():
            pipe.zremrangebyrank(keys.seen(user), 0, -cfg.max_items_per_user - 1)
        pipe.execute()
    return HistorySummary(
        users=int(users.size), pairs=written, interactions=table.num_rows
    ).to_wire()


def main(argv: list[str] | None = None) -> int:
    return run_entrypoint("history", seed, argv)


if __name__ == "__main__":
    sys.exit(main())
