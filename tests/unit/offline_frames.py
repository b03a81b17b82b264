"""Tiny datasets in the offline layout, built in the tests themselves.

Four taste groups: users of group g interact mostly (90%) with items of group g (item id - 101
= g mod 4), and the groups differ in their features too, so a model that learns anything at
all beats chance and popularity (which is flat here) by a wide margin.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TS = pa.timestamp("us", tz="UTC")
START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def tiny_tables(
    n_users: int = 80, n_items: int = 100, per_user: int = 10, groups: int = 4, seed: int = 0
) -> dict[str, pa.Table]:
    rng = np.random.default_rng(seed)
    user_group = np.arange(n_users) % groups
    item_group = np.arange(n_items) % groups
    users, items, times = [], [], []
    for u in range(n_users):
        same = np.flatnonzero(item_group == user_group[u])
        other = np.flatnonzero(item_group != user_group[u])
        n_same = int(per_user * 0.9)
        chosen = rng.permutation(
            np.concatenate(
                [
                    rng.choice(same, n_same, replace=False),
                    rng.choice(other, per_user - n_same, replace=False),
                ]
            )
        )
        users += [u + 1] * per_user
        items += (chosen + 101).tolist()
        times += sorted(rng.integers(0, 30 * 86400, per_user).tolist())
    order = np.argsort(times, kind="stable")
    interactions = pa.table(
        {
            "user_id": pa.array(np.asarray(users)[order], pa.int64()),
            "item_id": pa.array(np.asarray(items)[order], pa.int64()),
            "rating": pa.array(rng.integers(1, 6, len(users)).astype(np.float32)[order]),
            "event_timestamp": pa.array(
                [START + dt.timedelta(seconds=int(t)) for t in np.asarray(times)[order]], TS
            ),
        }
    )
    users_t = pa.table(
        {
            "user_id": pa.array(np.arange(1, n_users + 1), pa.int64()),
            "event_timestamp": pa.array([START] * n_users, TS),
            "age": pa.array((20 + 10 * user_group + rng.integers(0, 5, n_users)).astype(np.int32)),
            "gender": pa.array(["F" if g % 2 else "M" for g in user_group]),
            "occupation": pa.array([f"job{g}" for g in user_group]),
        }
    )
    items_t = pa.table(
        {
            "item_id": pa.array(np.arange(101, 101 + n_items), pa.int64()),
            "event_timestamp": pa.array([START] * n_items, TS),
            "genres": pa.array(
                [[f"genre{g}", "Drama"] if g % 2 else [f"genre{g}"] for g in item_group],
                pa.list_(pa.string()),
            ),
            "release_year": pa.array((1990 + 5 * item_group).astype(np.int32)),
        }
    )
    return {"interactions": interactions, "users": users_t, "items": items_t}


def write_tables(root: Path, tables: dict[str, pa.Table]) -> dict[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, table in tables.items():
        path = root / f"{name}.parquet"
        pq.write_table(table, path)
        out[name] = str(path)
    return out


def train_config(paths: dict[str, str], artifact: str, **overrides: Any) -> dict[str, Any]:
    """A config that trains in a second or two on the tiny tables."""
    cfg: dict[str, Any] = {
        "version": "test-v1",
        "seed": 7,
        "data": {
            "interactionsUri": paths["interactions"],
            "usersUri": paths.get("users"),
            "itemsUri": paths.get("items"),
        },
        "artifactUri": artifact,
        # no history input unless a test asks for it (test_history_input_round_trips...)
        "model": {
            "embeddingDim": 8,
            "featureDim": 4,
            "towerHidden": [16],
            "rankerHidden": [16],
            "historyLength": 0,
        },
        "training": {
            "epochs": 3,
            "batchSize": 64,
            "learningRate": 0.01,
            "device": "cpu",
            "cpuThreads": 1,
        },
        "evaluation": {
            "k": [5, 10],
            "rankingNegatives": 10,
            "als": {"factors": 4, "iterations": 3},
        },
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(json.dumps(cfg))
    return path
