"""The ANN indexes a gateway serves from, loaded in the background and swapped in whole.

Retrieval runs here, in the gateway process, rather than in Triton: an HNSW search over 10^5
items takes a fraction of a millisecond on one core, less than one more HTTP round trip to
Triton, and the filtering stage needs the candidate ids in the gateway anyway. (The figures are
in benchmarks/serving_bench.py's report.)

A request reads the pool's dict of loaded indexes once; a new index is deserialised in a
worker thread and then published by replacing that dict, so a request in flight keeps the
index it started with and no request ever waits for a load. Indexes no longer needed are
dropped only after the replacement is live. Each loaded index carries the fallback items (the
model artifact's ``popular_items.json``, the most interacted items at training time) of the
ModelVersion it was built from, so fallback stays consistent with the version being served,
and that version's score fusion (``scoring.json``, see ``recsys_workloads.scoring``), so the
gateway scores candidates with the weights the version was evaluated with.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from recsys_workloads import ann_index
from recsys_workloads.artifact_store import ArtifactReader, Store
from recsys_workloads.index_build import load_index
from recsys_workloads.scoring import RANKER_ONLY, ScoreFusion, read_fusion

log = logging.getLogger("recsys_workloads.gateway.index")


@dataclass(frozen=True)
class Candidates:
    """Item ids with a score each, as arrays: a request's candidates never become Python
    objects one by one except the few it returns."""

    ids: npt.NDArray[np.int64]
    scores: npt.NDArray[np.float32]

    def __len__(self) -> int:
        return int(self.ids.size)

    def take(self, where: npt.NDArray[Any] | slice) -> Candidates:
        return Candidates(self.ids[where], self.scores[where])


@dataclass(frozen=True)
class LoadedIndex:
    uri: str
    version: str
    index: Any
    item_count: int
    #: the fallback: most interacted items at training time, scored by their count
    popular: Candidates
    #: how the version's ranker logits and retrieval scores make the candidates' scores
    fusion: ScoreFusion = RANKER_ONLY

    def vector(self, item_id: int) -> npt.NDArray[np.float32] | None:
        """The item's embedding as the index holds it; None for an item it does not have."""
        try:
            return np.asarray(self.index.reconstruct(int(item_id)), dtype=np.float32)
        except (RuntimeError, KeyError, IndexError):  # FAISS: "key not found"
            return None

    def search(self, vector: npt.NDArray[np.float32], k: int) -> Candidates:
        k = max(1, min(k, self.item_count))
        scores, ids = ann_index.search(self.index, vector.reshape(1, -1), k)
        found = ids[0] >= 0
        return Candidates(ids[0][found].astype(np.int64), scores[0][found].astype(np.float32))


def load_serving_index(store: Store, uri: str) -> LoadedIndex:
    """Read an index artifact (digests checked) and its model's fallback items."""
    index, manifest = load_index(store, uri)
    ann_index.enable_reconstruct(index)  # similar items look an item's vector up by id
    popular: list[Any] = []
    fusion = RANKER_ONLY  # a version exported before scoring.json: scored as it was evaluated
    model_uri = (manifest.get("model") or {}).get("uri")
    if model_uri:
        reader = ArtifactReader(store, model_uri, "model")
        if reader.has("popular_items.json"):
            popular = reader.read_json("popular_items.json")
        fusion = read_fusion(reader)
    fallback = Candidates(
        np.array([int(p["itemId"]) for p in popular], dtype=np.int64),
        np.array([float(p["count"]) for p in popular], dtype=np.float32),
    )
    return LoadedIndex(
        uri,
        str(manifest.get("version") or ""),
        index,
        int(manifest["itemCount"]),
        fallback,
        fusion,
    )


RETRY_AFTER = 10.0


def serving_index_pool(
    storage_options: Mapping[str, Any], on_event: Callable[[str, str], None]
) -> IndexPool:
    """An index pool that loads from the artifact store ``storage_options`` reach."""
    artifacts = Store(dict(storage_options))
    return IndexPool(lambda uri: load_serving_index(artifacts, uri), on_event)


class IndexPool:
    def __init__(
        self, loader: Callable[[str], LoadedIndex], on_event: Callable[[str, str], None]
    ) -> None:
        self.loader = loader
        self.on_event = on_event
        self.loaded: dict[str, LoadedIndex] = {}
        self.loading: dict[str, asyncio.Task[None]] = {}
        #: uri -> (monotonic time of the failure, error); retried after RETRY_AFTER seconds
        self.failed: dict[str, tuple[float, str]] = {}

    def get(self, uri: str | None) -> LoadedIndex | None:
        return self.loaded.get(uri) if uri else None

    def want(self, uris: Iterable[str]) -> None:
        """Start loading every wanted index not loaded yet; forget the unwanted ones once
        every wanted one is live."""
        wanted = set(uris)
        now = time.monotonic()
        for uri in wanted - self.loaded.keys() - self.loading.keys():
            if uri in self.failed and now - self.failed[uri][0] < RETRY_AFTER:
                continue
            self.loading[uri] = asyncio.create_task(self._load(uri))
        if wanted <= self.loaded.keys() and self.loaded.keys() - wanted:
            self.loaded = {u: ix for u, ix in self.loaded.items() if u in wanted}

    async def _load(self, uri: str) -> None:
        try:
            loaded = await asyncio.to_thread(self.loader, uri)
        except Exception as exc:  # a bad artifact must not take the gateway down
            log.error("could not load index %s: %s", uri, exc)
            self.failed[uri] = (time.monotonic(), str(exc))
            self.on_event("load_failed", uri)
            return
        finally:
            self.loading.pop(uri, None)
        self.failed.pop(uri, None)
        self.loaded = {**self.loaded, uri: loaded}
        log.info("index %s (%s, %d items) is live", uri, loaded.version, loaded.item_count)
        self.on_event("loaded", uri)

    async def close(self) -> None:
        for task in list(self.loading.values()):
            task.cancel()
        await asyncio.gather(*self.loading.values(), return_exceptions=True)


def single_threaded_search() -> None:
    """One OpenMP thread per search: a single query gains nothing from more, and the gateway
    shares its cores with the event loop."""
    faiss.omp_set_num_threads(1)
