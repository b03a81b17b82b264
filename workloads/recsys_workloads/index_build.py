"""The index build Job: item embeddings of a ModelVersion in, a checked ANN index artifact out.

``python -m recsys_workloads.index_build --config PATH`` with a ``recsys_contract.index``
config (its module shows an example; everything but the two URIs has a default).

What it does: reads ``embeddings/item_ids.npy`` and ``embeddings/item_embeddings.npy`` from
the published model artifact (digests checked), builds the index (``kind``: ``auto`` is exact
below ``flatThreshold`` items and ``approximate`` — ``hnsw`` or ``ivfFlat`` — above; or
``hnsw``, ``ivfFlat``, ``flat`` whatever the count), and measures recall@k against exact
search on held-out queries — the model's own held-out user vectors
(``embeddings/query_embeddings.npy``) when the artifact has them, jittered item vectors
otherwise. Below ``minRecall`` at the configured search breadth (``efSearch`` for HNSW,
``nprobe`` for IVF-Flat) it raises it along ``efSearchCurve`` / ``nprobeCurve`` when
``autoTuneEfSearch`` / ``autoTuneNprobe`` is on and records the value that passed; if none
passes, the build fails as bad input (retrying cannot help; the message says which parameter
to raise). IVF-Flat trains ``nlist`` k-means lists, at most one per item.

It publishes ``<indexUri>/index.faiss`` and ``manifest.json`` (kind "index": params, item
count, dimension, recall, the curve, the efSearch or nprobe serving must use, the model
artifact's digest, and the index's own digest). It never moves the alias serving follows: the
operator's rollout does that after reading this Job's summary (``IndexSummary``).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

import numpy as np

from recsys_contract.formats import join_uri
from recsys_contract.index import FeatureSchema, IndexBuildConfig, IndexSummary
from recsys_contract.termination import TERMINATION_MESSAGE_LIMIT
from recsys_workloads import ann_index
from recsys_workloads.artifact_store import MANIFEST_NAME, ArtifactReader, ArtifactWriter, Store
from recsys_workloads.runtime import BadInputError, parse_config, run_entrypoint
from recsys_workloads.train.features import ENCODERS_FILE, EntityEncoder, feature_schema

log = logging.getLogger("recsys_workloads.index_build")

INDEX_KIND = "index"
INDEX_FILE = "index.faiss"
MODEL_KIND = "model"


def index_params(cfg: IndexBuildConfig) -> ann_index.IndexParams:
    i = cfg.index
    return ann_index.IndexParams(
        i.kind,
        i.flat_threshold,
        i.hnsw_m,
        i.ef_construction,
        i.ef_search,
        i.approximate,
        i.nlist,
        i.nprobe,
    )


def parse_index_config(raw: Any) -> IndexBuildConfig:
    return parse_config(IndexBuildConfig, raw, "index build config")


def check_embeddings(ids: Any, vectors: Any, where: str) -> None:
    if not isinstance(vectors, np.ndarray) or vectors.ndim != 2 or vectors.shape[0] == 0:
        shape = getattr(vectors, "shape", None)
        raise BadInputError(
            f"{where}: item_embeddings.npy must be a non-empty 2-D array, got {shape}"
        )
    if not np.issubdtype(vectors.dtype, np.floating):
        raise BadInputError(f"{where}: item_embeddings.npy must be float, got {vectors.dtype}")
    if not isinstance(ids, np.ndarray) or ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise BadInputError(f"{where}: item_ids.npy must be a 1-D integer array")
    if ids.shape[0] != vectors.shape[0]:
        raise BadInputError(
            f"{where}: {ids.shape[0]} item ids but {vectors.shape[0]} embeddings; they must match"
        )
    if np.unique(ids).size != ids.size:
        raise BadInputError(f"{where}: item_ids.npy has duplicate ids")
    if not np.isfinite(vectors).all():
        raise BadInputError(f"{where}: item_embeddings.npy holds NaN or infinite values")


def choose_queries(
    reader: ArtifactReader, vectors: np.ndarray[Any, Any], n: int, seed: int
) -> tuple[np.ndarray[Any, Any], str]:
    if reader.has("embeddings/query_embeddings.npy"):
        queries = np.asarray(reader.read_npy("embeddings/query_embeddings.npy"), np.float32)
        if queries.ndim == 2 and queries.shape[1] == vectors.shape[1] and queries.shape[0] > 0:
            if queries.shape[0] > n:
                rng = np.random.default_rng(seed)
                queries = queries[np.sort(rng.choice(queries.shape[0], n, replace=False))]
            return queries, "held-out user vectors of the model artifact"
    return ann_index.held_out_queries(vectors, n, seed), "jittered item vectors"


def summary_of(manifest: dict[str, Any], uri: str) -> IndexSummary:
    return IndexSummary(
        version=manifest.get("version"),
        index_uri=uri,
        digest=manifest["digest"],
        item_count=manifest["itemCount"],
        index_type=manifest["index"]["type"],
        ef_search=manifest["index"].get("efSearch"),
        nprobe=manifest["index"].get("nprobe"),
        recall=manifest["validation"]["recall"],
        k=manifest["validation"]["k"],
        model_digest=manifest["model"]["digest"],
        features=FeatureSchema.model_validate(features)
        if (features := manifest["model"].get("features")) is not None
        else None,
    )


def model_schema(reader: ArtifactReader) -> FeatureSchema | None:
    """The features the model was trained on, from its encoders: the rollout serves a version
    only where the gateway supplies them. None for an artifact without encoders (its index
    can be built; Triton's repository build refuses it)."""
    if not reader.has(ENCODERS_FILE):
        return None
    encoders = reader.read_json(ENCODERS_FILE)
    return feature_schema(
        EntityEncoder.from_json(encoders["user"]), EntityEncoder.from_json(encoders["item"])
    )


def build(raw: dict[str, Any]) -> dict[str, Any]:
    cfg = parse_index_config(raw)
    store = Store(cfg.storage_options)
    if store.exists(join_uri(cfg.index_uri, MANIFEST_NAME), what="look up index"):
        existing = ArtifactReader(store, cfg.index_uri, INDEX_KIND)
        published = summary_of(existing.manifest, cfg.index_uri)
        return fitted(published.model_copy(update={"already_published": True})).to_wire()

    reader = ArtifactReader(store, cfg.model_artifact_uri, MODEL_KIND)
    ids = reader.read_npy("embeddings/item_ids.npy")
    vectors = reader.read_npy("embeddings/item_embeddings.npy")
    check_embeddings(ids, vectors, cfg.model_artifact_uri)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = ids.astype(np.int64)
    params = index_params(cfg)
    kind = params.resolved_kind(vectors.shape[0])

    started = time.perf_counter()
    index = ann_index.build_index(vectors, ids, params)
    build_seconds = time.perf_counter() - started

    v = cfg.validation
    k = min(v.k, vectors.shape[0])
    queries, query_source = choose_queries(reader, vectors, v.queries, cfg.seed)
    truth = ann_index.exact_top_k(vectors, ids, queries, k)
    nlist = params.effective_nlist(ids.size) if kind == "ivfFlat" else None
    breadth = params.search_breadth(kind, ids.size)
    name = ann_index.breadth_name(kind)
    if nlist is not None:  # nprobe beyond nlist searches nothing more
        values = sorted({min(n, nlist) for n in v.nprobe_curve})
        auto_tune = v.auto_tune_nprobe
        advice = "raise index.nprobe or lower index.nlist"
    else:
        values = sorted(set(v.ef_search_curve))
        auto_tune = v.auto_tune_ef_search and kind == "hnsw"
        advice = "raise index.efSearch, index.hnswM or index.efConstruction"
    curve = ann_index.recall_curve(index, queries, truth, k, values)
    ann_index.set_search_breadth(index, breadth or 1)
    _, found = ann_index.search(index, queries, k)
    recall = ann_index.recall_at_k(found, truth)
    tuned = False
    if recall < v.min_recall and auto_tune and breadth is not None:
        for point in curve:
            if point[name] > breadth and point["recall"] >= v.min_recall:
                breadth, recall, tuned = int(point[name]), float(point["recall"]), True
                break
    if recall < v.min_recall:
        raise BadInputError(
            f"validation.minRecall: recall@{k} of the {kind} index is {recall:.4f} < "
            f"{v.min_recall} at {name} {breadth} (curve: {curve}); {advice}"
        )
    if breadth is not None:
        ann_index.set_search_breadth(index, breadth)
    ef_search = breadth if kind == "hnsw" else None
    nprobe = breadth if kind == "ivfFlat" else None
    log.info(
        "%s index: %d items, recall@%d=%.4f, built in %.2fs",
        kind,
        ids.size,
        k,
        recall,
        build_seconds,
    )

    w = ArtifactWriter(store, cfg.index_uri, INDEX_KIND)
    w.put(INDEX_FILE, ann_index.serialize(index))
    manifest = w.publish(
        {
            "version": cfg.version,
            "itemCount": int(ids.size),
            "dimension": int(vectors.shape[1]),
            "metric": "inner_product",
            "index": {
                "type": kind,
                "file": INDEX_FILE,
                "hnswM": params.hnsw_m if kind == "hnsw" else None,
                "efConstruction": params.ef_construction if kind == "hnsw" else None,
                "efSearch": ef_search,
                "efSearchTuned": tuned and kind == "hnsw",
                "nlist": nlist,
                "nlistRequested": params.nlist if kind == "ivfFlat" else None,
                "nprobe": nprobe,
                "nprobeTuned": tuned and kind == "ivfFlat",
                "flatThreshold": params.flat_threshold,
                "buildSeconds": round(build_seconds, 3),
            },
            "validation": {
                "k": k,
                "queries": int(queries.shape[0]),
                "querySource": query_source,
                "recall": round(recall, 5),
                "minRecall": v.min_recall,
                "curve": curve,
            },
            "model": {
                "uri": cfg.model_artifact_uri,
                "digest": reader.manifest["digest"],
                "features": schema.to_wire() if (schema := model_schema(reader)) else None,
            },
        }
    )
    return fitted(summary_of(manifest, cfg.index_uri)).to_wire()


def fitted(summary: IndexSummary) -> IndexSummary:
    """The summary without its feature schema when a wide schema would push it past what a
    termination message holds: the version then serves unchecked, rather than unreported."""
    text = json.dumps(summary.to_wire(), separators=(",", ":"), sort_keys=True)
    if len(text.encode()) <= TERMINATION_MESSAGE_LIMIT - 256 or summary.features is None:
        return summary
    log.warning("the feature schema does not fit the termination message; not reported")
    return summary.model_copy(update={"features": None})


def load_index(store: Store, uri: str) -> tuple[Any, dict[str, Any]]:
    """The published index, checked against its manifest, with efSearch (HNSW) or nprobe
    (IVF-Flat) set as validated."""
    reader = ArtifactReader(store, uri, INDEX_KIND)
    index = ann_index.deserialize(reader.read(INDEX_FILE))
    params = reader.manifest["index"]
    breadth = params.get("efSearch") or params.get("nprobe")
    if breadth:
        ann_index.set_search_breadth(index, int(breadth))
    return index, reader.manifest


def main(argv: list[str] | None = None) -> int:
    return run_entrypoint("index-build", build, argv)


if __name__ == "__main__":
    sys.exit(main())
