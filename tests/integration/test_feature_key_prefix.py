"""A FeatureView with its own ``keyPrefix`` is served: the operator renders the materializer's
config and the gateway's from the same objects, the real materializer writes a real Redis, and
the real gateway's store reads the features back, under the prefix the FeatureView names.

Before the keyspace was one module, the gateway assumed the default prefix ``fv`` and read
nothing for such a FeatureView: every user looked featureless, silently.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
import yaml

from recsys_contract.keyspace import FeatureViewKeys
from recsys_operator.api.featureview import FeatureView
from recsys_operator.api.recommender import Recommender
from recsys_operator.planning import featureview as fv_planner
from recsys_operator.planning.rollout import Routing
from recsys_operator.planning.serving import GATEWAY_CONFIG_FILE, gateway_objects, routing_table
from recsys_workloads import materialize
from recsys_workloads.gateway.app import Gateway
from recsys_workloads.gateway.config import parse_gateway_config

pytestmark = pytest.mark.redis

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "recommender.yaml"
OWNER = {"apiVersion": "recsys.dev/v1alpha1", "kind": "X", "metadata": {"name": "o", "uid": "u"}}
USERS_PREFIX = "team-a:features"


def _example(kind: str, name: str) -> dict[str, Any]:
    for doc in yaml.safe_load_all(EXAMPLE.read_text()):
        if doc and doc["kind"] == kind and doc["metadata"]["name"] == name:
            doc["metadata"] |= {"namespace": "shop", "uid": "u-1", "generation": 1}
            return copy.deepcopy(doc)
    raise LookupError(name)


def _parquet(path: Path, columns: dict[str, pa.Array]) -> str:
    pq.write_table(pa.table(columns), path)
    return f"file://{path}"


def _feature_views(tmp_path: Path, redis_url: str) -> dict[str, FeatureView]:
    """The example's users (under their own key prefix) and items (the default one), reading
    small parquet files and writing the test's Redis."""
    recent = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    times = pa.array([recent, recent], pa.timestamp("us", tz="UTC"))
    users = _example("FeatureView", "movie-users")
    users["spec"]["source"]["path"] = _parquet(
        tmp_path / "users.parquet",
        {
            "user_id": pa.array([7, 8], pa.int64()),
            "event_timestamp": times,
            "age": pa.array([31, 45], pa.int64()),
            "gender": pa.array(["F", "M"]),
            "occupation": pa.array(["writer", "nurse"]),
            "zip_prefix": pa.array(["1", "9"]),
        },
    )
    users["spec"]["onlineStore"]["redis"] |= {"url": redis_url, "keyPrefix": USERS_PREFIX}
    items = _example("FeatureView", "movie-items")
    items["spec"]["source"]["path"] = _parquet(
        tmp_path / "items.parquet",
        {
            "item_id": pa.array([1, 2], pa.int64()),
            "event_timestamp": times,
            "genres": pa.array([["Drama"], ["Comedy", "Romance"]], pa.list_(pa.string())),
            "release_year": pa.array([1994, 2019], pa.int64()),
            "in_catalog": pa.array([True, False]),
        },
    )
    items["spec"]["onlineStore"]["redis"]["url"] = redis_url
    return {doc["metadata"]["name"]: FeatureView.model_validate(doc) for doc in (users, items)}


@pytest.fixture
async def gateway(tmp_path: Path, redis_url: str) -> AsyncIterator[Gateway]:
    """Both FeatureViews materialized from the operator's rendering, and the gateway the
    operator renders for the example Recommender."""
    views = _feature_views(tmp_path, redis_url)
    for fv in views.values():
        rendered = fv_planner.plan(fv, OWNER, "img").config_map["data"]["config.json"]
        summary = materialize.work(json.loads(rendered))
        assert summary["entitiesWritten"] == 2
    raw = _example("Recommender", "movies")
    raw["spec"]["stores"]["redis"]["url"] = redis_url
    rec = Recommender.model_validate(raw)
    table = routing_table(rec, Routing("m-v1"), {"m-v1": None})
    config_map = gateway_objects(rec, OWNER, table, "img", views)[0]
    gw = Gateway(parse_gateway_config(json.loads(config_map["data"][GATEWAY_CONFIG_FILE])))
    try:
        yield gw
    finally:
        await gw.stop()


async def test_the_materializer_writes_under_the_feature_views_prefix(
    gateway: Gateway, redis_client: redis.Redis
) -> None:
    assert redis_client.get(FeatureViewKeys.of("shop.movie-users", USERS_PREFIX).live)
    assert redis_client.get(FeatureViewKeys.of("shop.movie-items").live)
    # nothing of the users' under the default prefix, where the gateway used to look
    assert not redis_client.keys(FeatureViewKeys.of("shop.movie-users").base + "*")


async def test_the_gateway_reads_user_features_under_the_feature_views_prefix(
    gateway: Gateway,
) -> None:
    row, _ = await gateway.store.request_reads(7, seen=False, blocked=False, seen_since_ms=None)
    # the Recommender takes age, gender and occupation from the view (not zip_prefix)
    assert row == {"age": 31, "gender": "F", "occupation": "writer"}
    unknown, _ = await gateway.store.request_reads(
        99, seen=False, blocked=False, seen_since_ms=None
    )
    assert unknown is None


async def test_item_features_for_the_rules_come_from_the_default_prefix(
    gateway: Gateway,
) -> None:
    rows = await gateway.store.item_features([1, 2, 3])
    assert rows[1] == {"genres": ["Drama"], "release_year": 1994, "in_catalog": True}
    assert rows[2] == {"genres": ["Comedy", "Romance"], "release_year": 2019, "in_catalog": False}
    assert rows[3] is None
