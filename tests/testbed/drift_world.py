"""A world whose users' features move, for the demo's ``--scenario drift`` and its test.

The rollout world (``rollout_world``) serves ids only; a drift check compares the user
features the gateway serves with the stable version's training profile, so here the users
have features (age, gender, occupation), a FeatureView materializes them into Redis, and the
first version trains on them.

- Users and items come from the synthetic generator with the shift knob (``drift``): users
  who appear later in the period are younger and lean to other occupations, in proportion to
  when they appear; users present from the start have the features of the stationary world.
- The interactions the first version trains on are the stationary world's (``drift=0``: the
  same users, items and tastes; the knob also moves tastes along a trend, and the simulated
  users below click by their own untrended taste, so training on trended picks would teach a
  taste nobody clicks by), and only those of the users present from the start: the model and
  its profile know the unshifted population only.
- ``early`` users ask first (served features as trained on: no alarm), then ``late`` ones,
  those who appear last, whose features moved most (drift, with the features named).

``Traffic`` (``rollout_world``) plays either group against the gateways and clicks by the
world's true tastes, so the clicks the log join writes are real feedback a retrain can learn
from.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys_workloads.datasets.layout import INTERACTIONS_SCHEMA, USER_ID, DatasetPaths
from recsys_workloads.datasets.parquet_io import parquet_sink
from recsys_workloads.datasets.synthetic import SyntheticSpec, World, build_world, write_dataset
from testbed.rollout_world import Models, recommender
from testbed.served_traffic import USER_FEATURES

#: Small enough to train in seconds on one CPU thread; the first version learns from the
#: early users' share of the interactions.
SPEC = SyntheticSpec(users=600, items=300, interactions=9_000, seed=11, temperature=0.3)
#: Late users are up to ``DRIFT`` x 15 years younger (see ``datasets.synthetic``).
DRIFT = 2.0
#: Late users: those who appear in the last fifth of the period.
LATE_FROM = 0.8
#: A schedule that fires on New Year's Day only: the demo starts the drift checks and log
#: joins itself (``kubectl create job --from=cronjob/...``), when its traffic is in place.
BY_HAND = "0 0 1 1 *"
#: Served entries each drift check samples.
SAMPLE_SIZE = 1000
#: The gate's holdout: the newest share of all interactions (the logged ones are the newest).
HOLDOUT = 0.05
#: Clicks the traffic makes before the log join, as a share of the batch interactions: the
#: logged clicks are then over three times the holdout (0.2 B against 0.05 x 1.2 B), so most
#: of them, late users' too, are in the retrain's training split.
LOGGED_CLICKS = 0.2


@dataclass(frozen=True)
class DriftWorld:
    root: Path
    #: users and items of the shifted world, interactions of the early users (stationary)
    paths: DatasetPaths
    #: the latent state (tastes) the simulated users click by
    world: World
    #: users present from the start: features as the first version was trained on
    early: list[int]
    #: users who appear after ``LATE_FROM`` of the period: features moved most
    late: list[int]
    #: the interactions the first version trains on, and the end of their period (µs)
    interactions: int
    end_us: int


def write_drift_world(
    root: Path, spec: SyntheticSpec = SPEC, drift: float = DRIFT, late_from: float = LATE_FROM
) -> DriftWorld:
    """The world under ``root``: ``data/`` holds what the Recommender and FeatureViews read."""
    shifted = write_dataset(str(root / "data"), spec=replace(spec, drift=drift))
    stationary = write_dataset(str(root / "stationary"), spec=replace(spec, drift=0.0))
    world = build_world(spec)
    appears = world.user_appears
    early = np.flatnonzero(appears == 0)
    late = np.flatnonzero(appears >= int(late_from * world.period_us))
    table = pq.read_table(stationary.interactions)
    table = table.filter(pc.less(table.column(USER_ID), int(early.size)))
    # ids are given in order of appearance, so the users present at the start are a prefix
    assert early.tolist() == list(range(early.size))
    with parquet_sink(shifted.interactions, INTERACTIONS_SCHEMA) as sink:
        sink.write(table)
    end_us = int(spec.start.timestamp() * 1_000_000) + world.period_us
    return DriftWorld(root, shifted, world, early.tolist(), late.tolist(), table.num_rows, end_us)


def user_feature_view(name: str, world: DriftWorld, redis_url: str) -> dict[str, Any]:
    """The users' features, materialized into Redis by the backfill: what the gateway serves
    each request with, and what training joins (the FeatureView's source)."""
    dtypes = {"age": "Int32", "gender": "String", "occupation": "String"}
    return {
        "apiVersion": "recsys.dev/v1alpha1",
        "kind": "FeatureView",
        "metadata": {"name": name},
        "spec": {
            "entity": {"name": "user", "joinKeys": ["user_id"]},
            "source": {"path": f"file://{world.paths.users}", "timestampField": "event_timestamp"},
            "features": [{"name": f, "dtype": dtypes[f]} for f in USER_FEATURES],
            "onlineStore": {"redis": {"url": redis_url}},
            "materialization": {
                "cronJob": {"schedule": BY_HAND},
                "backfill": {"startTime": f"{world.world.spec.start.year - 1}-01-01T00:00:00Z"},
            },
        },
    }


def drift_recommender(
    name: str, view: str, world: DriftWorld, redis_url: str, rollout: dict[str, Any]
) -> dict[str, Any]:
    """The rollout world's Recommender with the users' FeatureView, drift checks and the log
    join (both started by hand), and training on (not suspended: drift retrains).

    Serving retrieves 200 candidates, filters what each user has seen and ranks them: what the
    training profile's score histogram describes (``train.profile``), so the scores of traffic
    like training's are no drift either."""
    models = Models(world.root, world.paths, world.world, {})
    rec = recommender(name, models, redis_url, rollout)
    spec = rec["spec"]
    spec["featureViews"] = {"user": [{"name": view}]}
    spec["retrieval"] = {"embeddingDim": 16, "numCandidates": 200}
    spec["ranking"] = {"topK": 20}
    spec["filtering"] = {"excludeSeen": True}
    spec["training"] = {
        "hyperParameters": {"epochs": 4, "batchSize": 512, "learningRate": 0.01},
        "evaluation": {
            "k": 10,
            "holdoutFraction": HOLDOUT,
            "metrics": [{"name": "recallAtK", "thresholdRange": {"min": 0.01}}],
        },
        "loggedData": {"schedule": BY_HAND},
    }
    spec["drift"] = {"schedule": BY_HAND, "consecutiveChecks": 2, "sampleSize": SAMPLE_SIZE}
    return rec
