"""The drift check end to end: a trained model's profile, served entries in a real Redis written
by the gateway's own served-log writer, and the workload run as its pod runs it."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio

from recsys_contract.keyspace import GatewayKeys
from recsys_workloads.datasets.layout import DatasetPaths
from recsys_workloads.datasets.synthetic import SyntheticSpec
from recsys_workloads.gateway.served_log import ServedRecord, StreamWriter
from recsys_workloads.runtime import EXIT_BAD_INPUT, EXIT_OK, EXIT_TRANSIENT
from testbed.served_traffic import GatewayReplay, population, requests, train_on_world

pytestmark = pytest.mark.redis

RECOMMENDER = "shop.movies"
SPEC = SyntheticSpec(users=1000, items=400, interactions=20_000, seed=5)
SHIFTED = {"user.age", "user.occupation"}  # what the generator's knob moves


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[DatasetPaths, str, GatewayReplay]:
    root = tmp_path_factory.mktemp("drift-world")
    paths, artifact = train_on_world(root, SPEC)
    return paths, artifact, GatewayReplay(artifact, paths)


def write_served(redis_url: str, records: list[ServedRecord], prefix: str = "") -> None:
    """Through the gateway's writer: batched XADDs from its bounded queue."""
    dropped: list[tuple[str, int]] = []

    async def go() -> None:
        client = redis.asyncio.Redis.from_url(redis_url)
        writer = StreamWriter(
            client,
            GatewayKeys.of(RECOMMENDER, prefix).served,
            max_len=1_000_000,
            on_drop=lambda why, n: dropped.append((why, n)),
        )
        writer.start()
        for record in records:
            writer.append(record.to_fields())
            if writer.queue.full():
                await writer.queue.join()
        await writer.close(grace_s=30)
        await client.aclose()

    asyncio.run(go())
    assert dropped == []


def drift_config(artifact: str, redis_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "recommender": RECOMMENDER,
        "servedLog": {"redisUrl": redis_url},
        "modelArtifactUri": artifact,
        "modelVersion": "synthetic-v1",
        "sampleSize": 2000,
        **extra,
    }


def run_drift(tmp_path: Path, cfg: dict[str, Any]) -> tuple[int, dict[str, Any], str]:
    config, term = tmp_path / "drift.json", tmp_path / "termination-log"
    config.write_text(json.dumps(cfg))
    done = subprocess.run(
        [sys.executable, "-m", "recsys_workloads.drift", "--config", str(config),
         "--termination-log", str(term)],
        capture_output=True, text=True, timeout=120, env=os.environ.copy(),
    )  # fmt: skip
    return done.returncode, json.loads(term.read_text()), done.stderr


def iso(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds")


def test_training_profiles_the_served_scores(
    world: tuple[DatasetPaths, str, GatewayReplay],
) -> None:
    _, artifact, _ = world
    profile = json.loads(Path(artifact.removeprefix("file://"), "profile.json").read_text())
    scores = profile["scores"]
    assert (scores["model"], scores["topK"], scores["candidates"]) == ("ranker", 20, 200)
    assert len(scores["bins"]) == len(scores["boundaries"]) + 2 == 11
    assert sum(scores["distribution"]["probabilities"]) == pytest.approx(1.0)
    assert scores["distribution"]["count"] == 20 * scores["users"]


def test_traffic_like_training_is_not_drift(
    world: tuple[DatasetPaths, str, GatewayReplay], redis_url: str, tmp_path: Path
) -> None:
    _, artifact, replay = world
    rng = np.random.default_rng(11)
    served = requests(population(SPEC, 0.0, replay), 0.8, 1.0, 2000, rng, replay.version)
    # a canary of another version, on shifted traffic, interleaved after them: not sampled
    canary = requests(population(SPEC, 6.0, replay), 0.99, 1.0, 600, rng, "synthetic-v2")
    write_served(redis_url, served + canary)

    code, summary, _ = run_drift(tmp_path, drift_config(artifact, redis_url))
    assert code == EXIT_OK, summary
    assert summary["status"] == "Succeeded"
    assert summary["judged"] is True
    assert summary["drifted"] is False, summary
    assert summary["driftedFeatures"] == []
    assert summary["method"] == "PSI"
    assert summary["threshold"] == 0.2
    assert {f["name"] for f in summary["features"]} == {
        "user.age",
        "user.gender",
        "user.occupation",
    }
    assert max(f["value"] for f in summary["features"]) < 0.05
    assert summary["score"]["value"] < 0.05
    assert summary["score"]["entries"] == 2000
    assert summary["score"]["values"] == 2000 * 20
    assert summary["catalog"]["unseenItemShare"] == 0.0
    sample = summary["sample"]
    assert sample["size"] == 2000
    assert sample["scanned"] == 2600
    assert sample["malformed"] == 0
    assert sample["from"] == iso(served[0].ts_ms)
    assert sample["to"] == iso(served[-1].ts_ms)


@pytest.mark.parametrize("method", ["PSI", "KL"])
def test_shifted_traffic_is_drift_naming_the_shifted_features(
    world: tuple[DatasetPaths, str, GatewayReplay], redis_url: str, tmp_path: Path, method: str
) -> None:
    _, artifact, replay = world
    rng = np.random.default_rng(12)
    old = requests(population(SPEC, 0.0, replay), 0.5, 0.6, 1000, rng, replay.version)
    new = requests(population(SPEC, 4.0, replay), 0.9, 1.0, 2000, rng, replay.version)
    write_served(redis_url, old + new, prefix="team-a:")
    cfg = drift_config(
        artifact,
        redis_url,
        method=method,
        servedLog={"redisUrl": redis_url, "keyPrefix": "team-a:"},
    )

    code, summary, _ = run_drift(tmp_path, cfg)
    assert code == EXIT_OK, summary
    assert summary["drifted"] is True, summary
    assert summary["driftedFeatures"], summary
    assert set(summary["driftedFeatures"]) <= SHIFTED
    assert summary["features"][0]["name"] in SHIFTED
    gender = next(f for f in summary["features"] if f["name"] == "user.gender")
    assert gender["drifted"] is False
    assert summary["sample"]["from"] == iso(new[0].ts_ms)  # the newest 2000 only


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"sampleSize": 5}, "sampleSize"),
        ({"method": "KL", "threshold": 3.0}, "threshold"),
        ({"features": ["height"]}, "features"),
        ({"modelArtifactUri": "file:///nonexistent/model"}, "not published"),
    ],
)
def test_bad_config_exits_2_naming_the_field(
    world: tuple[DatasetPaths, str, GatewayReplay],
    redis_url: str,
    tmp_path: Path,
    extra: dict[str, Any],
    field: str,
) -> None:
    _, artifact, _ = world
    code, summary, stderr = run_drift(tmp_path, drift_config(artifact, redis_url, **extra))
    assert code == EXIT_BAD_INPUT
    assert summary["reason"] == "BadInput"
    assert field in summary["message"]
    assert field in stderr


def test_unreachable_redis_exits_75(
    world: tuple[DatasetPaths, str, GatewayReplay], tmp_path: Path
) -> None:
    _, artifact, _ = world
    code, summary, _ = run_drift(tmp_path, drift_config(artifact, "redis://127.0.0.1:1/0"))
    assert code == EXIT_TRANSIENT
    assert summary["reason"] == "Transient"
    assert "unreachable" in summary["message"]


def test_an_empty_log_judges_nothing(
    world: tuple[DatasetPaths, str, GatewayReplay], redis_url: str, tmp_path: Path
) -> None:
    _, artifact, _ = world
    code, summary, _ = run_drift(tmp_path, drift_config(artifact, redis_url))
    assert code == EXIT_OK
    assert summary["judged"] is False
    assert summary["drifted"] is False
    assert summary["sample"]["size"] == 0
