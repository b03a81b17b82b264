"""Building, checking and (de)serialising the FAISS index of item embeddings. No I/O here.

The index maps a user vector to the ids of the nearest item vectors by inner product (the
two-tower's vectors are L2-normalised, so this is cosine similarity). Below
``flat_threshold`` items an exact ``IndexFlatIP`` is both fast enough and exact; above it, an
approximate index: HNSW (``IndexHNSWFlat``) or IVF-Flat (``IndexIVFFlat``: k-means into
``nlist`` lists, ``nprobe`` of them searched per query). Its quality is checked here against
exact search rather than assumed: recall@K over held-out queries, and the recall curve over
the search breadth (efSearch for HNSW, nprobe for IVF) that tells serving what a faster or
more accurate setting would cost. Item ids ride inside the index (``IndexIDMap2``), so a
search returns catalogue ids, not row numbers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import faiss
import numpy as np
import numpy.typing as npt

from recsys_contract.index import ApproximateKind

FloatMatrix = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
IndexKind = Literal["hnsw", "ivfFlat", "flat"]


@dataclass(frozen=True)
class IndexParams:
    kind: Literal["auto", "hnsw", "ivfFlat", "flat"] = "auto"
    flat_threshold: int = 20_000
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    #: the index ``auto`` builds for catalogues of at least ``flat_threshold`` items
    approximate: ApproximateKind = "hnsw"
    nlist: int = 1024
    nprobe: int = 16

    def resolved_kind(self, n_items: int) -> IndexKind:
        if self.kind != "auto":
            return self.kind
        return "flat" if n_items < self.flat_threshold else self.approximate

    def effective_nlist(self, n_items: int) -> int:
        """k-means needs at least one item per list: ``nlist``, capped by the item count."""
        return max(1, min(self.nlist, n_items))

    def search_breadth(self, kind: IndexKind, n_items: int) -> int | None:
        """The search-time setting of ``kind``: efSearch, or nprobe (at most the lists there
        are); None for an exact index."""
        if kind == "ivfFlat":
            return min(self.nprobe, self.effective_nlist(n_items))
        return self.ef_search if kind == "hnsw" else None


def build_index(vectors: FloatMatrix, ids: IntArray, params: IndexParams) -> Any:
    """An id-mapped inner-product index over ``vectors`` (float32, one row per id)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    inner: Any
    kind = params.resolved_kind(vectors.shape[0])
    if kind == "flat":
        inner = faiss.IndexFlatIP(dim)
    elif kind == "ivfFlat":
        nlist = params.effective_nlist(vectors.shape[0])
        inner = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        inner.train(vectors)  # k-means with FAISS's fixed seed: the same items, the same lists
        inner.nprobe = params.search_breadth(kind, vectors.shape[0])
    else:
        inner = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = params.ef_construction
        inner.hnsw.efSearch = params.ef_search
    index = faiss.IndexIDMap2(inner)
    index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))
    return index


def _inner(index: Any) -> Any:
    return faiss.downcast_index(index.index) if hasattr(index, "id_map") else index


def enable_reconstruct(index: Any) -> None:
    """Let ``reconstruct(id)`` read a vector back: an IVF index needs its direct map (flat
    and HNSW indexes have one already)."""
    inner = _inner(index)
    if isinstance(inner, faiss.IndexIVF):
        inner.make_direct_map()


def set_ef_search(index: Any, ef_search: int) -> None:
    """Set efSearch on an HNSW index (wrapped or not); a no-op for exact indexes."""
    inner = _inner(index)
    if hasattr(inner, "hnsw"):
        inner.hnsw.efSearch = int(ef_search)


def set_search_breadth(index: Any, value: int) -> None:
    """efSearch of an HNSW index, nprobe of an IVF one (at most its nlist); exact: no-op."""
    inner = _inner(index)
    if hasattr(inner, "hnsw"):
        inner.hnsw.efSearch = int(value)
    elif isinstance(inner, faiss.IndexIVF):
        inner.nprobe = max(1, min(int(value), int(inner.nlist)))


def breadth_name(kind: IndexKind) -> str:
    """What the recall curve varies for an index of ``kind``."""
    return "nprobe" if kind == "ivfFlat" else "efSearch"


def index_kind(index: Any) -> IndexKind:
    inner = _inner(index)
    if hasattr(inner, "hnsw"):
        return "hnsw"
    return "ivfFlat" if isinstance(inner, faiss.IndexIVF) else "flat"


def search(index: Any, queries: FloatMatrix, k: int) -> tuple[FloatMatrix, IntArray]:
    scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return scores, ids


def exact_top_k(vectors: FloatMatrix, ids: IntArray, queries: FloatMatrix, k: int) -> IntArray:
    """Ground truth: brute-force inner-product top-k ids."""
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(np.ascontiguousarray(vectors, dtype=np.float32))
    _, rows = flat.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return np.where(rows >= 0, ids[np.maximum(rows, 0)], -1)


def recall_at_k(found: IntArray, truth: IntArray) -> float:
    """Mean over queries of |found ∩ truth| / |truth| (ids; -1 marks an empty slot)."""
    if truth.shape[0] == 0:
        return float("nan")
    hits = 0
    total = 0
    for f, t in zip(found, truth, strict=True):
        t_valid = t[t >= 0]
        hits += np.intersect1d(f[f >= 0], t_valid).size
        total += t_valid.size
    return hits / total if total else float("nan")


def recall_curve(
    index: Any, queries: FloatMatrix, truth: IntArray, k: int, values: Sequence[int]
) -> list[dict[str, float]]:
    """Recall@k and mean search time per query (batched) at each search breadth: efSearch
    for HNSW (and exact indexes, where it changes nothing), nprobe for IVF."""
    points = []
    name = breadth_name(index_kind(index))
    for value in values:
        set_search_breadth(index, value)
        started = time.perf_counter()
        _, found = search(index, queries, k)
        elapsed = time.perf_counter() - started
        points.append(
            {
                name: int(value),
                "recall": round(recall_at_k(found, truth), 5),
                "usPerQuery": round(elapsed / max(len(queries), 1) * 1e6, 2),
            }
        )
    return points


def held_out_queries(vectors: FloatMatrix, n: int, seed: int, noise: float = 0.1) -> FloatMatrix:
    """Queries near the data but not in it, for when no real held-out queries exist: random
    items' vectors plus Gaussian noise, renormalised to the items' norms."""
    rng = np.random.default_rng(seed)
    picks = rng.choice(vectors.shape[0], size=min(n, vectors.shape[0]), replace=False)
    base = vectors[picks].astype(np.float32)
    norms = np.linalg.norm(base, axis=1, keepdims=True)
    scale = noise * np.maximum(norms, 1e-12) / np.sqrt(vectors.shape[1])
    jittered = base + rng.standard_normal(base.shape).astype(np.float32) * scale
    jittered *= norms / np.maximum(np.linalg.norm(jittered, axis=1, keepdims=True), 1e-12)
    return np.asarray(jittered, dtype=np.float32)


def serialize(index: Any) -> bytes:
    return bytes(faiss.serialize_index(index).tobytes())


def deserialize(data: bytes) -> Any:
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
