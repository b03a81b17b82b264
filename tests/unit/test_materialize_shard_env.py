"""A split run's pod learns its shard and run from its environment: what Kubernetes (the
Indexed Job's index) and the operator (the Job's UID) put there, refused clearly otherwise;
and every pod puts each entity in the same shard."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from recsys_workloads.materialize import Shard, parse_config, shard_from_env, shard_of
from recsys_workloads.runtime import BadInputError

CONFIG: dict[str, Any] = {
    "featureView": "shop.users",
    "joinKey": "user_id",
    "source": {"uri": "/data/users.parquet"},
    "features": [{"name": "age", "type": "int32"}],
    "onlineStore": {"redisUrl": "redis://r:6379/0"},
}


@pytest.mark.parametrize(
    ("case", "shards", "env", "want"),
    [
        ("unsplit: the environment is not read", 1, {}, None),
        ("split: index and run id", 3, {"JOB_COMPLETION_INDEX": "2", "RECSYS_RUN_ID": "u-1"},
         Shard(2, 3, "u-1")),
    ],
)  # fmt: skip
def test_shard_from_the_environment(
    case: str, shards: int, env: dict[str, str], want: Shard | None
) -> None:
    assert shard_from_env(parse_config({**CONFIG, "shards": shards}), env) == want, case


@pytest.mark.parametrize(
    ("case", "env", "message"),
    [
        ("no index: not an Indexed Job", {"RECSYS_RUN_ID": "u-1"}, "JOB_COMPLETION_INDEX is ''"),
        ("index past the shards", {"JOB_COMPLETION_INDEX": "3", "RECSYS_RUN_ID": "u-1"},
         "completions = 3"),
        ("no run id", {"JOB_COMPLETION_INDEX": "0"}, "RECSYS_RUN_ID is empty"),
    ],
)  # fmt: skip
def test_a_split_run_without_its_environment_is_bad_input(
    case: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(BadInputError, match=message):
        shard_from_env(parse_config({**CONFIG, "shards": 3}), env)


@pytest.mark.parametrize("shards", [0, 65])
def test_shards_out_of_range_are_refused_naming_the_field(shards: int) -> None:
    with pytest.raises(BadInputError, match="shards"):
        parse_config({**CONFIG, "shards": shards})


def test_the_hash_split_is_stable_and_spreads() -> None:
    ids = pa.array(list(range(10_000)), pa.int64())
    shards = shard_of(ids, 4)
    assert shard_of(pa.array(list(range(10_000)), pa.int32()), 4).tolist() == shards.tolist()
    assert shard_of(pa.chunked_array([ids.slice(0, 3), ids.slice(3)]), 4).tolist() == (
        shards.tolist()
    )
    strings = shard_of(pa.array([f"user-{i}" for i in range(10_000)]), 4)
    for split in (shards, strings):
        counts = [int((split == i).sum()) for i in range(4)]
        assert min(counts) > 2_300, counts  # about a quarter each
    # pinned: pods of one run (and of an upgraded image) must agree on every entity's shard
    assert shard_of(pa.array([0, 1, 2, 12345], pa.int64()), 7).tolist() == [2, 2, 4, 5]
    assert shard_of(pa.array(["a", "bb", "user-12345", ""]), 7).tolist() == [1, 3, 6, 4]
    # a slice (a batch of a larger column) hashes its own ids, not its parent's first ones
    assert shard_of(pa.array(["x", "bb", "user-12345"]).slice(1), 7).tolist() == [3, 6]
