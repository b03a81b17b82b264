"""Online serving: an open-loop load generator against the real stack, at fixed rates.

The stack: Redis (testbed ``redis-server``) with MovieLens-100k users and items materialized,
the tiny MovieLens model of the serving tests, its item embeddings padded to ``--items``
(default 100,000) with jittered copies of the real ones, an HNSW index over them built by the
real index build Job, Triton (python backend, torch, CPU) serving the repository built from
the padded artifact, every user's MovieLens ratings as their seen set (filtered out of the
candidates, and the models' history input), and the gateway as its own process
(``python -m recsys_workloads.gateway``), as in a pod.

Load is open-loop: request *i* of a rate *r* is sent at ``t0 + i/r`` whether or not earlier
ones have answered, and its latency runs from that scheduled time (no coordinated omission).
For each rate: p50/p99/p99.9 latency, throughput, error and fallback rates, the p50 of each
stage as the gateway measured it, and the overhead ratio (end-to-end p50 / sum of the stage
p50s: what HTTP, JSON, the event loop and queueing add). Two reference figures come first:

- where ANN runs: one FAISS search in-process (what the gateway does) against one Triton round
  trip (what it would cost to search inside Triton), on the same index;
- the gateway floor: the same load with Triton unreachable, i.e. fallback items only (Redis,
  HTTP and the gateway's own work, no models).

    .venv/bin/python benchmarks/serving_bench.py                       # 50/100/200/400 rps
    .venv/bin/python benchmarks/serving_bench.py --rates 50 100 --duration 10 --items 20000
    .venv/bin/python benchmarks/serving_bench.py --hybrid --zipf 1.1 --head 20 --rates 200 1000

``--soak RATE --minutes M`` holds one rate for M minutes (pick 70 % of the capacity a rate sweep
found) and reports, minute by minute, p99, errors and the gateway's and Triton's resident
memory (VmRSS), first minute against last: a leak or a slow build-up shows as growth.

    .venv/bin/python benchmarks/serving_bench.py --soak 140 --minutes 10

``--zipf S`` draws users from a Zipf mix (the user of popularity rank r with probability
proportional to r^-S, ranks a seeded permutation of the MovieLens users) instead of uniformly.
``--hybrid`` compares live computation with pre-computed head lists side by side on that mix:
each rate runs first with every request computed live, then again after the precompute
workload (``recsys_workloads.precompute``, the CronJob's code) has stored the lists of the
``--head`` percent most active users of the warm-up traffic; each row reports the head-cache
hit rate (``recsys_gateway_precomputed_total{outcome="served"}`` over all lookups), p99 and
CPU per request.

Raw samples' summaries go to benchmarks/results/serving_bench-<time>.json; a markdown table is
printed. The load generator (benchmarks/loadgen: Go, in its own process, latency from each
request's scheduled time) shares the machine with everything it measures: on a 2-core box its
own CPU is part of the figures, reported per request next to the other parts'.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import faiss
import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "integration")]

import loadgen  # noqa: E402
import serving_support as ss  # noqa: E402

from recsys_workloads.artifact_store import ArtifactReader, ArtifactWriter, Store  # noqa: E402
from recsys_workloads.datasets import movielens  # noqa: E402
from recsys_workloads.datasets.layout import DatasetPaths  # noqa: E402
from recsys_workloads.gateway.http1 import KeepAlivePool  # noqa: E402
from recsys_workloads.gateway.triton_client import user_tower_request  # noqa: E402
from recsys_workloads.index_build import build as build_index  # noqa: E402
from recsys_workloads.index_build import load_index  # noqa: E402
from recsys_workloads.serving.repository import build_repository  # noqa: E402
from recsys_workloads.train.pipeline import run as train  # noqa: E402
from testbed.processes import free_port  # noqa: E402
from testbed.redis_server import start_redis  # noqa: E402
from testbed.triton_server import start_triton  # noqa: E402

RESULTS = Path(__file__).parent / "results"
STAGES = ("retrieval", "filtering", "scoring", "ordering")
PAD_ID_BASE = 1_000_000


def pad_artifact(src: str, dst: str, version: str, n_items: int, seed: int) -> None:
    """Republish ``src`` with its item embeddings padded to ``n_items``: jittered copies of
    real items (so they compete for the same queries), ids from PAD_ID_BASE."""
    store = Store({})
    reader = ArtifactReader(store, src, "model")
    ids = reader.read_npy("embeddings/item_ids.npy").astype(np.int64)
    vecs = reader.read_npy("embeddings/item_embeddings.npy").astype(np.float32)
    extra = max(n_items - ids.size, 0)
    rng = np.random.default_rng(seed)
    base = vecs[rng.integers(0, ids.size, extra)]
    # noise of about the vectors' own length: distinct items near real ones, not duplicates
    # (near-duplicates are an HNSW worst case no catalogue has)
    noise = rng.standard_normal(base.shape).astype(np.float32) / np.sqrt(vecs.shape[1])
    jitter = base + noise
    jitter /= np.linalg.norm(jitter, axis=1, keepdims=True)
    writer = ArtifactWriter(store, dst, "model")
    for rel in reader.manifest["files"]:
        if rel not in ("embeddings/item_ids.npy", "embeddings/item_embeddings.npy"):
            writer.put(rel, reader.read(rel))
    writer.put_npy(
        "embeddings/item_ids.npy",
        np.concatenate([ids, PAD_ID_BASE + np.arange(extra, dtype=np.int64)]),
    )
    writer.put_npy("embeddings/item_embeddings.npy", np.concatenate([vecs, jitter]))
    meta = {k: v for k, v in reader.manifest.items() if k not in ("files", "digest", "kind")}
    writer.publish({**meta, "version": version, "itemCount": ids.size + extra})


@dataclass
class Stack:
    root: Path
    artifact: str
    index: str
    version: str
    paths: Any
    redis: Any = None
    triton: Any = None
    gateway: subprocess.Popen[bytes] | None = None
    gateway_url: str = ""
    timings: dict[str, float] = field(default_factory=dict)


def build_stack(root: Path, n_items: int) -> Stack:
    t = time.perf_counter()
    paths = movielens.write_dataset(str(root / "ml-100k"))
    base = f"file://{root}/models/ml-v1"
    train(ss.tiny_train_config(paths, base, "ml-v1"))
    version = f"ml-v1-{n_items // 1000}k"
    artifact = f"file://{root}/models/{version}"
    pad_artifact(base, artifact, version, n_items, seed=3)
    timings = {"trainSeconds": time.perf_counter() - t}
    t = time.perf_counter()
    index = f"file://{root}/indexes/{version}"
    summary = build_index(
        {
            "version": version,
            "modelArtifactUri": artifact,
            "indexUri": index,
            "index": {"kind": "hnsw", "efSearch": 128},
            "validation": {"queries": 300},
        }
    )
    timings["indexBuildSeconds"] = time.perf_counter() - t
    timings["indexRecall"] = summary["recall"]
    timings["indexEfSearch"] = summary["efSearch"]
    build_repository({"artifactUri": artifact, "repositoryUri": str(root / "triton")})
    return Stack(root, artifact, index, version, paths, timings=timings)


def start_gateway(stack: Stack, triton_http: str, cfg_overrides: dict[str, Any]) -> dict[str, Any]:
    version = ss.Version(stack.version, stack.artifact, stack.index)
    art = ss.Artifacts(stack.root, stack.paths, version, version, stack.root / "triton")
    cfg = ss.gateway_config(art, triton_http, stack.redis.url)
    cfg["routing"]["stable"]["modelVersion"] = stack.version
    cfg.update(
        {"candidates": 200, "topK": 20, "scoringTimeout": "100ms", "pollInterval": "1s"},
        **cfg_overrides,
    )
    path = stack.root / "gateway.json"
    path.write_text(json.dumps(cfg))
    port = free_port()
    log = (stack.root / f"gateway-{port}.log").open("wb")
    stack.gateway = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "recsys_workloads.gateway",
            "--config",
            str(path),
            f"--port={port}",
            "--host=127.0.0.1",
            "--log-level=WARNING",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    stack.gateway_url = f"http://127.0.0.1:{port}"
    return cfg


def stop_gateway(stack: Stack) -> None:
    if stack.gateway is not None:
        stack.gateway.terminate()
        stack.gateway.wait(10)
        stack.gateway = None


async def wait_ready(url: str, within_s: float = 120) -> None:
    deadline = time.monotonic() + within_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(f"{url}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"gateway at {url} not ready within {within_s}s")


#: MovieLens-100k's users are 1..943
N_USERS = 943
#: the Zipf exponent of the user mix; 0 draws users uniformly (set by ``--zipf``)
ZIPF = {"s": 0.0}


def draw_users(rng: np.random.Generator, n: int, zipf_s: float) -> list[int]:
    """``n`` user ids: uniform, or Zipf over a fixed permutation (the same head every run)."""
    if zipf_s <= 0:
        return [int(u) for u in rng.integers(1, N_USERS + 1, n)]
    weights = np.arange(1, N_USERS + 1, dtype=np.float64) ** -zipf_s
    by_rank = np.random.default_rng(7).permutation(N_USERS) + 1
    ranks = rng.choice(N_USERS, size=n, p=weights / weights.sum())
    return [int(u) for u in by_rank[ranks]]


async def run_rate(url: str, rate: float, duration: float, seed: int) -> loadgen.LoadRun:
    """Open-loop load from the Go generator in its own process (a thread waits for it, so the
    event loop stays free); the users are drawn here, so a seed repeats a run."""
    rng = np.random.default_rng(seed)
    users = draw_users(rng, loadgen.requests_in(rate, duration), ZIPF["s"])
    template = f"{url}/v1/recommendations?user_id={{user}}"
    return await asyncio.to_thread(
        loadgen.run, template, users, rate, duration, timeout_s=2.0, max_conns=1024
    )


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(entry.name))
    return out


def cpu_snapshot(stack: Stack) -> dict[str, float]:
    """CPU seconds so far of each server: the gateway, Triton (server and python stubs), Redis.
    The load generator's comes with its run (its process ends with it)."""
    assert stack.gateway is not None
    triton = stack.triton.process.pid
    return {
        "gateway": _proc_cpu(stack.gateway.pid),
        "triton": sum(_proc_cpu(p) for p in [triton, *_children(triton)]),
        "redis": _proc_cpu(stack.redis.procs.processes[0].pid),
    }


def cpu_ms_per_request(
    before: dict[str, float], after: dict[str, float], load: loadgen.LoadRun
) -> dict[str, float]:
    spent = {k: after[k] - before[k] for k in after} | {"loadGenerator": load.cpu_seconds}
    return {k: round(v * 1000 / len(load.samples), 2) for k, v in spent.items()}


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summarize(rate: float, duration: float, samples: list[loadgen.Sample]) -> dict[str, Any]:
    ok = [s for s in samples if s.ok]
    lat = [s.latency_ms for s in ok]
    stage_p50 = {st: pct([s.stages[st] for s in ok], 50) for st in STAGES}
    stage_sum = sum(stage_p50.values())
    e2e_p50 = pct(lat, 50)
    return {
        "rate": rate,
        "sent": len(samples),
        "ok": len(ok),
        "throughput": round(len(ok) / duration, 1),
        "errorRate": round(1 - len(ok) / max(len(samples), 1), 4),
        "fallbackRate": round(sum(s.fallback for s in ok) / max(len(ok), 1), 4),
        "p50": round(e2e_p50, 2),
        "p99": round(pct(lat, 99), 2),
        "p999": round(pct(lat, 99.9), 2),
        "max": round(max(lat, default=float("nan")), 2),
        "stageP50": {k: round(v, 3) for k, v in stage_p50.items()},
        "gatewayTotalP50": round(pct([s.stages["total"] for s in ok], 50), 3),
        "stageSumP50": round(stage_sum, 3),
        "overheadRatio": round(e2e_p50 / stage_sum, 2) if stage_sum else None,
        "sendLagP99": round(pct([s.send_lag_ms for s in samples], 99), 2),
    }


async def placement_figures(stack: Stack, triton_http: str, n: int = 300) -> dict[str, Any]:
    """One in-process FAISS search vs one Triton round trip, measured here."""
    index, manifest = load_index(Store({}), stack.index)
    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((n, manifest["dimension"])).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    search_us = []
    for q in queries:
        t = time.perf_counter()
        index.search(q[None, :], 300)
        search_us.append((time.perf_counter() - t) * 1e6)
    body = user_tower_request(1, {"age": 30, "gender": "M", "occupation": "engineer"})
    clients = await triton_client_figures(triton_http, f"{stack.version}.user-tower", body, n)
    return {
        "faissSearchUsP50": round(pct(search_us, 50), 1),
        "faissSearchUsP99": round(pct(search_us, 99), 1),
        "tritonUserTowerRoundTripMsP50": clients["keepAlivePool"]["roundTripMsP50"],
        "tritonUserTowerRoundTripMsP99": clients["keepAlivePool"]["roundTripMsP99"],
        "tritonClients": clients,
        "items": manifest["itemCount"],
        "k": 300,
    }


async def triton_client_figures(
    triton_http: str, model: str, body: dict[str, Any], n: int
) -> dict[str, dict[str, float]]:
    """The gateway's Triton client (``http1.KeepAlivePool``) against aiohttp's, the reference,
    on the same calls in turn: round-trip time and this process's CPU per call."""
    path = f"/v2/models/{model}/infer"
    data = orjson.dumps(body)
    pool = KeepAlivePool()

    async def via_pool() -> None:
        status, _ = await pool.post(triton_http, path, data)
        assert status == 200

    async def via_aiohttp() -> None:
        async with session.post(f"http://{triton_http}{path}", data=data) as resp:
            await resp.read()
            assert resp.status == 200

    out: dict[str, dict[str, float]] = {}
    async with aiohttp.ClientSession(headers={"Content-Type": "application/json"}) as session:
        for name, call in (("aiohttp", via_aiohttp), ("keepAlivePool", via_pool)):
            for _ in range(20):
                await call()
            rtt_ms = []
            cpu = time.process_time()
            for _ in range(n):
                t = time.perf_counter()
                await call()
                rtt_ms.append((time.perf_counter() - t) * 1000)
            out[name] = {
                "roundTripMsP50": round(pct(rtt_ms, 50), 3),
                "roundTripMsP99": round(pct(rtt_ms, 99), 3),
                "clientCpuMsPerCall": round((time.process_time() - cpu) * 1000 / n, 3),
            }
    await pool.close()
    return out


def table(rows: list[dict[str, Any]]) -> str:
    head = (
        "| rate (rps) | throughput | errors | fallback | p50 ms | p99 ms | p99.9 ms | "
        "retrieval | filtering | scoring | ordering | stage sum | overhead |"
    )
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        s = r["stageP50"]
        lines.append(
            f"| {r['label']} | {r['throughput']} | {r['errorRate']:.2%} | "
            f"{r['fallbackRate']:.1%} | {r['p50']} | {r['p99']} | {r['p999']} | "
            f"{s['retrieval']} | {s['filtering']} | {s['scoring']} | {s['ordering']} | "
            f"{r['stageSumP50']} | {r['overheadRatio']}x |"
        )
    return "\n".join(lines)


async def measure(args: argparse.Namespace, stack: Stack, triton_http: str) -> dict[str, Any]:
    out: dict[str, Any] = {"placement": await placement_figures(stack, triton_http)}
    rows = []
    # the floor: Triton unreachable, fallback items only
    start_gateway(stack, f"127.0.0.1:{free_port()}", {})
    try:
        await wait_ready(stack.gateway_url)
        await run_rate(stack.gateway_url, args.rates[0], 2, seed=99)  # warm-up
        floor_rate = 200.0 if 200.0 in args.rates else args.rates[-1]
        before = cpu_snapshot(stack)
        load = await run_rate(stack.gateway_url, floor_rate, args.duration, seed=1)
        after = cpu_snapshot(stack)
        floor = summarize(floor_rate, args.duration, load.samples)
        floor["cpuMsPerRequest"] = cpu_ms_per_request(before, after, load)
        rows.append({**floor, "label": f"{floor_rate:g} (floor: no Triton)"})
    finally:
        stop_gateway(stack)
    start_gateway(stack, triton_http, {})
    try:
        await wait_ready(stack.gateway_url)
        await run_rate(stack.gateway_url, args.rates[0], 3, seed=98)  # warm-up
        for n, rate in enumerate(args.rates):
            before = cpu_snapshot(stack)
            load = await run_rate(stack.gateway_url, rate, args.duration, seed=n)
            after = cpu_snapshot(stack)
            rows.append(
                {
                    **summarize(rate, args.duration, load.samples),
                    "label": f"{rate:g}",
                    "cpuMsPerRequest": cpu_ms_per_request(before, after, load),
                }
            )
            print(
                f"{rate:g} rps: p50 {rows[-1]['p50']} ms, p99 {rows[-1]['p99']} ms, "
                f"errors {rows[-1]['errorRate']:.2%}",
                flush=True,
            )
    finally:
        stop_gateway(stack)
    out["rows"] = rows
    loaded = [r for r in rows if not r["label"].endswith("Triton)")]
    past = [r["rate"] for r in loaded if r["p99"] > 50]
    out["p99Passes50msAt"] = past[0] if past else None
    return out


def rss_mib(pid: int) -> float:
    """Resident memory of a process (VmRSS), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def serving_rss(stack: Stack) -> dict[str, float]:
    assert stack.gateway is not None
    triton = stack.triton.process.pid
    return {
        "gateway": rss_mib(stack.gateway.pid),
        "triton": round(sum(rss_mib(p) for p in [triton, *_children(triton)]), 1),
    }


async def measure_soak(args: argparse.Namespace, stack: Stack, triton_http: str) -> dict[str, Any]:
    """One rate held for ``--minutes``, a minute per load run (back to back, so the gap
    between runs is the generator's start, well under a second)."""
    start_gateway(stack, triton_http, {})
    minutes = []
    try:
        await wait_ready(stack.gateway_url)
        await run_rate(stack.gateway_url, args.soak, 5, seed=97)  # warm-up
        memory_start = serving_rss(stack)
        for minute in range(args.minutes):
            load = await run_rate(stack.gateway_url, args.soak, 60.0, seed=minute)
            row = summarize(args.soak, 60.0, load.samples)
            minutes.append(
                {
                    "minute": minute + 1,
                    "p99": row["p99"],
                    "errors": row["sent"] - row["ok"],
                    "sent": row["sent"],
                    "fallbackRate": row["fallbackRate"],
                    "rssMiB": serving_rss(stack),
                }
            )
            print(f"minute {minute + 1}: {minutes[-1]}", flush=True)
    finally:
        stop_gateway(stack)
    return {"soakRate": args.soak, "memoryStart": memory_start, "minutes": minutes}


def print_soak(result: dict[str, Any]) -> None:
    print(f"\nsoak at {result['soakRate']:g} rps for {len(result['minutes'])} minutes")
    print("| minute | sent | errors | fallback | p99 (ms) | gateway RSS (MiB) | Triton RSS (MiB) |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    start = result["memoryStart"]
    print(f"| start | | | | | {start['gateway']} | {start['triton']} |")
    for m in result["minutes"]:
        print(
            f"| {m['minute']} | {m['sent']} | {m['errors']} | {m['fallbackRate']:.2%} | "
            f"{m['p99']} | {m['rssMiB']['gateway']} | {m['rssMiB']['triton']} |"
        )


async def precomputed_counts(url: str) -> dict[str, float]:
    """The gateway's ``recsys_gateway_precomputed_total`` by outcome."""
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("recsys_gateway_precomputed_total{"):
            outcome = line.split('outcome="', 1)[1].split('"', 1)[0]
            out[outcome] = out.get(outcome, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def hit_rate(before: dict[str, float], after: dict[str, float]) -> float:
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    looked = sum(delta.values())
    return round(delta.get("served", 0.0) / looked, 4) if looked else 0.0


async def run_precompute(cfg: dict[str, Any], head_percent: int) -> dict[str, Any]:
    """The precompute workload's run, in this process, as its CronJob would start it."""
    import redis.asyncio

    from recsys_contract.precompute import PrecomputeConfig
    from recsys_workloads import precompute

    config = PrecomputeConfig.model_validate(
        {
            "gateway": cfg,
            "audience": {"mostActivePercent": head_percent, "windowSeconds": 3600},
            "topN": 50,
        }
    )
    client = redis.asyncio.Redis.from_url(cfg["redisUrl"])
    t = time.perf_counter()
    try:
        summary = (await precompute.run(config, client)).to_wire()
    finally:
        await client.aclose()
    return {**summary, "seconds": round(time.perf_counter() - t, 1)}


async def measure_hybrid(
    args: argparse.Namespace, stack: Stack, triton_http: str
) -> dict[str, Any]:
    """Live against pre-computed head lists, on the same Zipf mix and rates."""
    rows = []
    cfg = start_gateway(stack, triton_http, {"precomputed": {"maxAge": "1h"}})
    try:
        await wait_ready(stack.gateway_url)
        # warm-up, and the traffic the head is chosen from (the served log)
        await run_rate(stack.gateway_url, args.rates[0], args.duration, seed=97)
        precomputed: dict[str, Any] = {}
        for mode in ("live", "precomputed"):
            if mode == "precomputed":
                precomputed = await run_precompute(cfg, args.head)
                print(f"precompute: {precomputed}", flush=True)
            for n, rate in enumerate(args.rates):
                hits = await precomputed_counts(stack.gateway_url)
                before = cpu_snapshot(stack)
                load = await run_rate(stack.gateway_url, rate, args.duration, seed=n)
                after = cpu_snapshot(stack)
                row = {
                    **summarize(rate, args.duration, load.samples),
                    "label": f"{rate:g} {mode}",
                    "mode": mode,
                    "headHitRate": hit_rate(hits, await precomputed_counts(stack.gateway_url)),
                    "cpuMsPerRequest": cpu_ms_per_request(before, after, load),
                }
                rows.append(row)
                print(
                    f"{row['label']}: hit rate {row['headHitRate']:.1%}, p50 {row['p50']} ms, "
                    f"p99 {row['p99']} ms, errors {row['errorRate']:.2%}",
                    flush=True,
                )
    finally:
        stop_gateway(stack)
    return {"rows": rows, "precompute": precomputed, "zipf": args.zipf, "headPercent": args.head}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", type=float, nargs="+", default=[50, 100, 200, 400])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per rate")
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=None, help="reuse a built stack")
    parser.add_argument("--zipf", type=float, default=0.0, help="Zipf exponent of the users")
    parser.add_argument(
        "--hybrid", action="store_true", help="live vs pre-computed head lists, side by side"
    )
    parser.add_argument("--head", type=int, default=20, help="percent of users pre-computed")
    parser.add_argument("--soak", type=float, default=None, help="hold this rate (rps)")
    parser.add_argument("--minutes", type=int, default=10, help="length of the soak")
    args = parser.parse_args()
    ZIPF["s"] = args.zipf
    loadgen.build()  # before any server starts: a missing Go fails here, in a second
    root = args.workdir or Path(tempfile.mkdtemp(prefix="serving-bench-"))
    marker = root / "stack.json"
    if marker.exists():
        stack = Stack(
            **{
                **json.loads(marker.read_text()),
                "root": root,
                "paths": DatasetPaths.under(str(root / "ml-100k")),
            }
        )
    else:
        stack = build_stack(root, args.items)
        built = {"artifact": stack.artifact, "index": stack.index, "version": stack.version}
        marker.write_text(json.dumps({**built, "timings": stack.timings}))
    stack.redis = start_redis(databases=1)
    t = time.perf_counter()
    stack.triton = start_triton(root / "triton", timeout=600)
    stack.timings["tritonStartSeconds"] = round(time.perf_counter() - t, 1)
    try:
        ss.materialize_features(stack.redis.url, stack.paths)
        # every user's MovieLens history in their seen set: filtered out, and the models'
        # history input
        ss.backfill_history(stack.redis.url, stack.paths)
        run = measure_hybrid if args.hybrid else measure_soak if args.soak else measure
        result = asyncio.run(run(args, stack, stack.triton.http_url))
    finally:
        stop_gateway(stack)
        stack.triton.stop()
        stack.redis.stop()
    result.update(
        {
            "items": args.items,
            "durationPerRate": args.duration,
            "setup": stack.timings,
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "loadAverage": os.getloadavg(),
            },
            "config": {
                "candidates": 200,
                "topK": 20,
                "scoringTimeout": "100ms",
                "tritonMaxBatchSize": 64,
                "queueDelayUs": 500,
                "torchThreads": 1,
            },
        }
    )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"serving_bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=1))
    if args.soak:
        print_soak(result)
        print(f"load average during the run: {result['machine']['loadAverage']}; results: {out}")
        return
    if args.hybrid:
        print_hybrid(result)
        print(f"load average during the run: {result['machine']['loadAverage']}; results: {out}")
        return
    p = result["placement"]
    print(
        f"\nANN placement ({p['items']} items, k={p['k']}): FAISS HNSW search in-process "
        f"p50 {p['faissSearchUsP50']} µs / p99 {p['faissSearchUsP99']} µs; one Triton round "
        f"trip (user tower) p50 {p['tritonUserTowerRoundTripMsP50']} ms / "
        f"p99 {p['tritonUserTowerRoundTripMsP99']} ms\n"
    )
    for name, c in p["tritonClients"].items():
        print(
            f"Triton client {name}: round trip p50 {c['roundTripMsP50']} ms, "
            f"CPU {c['clientCpuMsPerCall']} ms per call"
        )
    print(table(result["rows"]))
    print("\nCPU ms per request (gateway / Triton / Redis / load generator):")
    for r in result["rows"]:
        c = r["cpuMsPerRequest"]
        print(
            f"  {r['label']}: {c['gateway']} / {c['triton']} / {c['redis']} / {c['loadGenerator']}"
        )
    print(f"\np99 passes 50 ms at: {result['p99Passes50msAt'] or 'not within the rates run'} rps")
    print(f"load average during the run: {result['machine']['loadAverage']}; results: {out}")


def print_hybrid(result: dict[str, Any]) -> None:
    print(f"\nZipf s={result['zipf']}, head {result['headPercent']}% of users pre-computed")
    print("| rate (rps) | mode | head hit rate | throughput | errors | p50 ms | p99 ms | "
          "CPU ms/request (gateway / Triton / Redis / loadgen) |")  # fmt: skip
    print("|" + "---|" * 8)
    for r in result["rows"]:
        c = r["cpuMsPerRequest"]
        print(
            f"| {r['rate']:g} | {r['mode']} | {r['headHitRate']:.1%} | {r['throughput']} | "
            f"{r['errorRate']:.2%} | {r['p50']} | {r['p99']} | "
            f"{c['gateway']} / {c['triton']} / {c['redis']} / {c['loadGenerator']} |"
        )


if __name__ == "__main__":
    main()
