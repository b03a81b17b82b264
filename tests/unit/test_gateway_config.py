"""The gateway config: the operator's rendering parses; mistakes are named with their fix."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from recsys_contract.formats import parse_duration
from recsys_operator.api.recommender import Recommender
from recsys_operator.planning.rollout import Routing
from recsys_operator.planning.serving import gateway_objects, routing_table
from recsys_workloads.gateway.__main__ import main as gateway_main
from recsys_workloads.gateway.app import Gateway
from recsys_workloads.gateway.config import parse_gateway_config, parse_routing
from recsys_workloads.runtime import EXIT_BAD_INPUT, BadInputError

BASE: dict[str, Any] = {
    "recommender": "shop.movies",
    "routing": {
        "stable": {"modelVersion": "m-v1", "triton": "t1:8000", "index": "s3://b/i/m-v1"},
        "canaryWeight": 0,
        "userSticky": True,
    },
    "redisUrl": "redis://redis:6379/0",
    "candidates": 200,
    "topK": 20,
    "scoringTimeout": "50ms",
    "filtering": {"excludeSeen": True, "excludeBlocked": True},
    "ordering": {},
}


def with_(**changes: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(BASE)
    cfg.update(changes)
    return cfg


def test_the_operators_rendering_parses_with_defaults() -> None:
    cfg = parse_gateway_config(BASE)
    assert cfg.scoring_timeout_s == pytest.approx(0.05)
    assert cfg.poll_interval_s == 1.0
    assert cfg.routing.canary is None
    assert cfg.seen_window_s is None
    assert cfg.feature_views.user == []


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("50ms", 0.05), ("1s", 1.0), ("1.5s", 1.5), ("1h30m", 5400.0), ("720h", 2592000.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "50", "5 s", "1d", "ms", "1s2"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("cfg", "named"),
    [
        (with_(scoringTimeout="fast"), "scoringTimeout"),
        (with_(redisUrl="redis://:secret@redis:6379/0"), "REDIS_PASSWORD"),
        (with_(redisUrl="http://redis"), "redisUrl"),
        (with_(topK=300), "topK (300) exceeds candidates"),
        (with_(candiates=10), "candiates: unknown field"),
        # no Triton is Batch mode, which serves stored lists only: they must be configured
        (with_(routing={"stable": {"modelVersion": "v1"}}), "has no triton"),
        (
            with_(routing={**BASE["routing"], "canaryWeight": 10}),
            "canaryWeight is above 0 but no canary",
        ),
        (
            with_(ordering={"diversity": {"key": "genres", "maxPerValue": 2}}),
            "featureViews.item names no FeatureView",
        ),
        (
            with_(
                filtering={
                    "itemSelector": {
                        "matchExpressions": [{"key": "price", "operator": "Gt", "values": ["x"]}]
                    }
                },
                featureViews={"item": [{"name": "shop.items"}]},
            ),
            "is not a number",
        ),
        (
            with_(
                ordering={
                    "boosts": [
                        {
                            "name": "b",
                            "factor": 2,
                            "matchExpressions": [{"key": "k", "operator": "In"}],
                        }
                    ]
                },
                featureViews={"item": [{"name": "shop.items"}]},
            ),
            "needs at least one value",
        ),
        (with_(filtering={"seenWindow": "a month"}), "seenWindow"),
    ],
)
def test_mistakes_are_named(cfg: dict[str, Any], named: str) -> None:
    with pytest.raises(BadInputError, match="gateway config") as err:
        parse_gateway_config(cfg)
    assert named in str(err.value)


def test_routing_table_alone() -> None:
    table = parse_routing(
        {
            "stable": {"modelVersion": "a", "triton": "t:1"},
            "canary": {"modelVersion": "b", "triton": "t:2", "index": "file:///i/b"},
            "canaryWeight": 25,
        }
    )
    assert table.canary is not None
    assert table.canary.index == "file:///i/b"
    assert table.user_sticky
    with pytest.raises(BadInputError, match="canaryWeight"):
        parse_routing({"stable": {"modelVersion": "a", "triton": "t:1"}, "canaryWeight": 101})


def test_the_gateway_accepts_what_the_operator_renders_for_the_example() -> None:
    """Contract between planning/serving.py and the gateway: the example Recommender's
    ConfigMap parses, with the feature views, rules and routing it names."""
    docs = yaml.safe_load_all(
        (Path(__file__).parents[2] / "examples" / "recommender.yaml").read_text()
    )
    raw = next(d for d in docs if d and d.get("kind") == "Recommender")
    raw["metadata"]["namespace"] = "shop"
    rec = Recommender.model_validate(raw)
    table = routing_table(
        rec, Routing("m-v1", "m-v2", 10), {"m-v1": "s3://i/m-v1", "m-v2": "s3://i/m-v2"}
    )
    owner = {
        "apiVersion": "recsys.dev/v1alpha1",
        "kind": "Recommender",
        "metadata": {"name": "x", "uid": "u"},
    }
    config_map = gateway_objects(rec, owner, table, "img", {})[0]
    cfg = parse_gateway_config(json.loads(config_map["data"]["gateway.json"]))
    assert cfg.recommender == f"shop.{raw['metadata']['name']}"
    assert cfg.routing.canary is not None
    assert cfg.routing.canary.index == "s3://i/m-v2"
    assert cfg.routing.canary_weight == 10
    assert [v.name for v in cfg.feature_views.user] == ["shop.movie-users"]
    assert cfg.feature_views.user[0].features == ["age", "gender", "occupation"]
    assert [v.name for v in cfg.feature_views.item] == ["shop.movie-items"]
    assert cfg.filtering.item_selector is not None
    assert cfg.ordering.diversity is not None
    assert cfg.seen_window_s == 2160 * 3600


def test_a_bad_config_file_exits_with_bad_input_before_serving(tmp_path: Path) -> None:
    path = tmp_path / "gateway.json"
    path.write_text(json.dumps(with_(topK=0)))
    assert gateway_main(["--config", str(path), "--port", "0"]) == EXIT_BAD_INPUT
    assert gateway_main(["--config", str(tmp_path / "missing.json")]) == EXIT_BAD_INPUT


def test_a_changed_config_file_brings_its_routing_table(tmp_path: Path) -> None:
    """Without a table in Redis, a remounted ConfigMap still reaches the gateway."""
    path = tmp_path / "gateway.json"
    path.write_text(json.dumps(BASE))
    gateway = Gateway(parse_gateway_config(BASE), config_path=path)
    gateway._reread_config_file()
    assert gateway.file_routing.canary is None
    changed = with_(
        routing={**BASE["routing"], "canary": {"modelVersion": "m-v2", "triton": "t2:8000"},
                 "canaryWeight": 30}
    )  # fmt: skip
    path.write_text(json.dumps(changed))
    os.utime(path, (1, 1))  # a new mtime, whatever the clock's resolution
    gateway._reread_config_file()
    assert gateway.file_routing.canary_weight == 30
    path.write_text("{broken")
    os.utime(path, (2, 2))
    gateway._reread_config_file()  # logged, and the last good table kept
    assert gateway.file_routing.canary_weight == 30
