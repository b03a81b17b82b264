"""The online stack on MovieLens-100k, for the serving tests and benchmarks/serving_bench.py.

``build_artifacts`` runs the offline half once (dataset → the offline tests' tiny training
config → index builds → Triton repositories); ``derive_version`` makes a second ModelVersion
cheaply (the first one's weights, perturbed, republished as an imported artifact would be),
so stable and canary serve different models without a second training run.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pyarrow.parquet as pq
import redis
import torch
from aiohttp import web

from recsys_contract.keyspace import GatewayKeys
from recsys_workloads import materialize
from recsys_workloads.artifact_store import ArtifactReader, ArtifactWriter, Store
from recsys_workloads.datasets import movielens
from recsys_workloads.datasets.layout import DatasetPaths
from recsys_workloads.gateway.app import Gateway, create_app
from recsys_workloads.gateway.config import parse_gateway_config
from recsys_workloads.gateway.control import backfill_seen
from recsys_workloads.index_build import build as build_index
from recsys_workloads.serving.repository import build_repository
from recsys_workloads.train.pipeline import run as train

RECOMMENDER = "test.movies"
USERS_VIEW = "test.users"
ITEMS_VIEW = "test.items"


def tiny_train_config(paths: DatasetPaths, artifact: str, version: str) -> dict[str, Any]:
    """tests/integration/test_offline_e2e.py's tiny model, trained for fewer steps and without
    the ALS/popularity baselines: serving tests need a real artifact, not a good one."""
    return {
        "version": version,
        "seed": 11,
        "data": {
            "interactionsUri": paths.interactions,
            "usersUri": paths.users,
            "itemsUri": paths.items,
        },
        "artifactUri": artifact,
        "model": {"embeddingDim": 32, "featureDim": 8, "towerHidden": [64], "rankerHidden": [32]},
        "training": {"epochs": 1, "batchSize": 512, "maxStepsPerEpoch": 30, "device": "cpu"},
        "evaluation": {"baselines": []},
    }


@dataclass(frozen=True)
class Version:
    name: str
    artifact: str
    index: str
    hnsw_index: str | None = None


@dataclass(frozen=True)
class Artifacts:
    root: Path
    paths: DatasetPaths
    v1: Version
    v2: Version
    repository: Path


def derive_version(src: str, dst: str, version: str, seed: int, scale: float = 0.3) -> None:
    """Republish ``src`` as ``version`` with noise on every weight: a different model with the
    same architecture and encoders (as if imported from elsewhere)."""
    store = Store({})
    reader = ArtifactReader(store, src, "model")
    writer = ArtifactWriter(store, dst, "model")
    gen = torch.Generator().manual_seed(seed)
    for rel in reader.manifest["files"]:
        data = reader.read(rel)
        if rel.endswith(".pt"):
            state = torch.load(io.BytesIO(data), weights_only=True)
            for name, tensor in state.items():
                if tensor.is_floating_point() and tensor.numel() > 1:
                    noise = torch.randn(tensor.shape, generator=gen) * scale * tensor.std()
                    state[name] = tensor + torch.nan_to_num(noise)
            buf = io.BytesIO()
            torch.save(state, buf)
            data = buf.getvalue()
        writer.put(rel, data)
    extra = {k: v for k, v in reader.manifest.items() if k not in ("files", "digest", "kind")}
    writer.publish({**extra, "version": version})


def build_artifacts(root: Path, *, hnsw: bool = True) -> Artifacts:
    paths = movielens.write_dataset(str(root / "ml-100k"))
    v1_art, v2_art = f"file://{root}/models/ml-v1", f"file://{root}/models/ml-v2"
    train(tiny_train_config(paths, v1_art, "ml-v1"))
    derive_version(v1_art, v2_art, "ml-v2", seed=5)
    indexes: dict[str, str] = {}
    for version, art, kind in [
        ("ml-v1", v1_art, "flat"),
        ("ml-v2", v2_art, "flat"),
        *([("ml-v1", v1_art, "hnsw")] if hnsw else []),
    ]:
        uri = f"file://{root}/indexes/{version}-{kind}"
        build_index(
            {"version": version, "modelArtifactUri": art, "indexUri": uri, "index": {"kind": kind}}
        )
        indexes[f"{version}-{kind}"] = uri
    repository = root / "triton"
    for art in (v1_art, v2_art):
        build_repository({"artifactUri": art, "repositoryUri": str(repository)})
    return Artifacts(
        root,
        paths,
        Version("ml-v1", v1_art, indexes["ml-v1-flat"], indexes.get("ml-v1-hnsw")),
        Version("ml-v2", v2_art, indexes["ml-v2-flat"]),
        repository,
    )


def materialize_features(redis_url: str, paths: DatasetPaths) -> None:
    """Users and items of MovieLens into the online store, by the real materializer."""
    for view, source, key, features in (
        (USERS_VIEW, paths.users, "user_id",
         [("age", "int32"), ("gender", "string"), ("occupation", "string")]),
        (ITEMS_VIEW, paths.items, "item_id",
         [("genres", "string_list"), ("release_year", "int32")]),
    ):  # fmt: skip
        materialize.work(
            {
                "featureView": view,
                "joinKey": key,
                "source": {"uri": source},
                "features": [{"name": n, "type": t} for n, t in features],
                "onlineStore": {"redisUrl": redis_url},
                "mode": "full",
            }
        )


def backfill_history(redis_url: str, paths: DatasetPaths) -> int:
    """Every MovieLens interaction into the seen sets (the users' histories)."""
    table = pq.read_table(paths.interactions, columns=["user_id", "item_id", "event_timestamp"])
    times = table.column("event_timestamp").cast("int64").to_numpy() // 1000
    client = redis.Redis.from_url(redis_url)
    try:
        return backfill_seen(
            client,
            GatewayKeys.of(RECOMMENDER),
            table.column("user_id").to_numpy(),
            table.column("item_id").to_numpy(),
            times,
        )
    finally:
        client.close()


def user_history(paths: DatasetPaths, user_id: int) -> list[int]:
    table = pq.read_table(paths.interactions, filters=[("user_id", "=", user_id)])
    return [int(i) for i in np.unique(table.column("item_id").to_numpy())]


def routing(
    stable: Version, triton: str, canary: Version | None = None, weight: int = 0
) -> dict[str, Any]:
    table: dict[str, Any] = {
        "stable": {"modelVersion": stable.name, "triton": triton, "index": stable.index},
        "canaryWeight": weight,
        "userSticky": True,
    }
    if canary is not None:
        table["canary"] = {"modelVersion": canary.name, "triton": triton, "index": canary.index}
    return table


def gateway_config(art: Artifacts, triton: str, redis_url: str, **overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "recommender": RECOMMENDER,
        "routing": routing(art.v1, triton),
        "redisUrl": redis_url,
        "featureViews": {"user": [{"name": USERS_VIEW}], "item": [{"name": ITEMS_VIEW}]},
        "candidates": 100,
        "topK": 10,
        "scoringTimeout": "2s",
        "pollInterval": "100ms",
        "redisTimeout": "500ms",
    }
    cfg.update(overrides)
    return cfg


@contextlib.asynccontextmanager
async def running_gateway(
    cfg: dict[str, Any], config_path: Path | None = None
) -> AsyncIterator[tuple[Gateway, str]]:
    """The gateway app on a free local port, in this event loop."""
    gateway = Gateway(parse_gateway_config(cfg), config_path=config_path)
    runner = web.AppRunner(create_app(gateway), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    assert server.sockets
    port = server.sockets[0].getsockname()[1]
    try:
        yield gateway, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def gateway_client(
    cfg: dict[str, Any], config_path: Path | None = None
) -> AsyncIterator[tuple[Gateway, str, aiohttp.ClientSession]]:
    """``running_gateway`` and an HTTP client session for it."""
    async with running_gateway(cfg, config_path) as (gateway, base), aiohttp.ClientSession() as s:
        yield gateway, base, s
