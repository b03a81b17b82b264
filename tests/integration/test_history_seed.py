"""Seeding the gateway's per-user history from an interactions table, into a real Redis."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
import yaml

from recsys_contract.keyspace import GatewayKeys
from recsys_operator.api.recommender import Recommender
from recsys_operator.planning.serving import history_config
from recsys_workloads.gateway.control import mark_seen
from recsys_workloads.history import main, newest_per_user, seed
from recsys_workloads.runtime import EXIT_BAD_INPUT, EXIT_TRANSIENT, BadInputError
from recsys_workloads.train.data import Interactions

pytestmark = pytest.mark.redis

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def write_interactions(path: Path, rows: list[tuple[int, int, int]]) -> str:
    """(user, item, seconds after T0) rows as the training layout's parquet."""
    table = pa.table(
        {
            "user_id": pa.array([r[0] for r in rows], pa.int64()),
            "item_id": pa.array([r[1] for r in rows], pa.int64()),
            "event_timestamp": pa.array(
                [T0 + dt.timedelta(seconds=r[2]) for r in rows], pa.timestamp("us", tz="UTC")
            ),
        }
    )
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path / "part-0.parquet")
    return f"file://{path}"


def ms(seconds: int) -> float:
    return (T0 + dt.timedelta(seconds=seconds)).timestamp() * 1000


def config(uri: str, redis_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "recommender": "shop.movies",
        "interactionsUri": uri,
        "onlineStore": {"redisUrl": redis_url},
        **extra,
    }


def test_newest_per_user_keeps_each_items_last_time_and_the_newest_few() -> None:
    users = np.array([1, 1, 1, 1, 2, 1], dtype=np.int64)
    items = np.array([10, 11, 10, 12, 10, 13], dtype=np.int64)
    times = np.array([1, 2, 5, 3, 1, 4], dtype=np.int64)
    got = newest_per_user(Interactions(users, items, np.ones(6, np.float32), times), 3)
    pairs = list(zip(got.user_ids.tolist(), got.item_ids.tolist(), got.times_us.tolist(),
                     strict=True))  # fmt: skip
    # user 1: item 10 last at 5, then 13 (4), 12 (3); item 11 (2) is past the cap
    assert pairs == [(1, 10, 5), (1, 13, 4), (1, 12, 3), (2, 10, 1)]


def test_seeds_newest_first_capped_and_never_moves_a_newer_event_back(
    tmp_path: Path, redis_client: redis.Redis, redis_url: str
) -> None:
    keys = GatewayKeys.of("shop.movies")
    mark_seen(redis_client, keys, 1, [10], at_ms=int(ms(1000)))  # an event newer than the table
    mark_seen(redis_client, keys, 3, range(100, 110), at_ms=int(ms(0)))  # older, over the cap
    rows = [(1, 10, 5), (1, 11, 2), (1, 12, 3), (1, 13, 4), (2, 20, 1), (1, 10, 1),
            (3, 30, 50)]  # fmt: skip
    uri = write_interactions(tmp_path / "interactions", rows)
    summary = seed(config(uri, redis_url, maxItemsPerUser=3))
    assert summary == {"users": 3, "pairs": 5, "interactions": 7}
    recent = redis_client.zrevrange(keys.seen(1), 0, -1, withscores=True)
    assert recent == [(b"10", ms(1000)), (b"13", ms(4)), (b"12", ms(3))]
    assert redis_client.zrevrange(keys.seen(2), 0, -1) == [b"20"]
    user3 = redis_client.zrevrange(keys.seen(3), 0, -1)
    assert len(user3) == 3  # trimmed to the cap
    assert user3[0] == b"30"  # the newest kept
    # running again changes nothing
    assert seed(config(uri, redis_url, maxItemsPerUser=3))["pairs"] == 5
    assert redis_client.zrevrange(keys.seen(1), 0, -1, withscores=True) == recent


def test_a_key_prefix_is_the_gateways(
    tmp_path: Path, redis_client: redis.Redis, redis_url: str
) -> None:
    uri = write_interactions(tmp_path / "i", [(7, 70, 1)])
    seed(config(uri, redis_url, onlineStore={"redisUrl": redis_url, "keyPrefix": "team-a:"}))
    assert redis_client.zrange(GatewayKeys.of("shop.movies", "team-a:").seen(7), 0, -1) == [b"70"]
    assert redis_client.zrange(GatewayKeys.of("shop.movies").seen(7), 0, -1) == []


def test_bad_input_names_the_field_and_unreachable_redis_is_transient(
    tmp_path: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(BadInputError, match="maxItemsPerUser"):
        seed(config("file:///x", redis_url, maxItemsPerUser=0))
    with pytest.raises(BadInputError, match="recommender"):
        seed(config("file:///x", redis_url) | {"recommender": "no-namespace"})
    with pytest.raises(BadInputError, match=r"redisUrl.*password"):
        seed(config("file:///x", "redis://u:secret@localhost:6379/0"))
    broken = tmp_path / "broken"
    broken.mkdir()
    pq.write_table(pa.table({"user_id": [1], "item_id": [2]}), broken / "p.parquet")
    with pytest.raises(BadInputError, match="event_timestamp"):
        seed(config(f"file://{broken}", redis_url))

    uri = write_interactions(tmp_path / "ok", [(1, 2, 3)])
    path = tmp_path / "cfg.json"
    term = tmp_path / "termination-log"
    path.write_text(json.dumps(config(uri, "redis://127.0.0.1:1/0")))
    assert main(["--config", str(path), "--termination-log", str(term)]) == EXIT_TRANSIENT
    assert "unreachable" in term.read_text()
    path.write_text(json.dumps(config(uri, redis_url, extra=1)))
    assert main(["--config", str(path), "--termination-log", str(term)]) == EXIT_BAD_INPUT
    assert "extra" in term.read_text()


def test_the_recommenders_column_names_are_read(
    tmp_path: Path, redis_client: redis.Redis, redis_url: str
) -> None:
    """spec.interactions names the columns; the Job the operator renders reads them."""
    uri = write_interactions(tmp_path / "i", [(7, 70, 1), (7, 71, 2)])
    table = pq.read_table(tmp_path / "i" / "part-0.parquet")
    renamed = table.rename_columns({"user_id": "uid", "item_id": "sku", "event_timestamp": "at"})
    pq.write_table(renamed, tmp_path / "i" / "part-0.parquet")
    example = Path(__file__).resolve().parents[2] / "examples" / "recommender.yaml"
    raw = next(d for d in yaml.safe_load_all(example.read_text()) if d["kind"] == "Recommender")
    raw["metadata"] |= {"namespace": "shop", "uid": "u-1"}
    raw["spec"]["interactions"] = {
        "path": uri, "userIdColumn": "uid", "itemIdColumn": "sku", "timestampField": "at"
    }  # fmt: skip
    raw["spec"]["stores"]["redis"]["url"] = redis_url
    rendered = history_config(Recommender.model_validate(raw)).to_wire()
    assert rendered["interactionColumns"] == {"userId": "uid", "itemId": "sku", "timestamp": "at"}
    assert seed(rendered) == {"users": 1, "pairs": 2, "interactions": 2}
    seen = redis_client.zrevrange(GatewayKeys.of("shop.movies").seen(7), 0, -1)
    assert seen == [b"71", b"70"]
