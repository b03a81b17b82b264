"""A split run's pod learns its shard and run from its environment: what Kubernetes (the
Indexed Job's index) and the operator (the Job's UID) put there, refused clearly otherwise."""

from __future__ import annotations

from typing import Any

import pytest

from recsys_workloads.materialize import Shard, parse_config, shard_from_env
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
