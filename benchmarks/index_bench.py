"""ANN index: build time, query latency and recall, our index build beside raw FAISS.

For each catalogue size (default 100k and 1M items, 64-d), on the same vectors and queries:

- ``ours``: ``recsys_workloads.ann_index.build_index`` as the index build Job runs it (HNSW
  inside an ``IndexIDMap2`` so searches return item ids), plus the Job's extra work timed
  separately: exact ground truth, the recall-vs-efSearch curve and serialisation.
- ``raw``: a bare ``faiss.IndexHNSWFlat`` with the same M / efConstruction / efSearch, the way
  one would use FAISS directly.

Query latency is measured one query at a time (p50/p99 over the held-out queries, what the
gateway does per request) and as one batch (queries per second). Recall@10 is against exact
inner-product search, over the efSearch curve.

The vectors are unit vectors around cluster centres (the shape trained item embeddings take;
uniform random vectors are the pessimistic case and can be asked for with ``--data sphere``).

    .venv/bin/python benchmarks/index_bench.py                 # 100k and 1M
    .venv/bin/python benchmarks/index_bench.py --sizes 100000  # quicker

Raw results go to benchmarks/results/index_bench-<time>.json; a markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from recsys_workloads import ann_index

RESULTS = Path(__file__).parent / "results"
EFS = [16, 32, 64, 128, 256, 512]


def make_vectors(n: int, dim: int, seed: int, kind: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "sphere":
        x = rng.standard_normal((n, dim), dtype=np.float32)
    else:
        centres = np.random.default_rng(12345).standard_normal((1000, dim), dtype=np.float32)
        x = centres[rng.integers(0, 1000, n)] + 0.5 * rng.standard_normal(
            (n, dim), dtype=np.float32
        )
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x, dtype=np.float32)


def paired_latency(
    indexes: dict[str, Any], queries: np.ndarray, k: int
) -> dict[str, dict[str, float]]:
    """Per-query latency on one thread (a request's search), the indexes taking turns query by
    query so that load from elsewhere on the machine hits both alike; batch throughput on all
    threads, best of four rounds."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    per_query: dict[str, list[float]] = {name: [] for name in indexes}
    try:
        for q in queries:
            for name, index in indexes.items():
                started = time.perf_counter()
                index.search(q[None, :], k)
                per_query[name].append(time.perf_counter() - started)
    finally:
        faiss.omp_set_num_threads(threads)
    batch: dict[str, float] = {name: float("inf") for name in indexes}
    names = list(indexes)
    for round_no in range(4):  # alternate the order, so neither always goes first
        for name in names if round_no % 2 == 0 else names[::-1]:
            started = time.perf_counter()
            indexes[name].search(queries, k)
            batch[name] = min(batch[name], time.perf_counter() - started)
    out = {}
    for name in indexes:
        us = np.array(per_query[name]) * 1e6
        out[name] = {
            "p50_us": round(float(np.percentile(us, 50)), 1),
            "p99_us": round(float(np.percentile(us, 99)), 1),
            "batch_qps": round(len(queries) / batch[name], 0),
        }
    return out


def bench_size(n: int, dim: int, args: argparse.Namespace) -> dict[str, Any]:
    vectors = make_vectors(n, dim, 0, args.data)
    queries = make_vectors(args.queries, dim, 1, args.data)
    ids = np.arange(n, dtype=np.int64) * 3 + 1  # item ids, not row numbers
    params = ann_index.IndexParams(
        kind="hnsw", hnsw_m=args.m, ef_construction=args.ef_construction, ef_search=args.ef_search
    )
    k = 10
    out: dict[str, Any] = {"items": n, "dim": dim, "queries": len(queries), "k": k}

    started = time.perf_counter()
    truth = ann_index.exact_top_k(vectors, ids, queries, k)
    out["exact_ground_truth_s"] = round(time.perf_counter() - started, 2)
    exact = faiss.IndexFlatIP(dim)
    exact.add(vectors)

    # raw FAISS, the way one would use it directly
    started = time.perf_counter()
    raw = faiss.IndexHNSWFlat(dim, args.m, faiss.METRIC_INNER_PRODUCT)
    raw.hnsw.efConstruction = args.ef_construction
    raw.add(vectors)
    raw_build = time.perf_counter() - started
    raw.hnsw.efSearch = args.ef_search

    # ours, as the index build Job builds it, plus the Job's extra work timed separately
    started = time.perf_counter()
    ours = ann_index.build_index(vectors, ids, params)
    build = time.perf_counter() - started
    started = time.perf_counter()
    ann_index.recall_curve(ours, queries, truth, k, EFS)  # the Job's recall check
    curve_s = time.perf_counter() - started
    started = time.perf_counter()
    blob = ann_index.serialize(ours)
    serialize_s = time.perf_counter() - started
    del blob

    def set_both(ef: int) -> None:
        raw.hnsw.efSearch = ef
        ann_index.set_ef_search(ours, ef)

    set_both(args.ef_search)
    timing = paired_latency({"raw": raw, "ours": ours, "exact": exact}, queries, k)
    out["exact_search"] = timing["exact"]
    _, raw_found = raw.search(queries, k)
    _, ours_found = ours.search(queries, k)
    out["raw"] = {
        "build_s": round(raw_build, 2),
        "recall": round(ann_index.recall_at_k(ids[raw_found], truth), 4),
        **timing["raw"],
    }
    out["ours"] = {
        "build_s": round(build, 2),
        "job_extra_s": {
            "ground_truth": out["exact_ground_truth_s"],
            "curve": round(curve_s, 2),
            "serialize": round(serialize_s, 2),
        },
        "recall": round(ann_index.recall_at_k(ours_found, truth), 4),
        **timing["ours"],
    }
    out["raw"]["curve"], out["ours"]["curve"] = [], []
    for ef in EFS:
        set_both(ef)
        t = paired_latency({"raw": raw, "ours": ours}, queries[:200], k)
        _, rf = raw.search(queries, k)
        _, of = ours.search(queries, k)
        out["raw"]["curve"].append(
            {"efSearch": ef, "recall": round(ann_index.recall_at_k(ids[rf], truth), 4), **t["raw"]}
        )
        out["ours"]["curve"].append(
            {"efSearch": ef, "recall": round(ann_index.recall_at_k(of, truth), 4), **t["ours"]}
        )
    out["ratio_ours_over_raw"] = {
        "build": round(out["ours"]["build_s"] / out["raw"]["build_s"], 3),
        "p50": round(out["ours"]["p50_us"] / out["raw"]["p50_us"], 3),
        "p99": round(out["ours"]["p99_us"] / out["raw"]["p99_us"], 3),
        "qps": round(out["ours"]["batch_qps"] / out["raw"]["batch_qps"], 3),
    }
    return out


def table(results: list[dict[str, Any]], ef_search: int) -> str:
    lines = [
        f"| items | impl | build s | recall@10 (ef={ef_search}) | p50 µs | p99 µs | batch QPS |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for impl in ("raw", "ours"):
            x = r[impl]
            lines.append(
                f"| {r['items']:,} | {impl} | {x['build_s']} | {x['recall']} | {x['p50_us']} | "
                f"{x['p99_us']} | {x['batch_qps']:.0f} |"
            )
        e = r["exact_search"]
        lines.append(
            f"| {r['items']:,} | exact (flat) | 0 | 1.0 | {e['p50_us']} | {e['p99_us']} | "
            f"{e['batch_qps']:.0f} |"
        )
    lines += [
        "",
        "| items | efSearch | recall@10 raw | recall@10 ours | p50 µs raw | p50 µs ours |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        for a, b in zip(r["raw"]["curve"], r["ours"]["curve"], strict=True):
            lines.append(
                f"| {r['items']:,} | {a['efSearch']} | {a['recall']} | {b['recall']} | "
                f"{a['p50_us']} | {b['p50_us']} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--m", type=int, default=ann_index.IndexParams.hnsw_m)
    parser.add_argument(
        "--ef-construction", type=int, default=ann_index.IndexParams.ef_construction
    )
    parser.add_argument("--ef-search", type=int, default=ann_index.IndexParams.ef_search)
    parser.add_argument("--data", choices=["clustered", "sphere"], default="clustered")
    args = parser.parse_args()
    results = []
    for n in args.sizes:
        print(f"{n:,} items ...", flush=True)
        results.append(bench_size(n, args.dim, args))
    env = {
        "cpus": os.cpu_count(),
        "faiss_threads": faiss.omp_get_max_threads(),
        "faiss": faiss.__version__,
        "machine": platform.machine(),
        "data": args.data,
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"index_bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"env": env, "args": vars(args), "results": results}, indent=2))
    print(table(results, args.ef_search))
    print(f"\nraw results: {path}")


if __name__ == "__main__":
    main()
