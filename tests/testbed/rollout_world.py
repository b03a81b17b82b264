"""A rollout on real parts, for the rollout tests and the demo's ``--scenario rollout|rollback``.

- ``train_models``: a synthetic world (``datasets.synthetic``) and two models trained with the
  training Job's own entry: ``good`` on the world itself, ``poor`` on a world with the same
  users and items but other tastes (another seed), so its recommendations miss what the users
  of the first world like. Each artifact's manifest names the ModelVersion it is imported as
  (a Triton repository's models are named after it).
- ``stack``: the Recommender over the world (ids only, no FeatureViews) and imported
  ModelVersions of those artifacts.
- ``Traffic``: users of the world (all, or the ones given) asking the gateways for
  recommendations, from a few threads, and clicking what they are shown with the probability
  their true taste gives (the generator's ground truth), so a better model really earns more
  clicks. It counts every answer by variant and version, and every failed one.
"""

from __future__ import annotations

import copy
import json
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from recsys_workloads.datasets.layout import DatasetPaths
from recsys_workloads.datasets.synthetic import SyntheticSpec, World, build_world, write_dataset
from recsys_workloads.train.pipeline import run as run_training
from testbed.served_traffic import train_config

SPEC = SyntheticSpec(users=600, items=300, interactions=30_000, seed=11, temperature=0.3)
#: Click probability: sigmoid(SLOPE * taste . item - OFFSET), so items the user truly likes get
#: clicked often and the rest rarely.
SLOPE, OFFSET = 0.6, 4.0


#: The canary analysis the rollout tests and the demo's scenarios judge with: checks every 5 s
#: on the traffic metrics and the click-through rate (at least 90 % of the stable's), clicks
#: counted within 3 s of their impression.
ANALYSIS = {
    "interval": "5s",
    "failureLimit": 2,
    "minRequests": 20,
    "minImpressions": 300,
    "attributionWindow": "3s",
    "metrics": [
        {"name": "request-success-rate", "thresholdRange": {"min": 99}},
        {"name": "fallback-rate", "thresholdRange": {"max": 5}},
        {"name": "click-through-rate", "thresholdRange": {"min": 90}},
    ],
}


@dataclass(frozen=True)
class Models:
    root: Path
    paths: DatasetPaths
    world: World
    #: artifact URI of each model kind, by the ModelVersion name it is trained as
    artifacts: dict[str, str]


def train_models(root: Path, versions: dict[str, str]) -> Models:
    """``versions`` maps a ModelVersion name to ``good`` or ``poor``."""
    paths = write_dataset(str(root / "data"), spec=SPEC)
    other = write_dataset(str(root / "other"), spec=replace(SPEC, seed=97))
    artifacts = {}
    for version, kind in versions.items():
        source = paths if kind == "good" else other
        artifact = f"file://{root}/artifacts/{version}"
        cfg = train_config(source, artifact)
        cfg["version"] = version
        cfg["features"] = {"user": [], "item": []}
        cfg["training"]["epochs"] = 4
        run_training(cfg)
        artifacts[version] = artifact
    return Models(root, paths, build_world(SPEC), artifacts)


def recommender(
    name: str, models: Models, redis_url: str, rollout: dict[str, Any], replicas: int = 2
) -> dict[str, Any]:
    return {
        "apiVersion": "recsys.dev/v1alpha1",
        "kind": "Recommender",
        "metadata": {"name": name},
        "spec": {
            "interactions": {"path": f"file://{models.paths.interactions}"},
            "retrieval": {"embeddingDim": 16, "numCandidates": 50},
            "ranking": {"topK": 10},
            "filtering": {"excludeSeen": False},
            "training": {"suspend": True},
            "serving": {
                "triton": {"replicas": 1},
                "gateway": {"replicas": replicas, "scoringTimeout": "500ms"},
                "rollout": rollout,
            },
            "stores": {
                "redis": {"url": redis_url},
                "artifacts": {"storageUri": f"file://{models.root}/store"},
            },
        },
    }


def imported(recommender_name: str, version: str, models: Models) -> dict[str, Any]:
    return {
        "apiVersion": "recsys.dev/v1alpha1",
        "kind": "ModelVersion",
        "metadata": {"name": version},
        "spec": {
            "recommenderRef": {"name": recommender_name},
            "reason": "Manual",
            "storageUri": models.artifacts[version],
        },
    }


@dataclass
class Tally:
    responses: Counter[str] = field(default_factory=Counter)
    clicks: Counter[str] = field(default_factory=Counter)
    impressions: Counter[str] = field(default_factory=Counter)
    fallbacks: Counter[str] = field(default_factory=Counter)
    #: failed requests: (seconds since start, status or error, variant asked for)
    failures: list[tuple[float, str]] = field(default_factory=list)

    def ctr(self, version: str) -> float:
        return self.clicks[version] / max(1, self.impressions[version])


class Traffic:
    """Requests and clicks against the gateways until ``stop``; bounded by ``max_seconds``.
    ``users``: who asks (drawn uniformly); every user of the world when unset."""

    def __init__(
        self,
        urls: list[str],
        world: World,
        threads: int = 3,
        max_seconds: float = 600,
        users: Sequence[int] | None = None,
    ) -> None:
        self.urls, self.world = urls, world
        self.users = list(users) if users else None
        self.tally = Tally()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.started = time.monotonic()
        self.max_seconds = max_seconds
        self.threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(threads)
        ]

    def __enter__(self) -> Traffic:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def wait_for(self, enough: Callable[[Tally], bool], what: str, timeout: float) -> Tally:
        """Block until ``enough`` holds of the counts so far; a copy of them then."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                tally = copy.deepcopy(self.tally)
            if enough(tally):
                return tally
            if time.monotonic() > deadline:
                raise TimeoutError(f"traffic: not {what} within {timeout:.0f} s")
            time.sleep(0.2)

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(30)

    def _click_probability(self, user: int, item: int) -> float:
        affinity = float(self.world.user_taste[user] @ self.world.item_vector[item])
        return 1.0 / (1.0 + np.exp(-(SLOPE * affinity - OFFSET)))

    def _run(self, n: int) -> None:
        rng = random.Random(n)
        users = self.world.spec.users
        while not self.stopping.is_set() and time.monotonic() - self.started < self.max_seconds:
            url = self.urls[rng.randrange(len(self.urls))]
            user = rng.choice(self.users) if self.users else rng.randrange(users)
            try:
                with urllib.request.urlopen(
                    f"{url}/v1/recommendations?user_id={user}&k=10", timeout=5
                ) as resp:
                    body = json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                self._failed(str(exc.code))
                continue
            except (urllib.error.URLError, OSError) as exc:
                self._failed(type(exc).__name__)
                continue
            version = str(body["modelVersion"])
            items = [int(i["itemId"]) for i in body["items"]]
            clicked = [i for i in items if rng.random() < self._click_probability(user, i)]
            with self.lock:
                self.tally.responses[version] += 1
                self.tally.impressions[version] += len(items)
                self.tally.clicks[version] += len(clicked)
                if body.get("fallback"):
                    self.tally.fallbacks[version] += 1
            if clicked:
                events = [
                    {"requestId": body["requestId"], "itemId": i, "type": "click", "userId": user}
                    for i in clicked
                ]
                self._post(url, events)

    def _post(self, url: str, events: list[dict[str, Any]]) -> None:
        request = urllib.request.Request(
            f"{url}/v1/events",
            data=json.dumps(events).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=5):
                pass
        except (urllib.error.URLError, OSError) as exc:
            self._failed(f"events: {exc}")

    def _failed(self, what: str) -> None:
        with self.lock:
            self.tally.failures.append((time.monotonic() - self.started, what))
