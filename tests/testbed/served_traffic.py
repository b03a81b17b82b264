"""Served traffic from the synthetic world, scored by a trained model, as the gateway logs it.

For the drift check's benchmark and integration test:

- ``train_on_world``: the synthetic world (``datasets.synthetic``) written to parquet and a
  small model trained on it with the training Job's own entry (artifact, profile and all).
- ``GatewayReplay``: what the gateway would serve each user of a world: the user tower
  (``serving.inference``, the code the Triton python backend runs) on the user's raw feature
  row, exact inner-product retrieval over the artifact's item embeddings with the user's
  training items filtered out as seen, the ranker over the ``candidates`` survivors, their
  final scores with the version's fusion (``recsys_workloads.scoring``) and the gateway's
  ``top_k``. The model is deterministic, so each user is served once and requests
  reuse the answer.
- ``requests``: who asks when, as the generator's interactions do (a uniformly drawn user
  among those who exist at that time), returned as ``ServedRecord`` s.

A world with ``drift > 0`` and the same seed has the same users, items and tastes; only the
features of users who appear later move (younger, other occupations), in proportion to when
they appear. So a model trained on the ``drift=0`` world and served the ``drift=d`` world's
users at time ``t`` sees a shift growing from nothing at the start to the knob at the end.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from recsys_workloads.artifact_store import ArtifactReader, Store
from recsys_workloads.datasets.layout import DatasetPaths
from recsys_workloads.datasets.synthetic import (
    SyntheticSpec,
    World,
    build_world,
    user_rows,
    write_dataset,
)
from recsys_workloads.gateway.rules import top_k
from recsys_workloads.gateway.served_log import ServedRecord
from recsys_workloads.scoring import fuse
from recsys_workloads.serving.inference import RankerScorer, RankQuery, UserTower
from recsys_workloads.serving.repository import item_feature_table
from recsys_workloads.train.export import load_model_artifact
from recsys_workloads.train.pipeline import run as run_training
from recsys_workloads.train.profile import SCORE_CANDIDATES, SCORE_TOP_K

USER_FEATURES = ("age", "gender", "occupation")


def train_config(paths: DatasetPaths, artifact_uri: str, **model: Any) -> dict[str, Any]:
    """A small model that trains in seconds on one thread."""
    return {
        "version": "synthetic-v1",
        "seed": 3,
        "data": {
            "interactionsUri": paths.interactions,
            "usersUri": paths.users,
            "itemsUri": paths.items,
        },
        "artifactUri": artifact_uri,
        "features": {"user": list(USER_FEATURES), "item": ["genres", "release_year"]},
        "model": {
            "embeddingDim": 16,
            "featureDim": 8,
            "towerHidden": [32],
            "rankerHidden": [32],
            "historyLength": 0,
            **model,
        },
        "training": {
            "epochs": 2,
            "batchSize": 512,
            "learningRate": 0.01,
            "device": "cpu",
            "cpuThreads": 1,
        },
        "evaluation": {"k": [10], "rankingNegatives": 20, "baselines": []},
    }


def train_on_world(root: Path, spec: SyntheticSpec) -> tuple[DatasetPaths, str]:
    """The world's dataset under ``root/data`` and a model trained on it; its artifact URI."""
    paths = write_dataset(str(root / "data"), spec=spec)
    artifact = f"file://{root}/artifact"
    run_training(train_config(paths, artifact))
    return paths, artifact


@dataclass(frozen=True)
class Served:
    """What one user is served: item ids and final scores, best first."""

    items: list[tuple[int, float]]


class GatewayReplay:
    """The gateway's retrieval, filtering, scoring and ordering, in process (no rules)."""

    def __init__(self, artifact_uri: str, paths: DatasetPaths) -> None:
        store = Store({})
        model = load_model_artifact(store, artifact_uri)
        reader = ArtifactReader(store, artifact_uri, "model")
        self.item_ids = np.asarray(reader.read_npy("embeddings/item_ids.npy"), dtype=np.int64)
        self.item_vectors = np.asarray(reader.read_npy("embeddings/item_embeddings.npy"))
        self.version = str(model.manifest["version"])
        self.fusion = model.fusion
        self.tower = UserTower(
            model.shape, model.user_encoder, model.item_encoder, model.two_tower.user_tower
        )
        items = pq.read_table(paths.items)
        self.ranker = RankerScorer(
            model.shape,
            model.user_encoder,
            model.item_encoder,
            item_feature_table(model.item_encoder, self.item_ids, items),
            model.ranker,
        )
        cutoff = int(reader.read_json("profile.json")["cutoff"])
        inter = pq.read_table(paths.interactions)
        times = inter.column("event_timestamp").cast("int64").to_numpy()
        before = times < cutoff
        users = inter.column("user_id").to_numpy()[before]
        its = inter.column("item_id").to_numpy()[before]
        self.seen: dict[int, set[int]] = {}
        for u, i in zip(users.tolist(), its.tolist(), strict=True):
            self.seen.setdefault(u, set()).add(i)

    def serve(
        self,
        user_ids: list[int],
        rows: list[dict[str, Any] | None],
        candidates: int = SCORE_CANDIDATES,
        k: int = SCORE_TOP_K,
    ) -> list[Served]:
        vectors = self.tower.embed(user_ids, rows)
        scores = vectors @ self.item_vectors.T
        position = {int(i): n for n, i in enumerate(self.item_ids.tolist())}
        queries, retrieval = [], []
        for row, user in enumerate(user_ids):
            seen = [position[i] for i in self.seen.get(user, ()) if i in position]
            scores[row, seen] = -np.inf
            c = min(candidates, int(np.isfinite(scores[row]).sum()))
            best = np.argpartition(-scores[row], c - 1)[:c]
            best = best[np.argsort(-scores[row, best], kind="stable")]
            queries.append(RankQuery(user, rows[row], self.item_ids[best]))
            retrieval.append(scores[row, best])
        logits = self.ranker.score(queries)
        return [
            Served([(s.item_id, s.score) for s in top_k(q.item_ids, fuse(self.fusion, lg, r), k)])
            for q, lg, r in zip(queries, logits, retrieval, strict=True)
        ]


@dataclass(frozen=True)
class Population:
    """A world's users as a request sees them: appearance times, feature rows, what they get."""

    world: World
    rows: list[dict[str, Any]]
    served: list[Served]


def population(base: SyntheticSpec, drift: float, replay: GatewayReplay) -> Population:
    """The users of ``base``'s world with the shift knob at ``drift``, each served once."""
    world = build_world(replace(base, drift=drift))
    table = user_rows(world, 0, base.users)
    ids = table.column("user_id").to_numpy()
    if ids.size != base.users:  # user_updates adds rows; requests here use one row per user
        raise ValueError("use a spec without user_updates")
    rows = [{f: r[f] for f in USER_FEATURES} for r in table.select(list(USER_FEATURES)).to_pylist()]
    served: list[Served] = []
    for lo in range(0, len(rows), 512):
        served += replay.serve(ids[lo : lo + 512].tolist(), rows[lo : lo + 512])
    return Population(world, rows, served)


def requests(
    pop: Population,
    start_fraction: float,
    end_fraction: float,
    n: int,
    rng: np.random.Generator,
    version: str,
) -> list[ServedRecord]:
    """``n`` requests at uniform times in that slice of the world's period, oldest first."""
    world = pop.world
    period = world.period_us
    times = np.sort(rng.integers(int(start_fraction * period), int(end_fraction * period), n))
    alive = np.maximum(np.searchsorted(world.user_appears, times, side="right"), 1)
    users = (rng.random(n) * alive).astype(np.int64)
    base_ms = int(world.spec.start.timestamp() * 1000)
    return [
        ServedRecord(
            request_id=f"{uuid.UUID(int=int(rng.integers(2**62))).hex}-s",
            ts_ms=base_ms + int(t) // 1000,
            user_id=int(u),
            variant="stable",
            model_version=version,
            index="",
            fallback=None,
            items=pop.served[u].items,
            candidates=[],
            features=pop.rows[u],
            history=[],
        )
        for t, u in zip(times.tolist(), users.tolist(), strict=True)
    ]
