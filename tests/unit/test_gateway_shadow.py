"""Shadow traffic: a sample of the stable's requests run through the canary, never served.

The comparison itself and the contract's reading of its counters are tables of built inputs.
The gateway's side runs its real HTTP app on a real redis-server and a real tritonserver,
since a shadow answer is only worth comparing when it comes from models: the server holds two
model versions whose code is numpy only (so it starts in seconds, unlike the torch models),
deterministic and identical, and each test picks the canary's index: the stable's item
vectors (an identical canary) or perturbed ones (a canary with other item embeddings)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from aiohttp.test_utils import TestClient, TestServer
from test_gateway_traffic import fields, stats_keys, summed

from recsys_contract import traffic
from recsys_contract.gateway import RoutingTable
from recsys_contract.keyspace import GatewayKeys
from recsys_contract.repository import RepositoryConfig
from recsys_workloads import ann_index
from recsys_workloads.gateway.app import Gateway, create_app
from recsys_workloads.gateway.config import parse_gateway_config, parse_routing
from recsys_workloads.gateway.index_pool import Candidates, LoadedIndex
from recsys_workloads.gateway.served_log import ServedRecord
from recsys_workloads.gateway.shadow import UNLIMITED_SHADOW_CONCURRENCY, shadow_concurrency
from recsys_workloads.runtime import BadInputError
from recsys_workloads.serving.contract import (
    EMBEDDING,
    ITEM_IDS,
    SCORES,
    USER_ID,
    model_names,
)
from recsys_workloads.serving.repository import model_config
from testbed.triton_server import MODEL_PRELUDE, TritonServer

# --- the comparison ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("served", "shadow", "k", "overlap", "rank"),
    [
        pytest.param([1, 2, 3, 4], [1, 2, 3, 4], 4, 1.0, 1.0, id="identical"),
        pytest.param([1, 2, 3, 4], [5, 6, 7, 8], 4, 0.0, None, id="disjoint"),
        pytest.param([1, 2, 3, 4], [4, 3, 2, 1], 4, 1.0, -1.0, id="reversed"),
        # same items, two neighbours swapped: rho = 1 - 6 * 2 / (4 * 15)
        pytest.param([1, 2, 3, 4], [1, 3, 2, 4], 4, 1.0, 0.8, id="one-swap"),
        # {1, 3} in common, in the same order; the rest on one side only
        pytest.param([1, 2, 3, 4], [3, 9, 1, 8], 4, 0.5, -1.0, id="partial-reordered"),
        pytest.param([1, 2, 3, 4], [1, 9, 3, 8], 4, 0.5, 1.0, id="partial-same-order"),
        pytest.param([1, 2, 3, 4], [9, 1, 8, 7], 4, 0.25, None, id="one-in-common"),
        # k past both lists: the longer list is the divisor, so identical short lists agree
        pytest.param([1, 2, 3], [1, 2, 3], 10, 1.0, 1.0, id="k-above-both"),
        pytest.param([1, 2, 3], [1, 2], 10, 2 / 3, 1.0, id="k-above-one-shorter"),
        # only the top k count: what differs past it is not compared
        pytest.param([1, 2, 3, 4], [1, 2, 9, 8], 2, 1.0, 1.0, id="k-cuts"),
        pytest.param([1, 2, 3, 4], [2, 1, 3, 4], 2, 1.0, -1.0, id="k-cuts-reversed-head"),
        pytest.param([], [1, 2], 5, 0.0, None, id="served-empty"),
        pytest.param([1, 2], [], 5, 0.0, None, id="shadow-empty"),
        pytest.param([], [], 5, None, None, id="both-empty"),
        pytest.param([1, 1, 2], [1, 2], 5, 1.0, 1.0, id="repeat-counts-once"),
    ],
)
def test_ranking_agreement(
    served: list[int], shadow: list[int], k: int, overlap: float | None, rank: float | None
) -> None:
    got = traffic.ranking_agreement(served, shadow, k)
    assert got.overlap == (None if overlap is None else pytest.approx(overlap))
    assert got.rank == (None if rank is None else pytest.approx(rank))
    # the overlap is symmetric; the rank correlation too
    back = traffic.ranking_agreement(shadow, served, k)
    assert (back.overlap, back.rank) == (got.overlap, got.rank)


def test_rank_correlation_stays_in_range_on_random_lists() -> None:
    rng = random.Random(3)
    for _ in range(300):
        a = rng.sample(range(30), rng.randint(0, 12))
        b = rng.sample(range(30), rng.randint(0, 12))
        got = traffic.ranking_agreement(a, b, rng.randint(1, 12))
        assert got.overlap is None or 0.0 <= got.overlap <= 1.0
        assert got.rank is None or -1.0 - 1e-12 <= got.rank <= 1.0 + 1e-12


# --- the contract --------------------------------------------------------------------------

STABLE = {"modelVersion": "m-v1", "triton": "t:1"}
CANARY = {"modelVersion": "m-v2", "triton": "t:2"}


@pytest.mark.parametrize(
    ("table", "shadow", "error"),
    [
        ({"stable": STABLE}, 0, None),
        ({"stable": STABLE, "canary": CANARY, "shadowPercent": 25}, 25, None),
        ({"stable": STABLE, "canary": CANARY, "canaryWeight": 10, "shadowPercent": 100}, 100, None),
        ({"stable": STABLE, "shadowPercent": 5}, None, "no canary"),
        ({"stable": STABLE, "canary": CANARY, "shadowPercent": 101}, None, "shadowPercent"),
        ({"stable": STABLE, "canary": CANARY, "shadowPercent": -1}, None, "shadowPercent"),
    ],
)
def test_shadow_percent_needs_a_canary(
    table: dict[str, Any], shadow: int | None, error: str | None
) -> None:
    if error is None:
        parsed = parse_routing(table)
        assert parsed.shadow_percent == shadow
        assert RoutingTable.model_validate(parsed.to_wire()) == parsed
        return
    with pytest.raises(BadInputError, match=error):
        parse_routing(table)


LAST = len(traffic.LATENCY_BOUNDS_MS)


def test_counts_read_the_shadow_fields_back() -> None:
    counts = traffic.Counts.of(
        [
            {b"requests": b"4", b"lat:2": b"4", b"shadow:requests": b"10",
             b"shadow:errors": b"2", b"shadow:skipped": b"1", b"shadow:compared": b"8",
             b"shadow:overlap": b"6000000", b"shadow:ranked": b"4", b"shadow:rank": b"-1000000",
             b"shadow:lat:0": b"3", b"shadow:lat:4": b"7"},
            {"shadow:requests": 2, "shadow:compared": "2", "shadow:overlap": "1000000",
             "shadow:ranked": 1, "shadow:rank": 3_500_000 // 7, f"shadow:lat:{LAST}": 2,
             f"shadow:lat:{LAST + 1}": 5, "shadow:lat:-1": 5, "shadow:unknown": 9},
        ]
    )  # fmt: skip
    assert (counts.shadow_requests, counts.shadow_errors, counts.shadow_skipped) == (12, 2, 1)
    assert (counts.shadow_compared, counts.shadow_ranked) == (10, 5)
    assert counts.shadow_overlap == pytest.approx(0.7)  # 7 over 10 compared
    assert counts.shadow_rank == pytest.approx(-0.1)  # -0.5 over 5 ranked
    assert sum(counts.shadow_latency) == 12  # out-of-range histogram fields are ignored
    assert counts.shadow_latency_quantile_ms(0.25) == traffic.LATENCY_BOUNDS_MS[0]
    assert counts.shadow_latency_quantile_ms(0.5) == traffic.LATENCY_BOUNDS_MS[4]
    assert counts.shadow_latency_quantile_ms(1.0) == 2 * traffic.LATENCY_BOUNDS_MS[-1]
    # the served counters are apart from the shadow's
    assert (counts.requests, sum(counts.latency)) == (4, 4)
    assert counts.latency_quantile_ms(0.5) == traffic.LATENCY_BOUNDS_MS[2]


def test_counts_without_shadow_runs_have_no_means() -> None:
    counts = traffic.Counts.of([{"requests": 3, "shadow:requests": 2, "shadow:errors": 2}])
    assert (counts.shadow_overlap, counts.shadow_rank) == (None, None)
    assert counts.shadow_latency_quantile_ms(0.5) is None


@pytest.mark.parametrize(
    ("max_in_flight", "bound"),
    [(64, 16), (8, 2), (4, 1), (3, 1), (1, 1), (0, UNLIMITED_SHADOW_CONCURRENCY)],
)
def test_shadow_runs_take_at_most_a_quarter_of_the_admitted_requests(
    max_in_flight: int, bound: int
) -> None:
    assert shadow_concurrency(max_in_flight) == bound


# --- the gateway, on real servers ----------------------------------------------------------

DIM, ITEMS, TOWER_SEED = 8, 200, 1
ITEM_IDS_SERVED = np.arange(100, 100 + ITEMS, dtype=np.int64)

TOWER = f"""
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"])["parameters"]
        self.seed = int(params["seed"]["string_value"])

    def execute(self, requests):
        out = []
        for request in requests:
            users = pb_utils.get_input_tensor_by_name(request, "{USER_ID}").as_numpy()
            rows = [np.random.default_rng([self.seed, int(u)]).standard_normal({DIM})
                    for u in users.reshape(-1)]
            vectors = np.stack(rows)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            tensor = pb_utils.Tensor("{EMBEDDING}", vectors.astype(np.float32))
            out.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return out
"""

RANKER = f"""
import json
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"])["parameters"]
        self.seed = int(params["seed"]["string_value"])

    def execute(self, requests):
        out = []
        for request in requests:
            user = int(pb_utils.get_input_tensor_by_name(request, "{USER_ID}").as_numpy().flat[0])
            items = pb_utils.get_input_tensor_by_name(request, "{ITEM_IDS}").as_numpy()
            mixed = (items * 2654435761 + user * 40503 + self.seed * 7919) % 1000003
            tensor = pb_utils.Tensor("{SCORES}", (mixed / 1000003.0).astype(np.float32))
            out.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
        return out
"""


def write_model(repo: Path, name: str, kind: str, code: str) -> None:
    folder = repo / name
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "model.py").write_text(MODEL_PRELUDE + textwrap.dedent(code))
    cfg = RepositoryConfig(
        artifact_uri="unused", repository_uri="unused", max_batch_size=8,
        max_queue_delay_microseconds=0,
    )  # fmt: skip
    text = model_config(
        name,
        kind,  # type: ignore[arg-type]
        cfg,
        embedding_dim=DIM,
        parameters={"seed": str(TOWER_SEED)},
    )
    (folder / "config.pbtxt").write_text(text)


@pytest.fixture(scope="module")
def triton(
    tmp_path_factory: pytest.TempPathFactory, start_triton: Callable[[Path], TritonServer]
) -> TritonServer:
    """Two model versions with the same code and seed: the same answers for the same user."""
    repo = tmp_path_factory.mktemp("shadow-models") / "repo"
    for version in ("m-v1", "m-v2"):
        names = model_names(version)
        write_model(repo, names.user_tower, "user_tower", TOWER)
        write_model(repo, names.ranker, "ranker", RANKER)
    return start_triton(repo)


def item_vectors(noise: float) -> np.ndarray[Any, np.dtype[np.float32]]:
    """The stable's item vectors, moved by ``noise`` times a random direction each."""
    vectors = np.random.default_rng(11).standard_normal((ITEMS, DIM))
    if noise:
        vectors = vectors + noise * np.random.default_rng(12).standard_normal((ITEMS, DIM))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors.astype(np.float32)


#: the indexes a test's gateway can load, by URI: (model version, item-vector noise)
INDEXES = {
    "mem://m-v1": ("m-v1", 0.0),
    "mem://m-v2": ("m-v2", 0.0),
    "mem://m-v2-moved": ("m-v2", 0.7),
}


def load_index(uri: str) -> LoadedIndex:
    version, noise = INDEXES[uri]  # an unknown URI fails to load, as a bad artifact does
    index = ann_index.build_index(
        item_vectors(noise), ITEM_IDS_SERVED, ann_index.IndexParams(kind="flat")
    )
    popular = Candidates(ITEM_IDS_SERVED[:3], np.array([3.0, 2.0, 1.0], dtype=np.float32))
    return LoadedIndex(uri, version, index, ITEMS, popular)


def table(
    triton: TritonServer,
    *,
    canary: str | None = "mem://m-v2",
    weight: int = 0,
    shadow: int = 0,
    canary_triton: str | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "stable": {"modelVersion": "m-v1", "triton": triton.http_url, "index": "mem://m-v1"}
    }
    if canary is not None:
        out["canary"] = {
            "modelVersion": "m-v2",
            "triton": canary_triton or triton.http_url,
            "index": canary,
        }
        out.update(canaryWeight=weight, shadowPercent=shadow)
    return out


def gateway_for(redis_url: str, routing: dict[str, Any], max_in_flight: int = 400) -> Gateway:
    cfg = parse_gateway_config(
        {
            "recommender": "test.shadow",
            "routing": routing,
            "redisUrl": redis_url,
            "pollInterval": "1h",
            "redisTimeout": "1s",
            # generous: a busy two-core machine must not turn a slow answer into a fallback
            "scoringTimeout": "10s",
            "candidates": 20,
            "topK": 10,
            "maxInFlight": max_in_flight,
        }
    )
    gateway = Gateway(cfg)
    gateway.pool.loader = load_index
    return gateway


@contextlib.asynccontextmanager
async def serving(gateway: Gateway) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(create_app(gateway))) as client:
        for task in list(gateway.pool.loading.values()):
            await task
        await gateway.poll_once()
        yield client


async def recommend(client: TestClient[Any, Any], user: int) -> dict[str, Any]:
    resp = await client.get(f"/v1/recommendations?user_id={user}")
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    assert body["fallback"] is None, body  # the models answered
    return body


async def serve_users(
    gateway: Gateway, users: range, rng: random.Random | None = None
) -> list[dict[str, Any]]:
    """Each user's response; every shadow run finished and the counters written (stop)."""
    async with serving(gateway) as client:
        assert gateway.shadow is not None
        if rng is not None:
            gateway.shadow.rng = rng
        bodies = [await recommend(client, u) for u in users]
        await gateway.shadow.drain()
    return bodies


def served_log(client: redis.Redis, keys: GatewayKeys) -> list[ServedRecord]:
    entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(keys.served)  # type: ignore[assignment]
    return [ServedRecord.from_fields(f) for _, f in entries]


def shadow_fields_of(client: redis.Redis, keys: GatewayKeys) -> dict[str, dict[str, int]]:
    """The shadow fields of every stats hash, by hash."""
    out = {}
    for key in stats_keys(client, keys):
        found = {f: n for f, n in fields(client, key).items() if f.startswith("shadow:")}
        if found:
            out[key] = found
    return out


USERS = range(1, 25)


@pytest.mark.redis
@pytest.mark.triton
@pytest.mark.parametrize(
    ("canary", "weight", "shadow", "shadowed"),
    [
        pytest.param(None, 0, 0, False, id="no-canary"),
        pytest.param("mem://m-v2", 0, 0, False, id="canary-without-shadow"),
        pytest.param("mem://m-v2", 0, 100, True, id="shadow-only"),
        pytest.param("mem://m-v2", 50, 100, True, id="canary-users-not-shadowed"),
        # the canary's index never loads: nothing to run the canary on
        pytest.param("mem://missing", 0, 100, False, id="canary-index-not-loaded"),
    ],
)
async def test_only_stable_requests_are_shadowed_and_only_when_the_table_says_so(
    redis_url: str,
    redis_client: redis.Redis,
    triton: TritonServer,
    canary: str | None,
    weight: int,
    shadow: int,
    shadowed: bool,
) -> None:
    # room for every run at once (the cap has its own test): on a busy machine shadow runs
    # can pile up behind the sequential requests, and one over the cap is skipped by design
    gateway = gateway_for(
        redis_url, table(triton, canary=canary, weight=weight, shadow=shadow), max_in_flight=400
    )
    bodies = await serve_users(gateway, USERS)
    by_version = {v: [b for b in bodies if b["modelVersion"] == v] for v in ("m-v1", "m-v2")}
    if weight:
        assert by_version["m-v1"]
        assert by_version["m-v2"]
    else:
        assert not by_version["m-v2"]
    stable = summed(redis_client, gateway.keys, "m-v1")
    canary_counts = summed(redis_client, gateway.keys, "m-v2")
    # the served counters count what was served, shadow runs nowhere in them
    assert stable.requests == len(by_version["m-v1"])
    assert canary_counts.requests == len(by_version["m-v2"])
    assert canary_counts.impressions == sum(len(b["items"]) for b in by_version["m-v2"])
    assert stable.shadow_requests == 0  # the stable is never the shadow
    want = len(by_version["m-v1"]) if shadowed else 0
    assert canary_counts.shadow_requests == want  # at 100 %: every stable request
    assert canary_counts.shadow_compared == want
    assert sum(canary_counts.shadow_latency) == want
    assert (canary_counts.shadow_errors, canary_counts.shadow_skipped) == (0, 0)
    # each shadow run lands in the bucket of the impression it mirrors
    buckets: dict[str, int] = {}
    for b in by_version["m-v1"] if shadowed else []:
        served_ms = traffic.served_ms_of(b["requestId"])
        assert served_ms is not None
        key = gateway.keys.stats("m-v2", traffic.bucket_of(served_ms / 1000))
        buckets[key] = buckets.get(key, 0) + 1
    got = shadow_fields_of(redis_client, gateway.keys)
    assert {k: f[traffic.SHADOW_REQUESTS] for k, f in got.items()} == buckets
    # the log holds what was served, once each
    logged = served_log(redis_client, gateway.keys)
    assert sorted(r.request_id for r in logged) == sorted(b["requestId"] for b in bodies)
    assert {(r.variant, r.model_version) for r in logged} <= {
        ("stable", "m-v1"),
        ("canary", "m-v2"),
    }


@pytest.mark.redis
@pytest.mark.triton
async def test_an_identical_canary_agrees_fully(
    redis_url: str, redis_client: redis.Redis, triton: TritonServer
) -> None:
    gateway = gateway_for(redis_url, table(triton, shadow=100))
    await serve_users(gateway, USERS)
    got = summed(redis_client, gateway.keys, "m-v2")
    assert got.shadow_compared == got.shadow_ranked == len(USERS)
    assert got.shadow_overlap == 1.0
    assert got.shadow_rank == 1.0
    assert got.shadow_latency_quantile_ms(0.5) is not None


@pytest.mark.redis
@pytest.mark.triton
async def test_a_canary_with_other_item_embeddings_overlaps_less(
    redis_url: str, redis_client: redis.Redis, triton: TritonServer
) -> None:
    """Moved item vectors change what retrieval finds; the ranker is the same, so the items
    both answers hold are still ordered alike: the two measures tell the causes apart."""
    gateway = gateway_for(redis_url, table(triton, canary="mem://m-v2-moved", shadow=100))
    await serve_users(gateway, USERS)
    got = summed(redis_client, gateway.keys, "m-v2")
    assert got.shadow_compared == len(USERS)
    assert got.shadow_overlap is not None
    assert 0.1 < got.shadow_overlap < 0.9
    assert got.shadow_ranked > 0
    assert got.shadow_rank == pytest.approx(1.0, abs=1e-6)


@pytest.mark.redis
@pytest.mark.triton
async def test_the_served_answer_is_the_same_with_and_without_shadowing(
    redis_url: str, redis_client: redis.Redis, triton: TritonServer
) -> None:
    def answer(body: dict[str, Any]) -> tuple[Any, ...]:
        return (body["variant"], body["modelVersion"], body["index"], body["items"])

    plain = await serve_users(
        gateway_for(redis_url, table(triton, canary="mem://m-v2-moved")), USERS
    )
    redis_client.flushdb()
    gateway = gateway_for(redis_url, table(triton, canary="mem://m-v2-moved", shadow=100))
    shadowed = await serve_users(gateway, USERS)
    assert [answer(b) for b in shadowed] == [answer(b) for b in plain]
    assert summed(redis_client, gateway.keys, "m-v2").shadow_requests == len(USERS)
    # the shadow answers (other items, from m-v2's index) are nowhere in the log
    logged = served_log(redis_client, gateway.keys)
    assert len(logged) == len(USERS)
    assert {(r.variant, r.model_version, r.index) for r in logged} == {
        ("stable", "m-v1", "mem://m-v1")
    }
    by_id = {b["requestId"]: [i["itemId"] for i in b["items"]] for b in shadowed}
    assert {r.request_id: [i for i, _ in r.items] for r in logged} == by_id
    assert gateway.metrics.registry.get_sample_value(
        "recsys_gateway_served_items_total", {"variant": "canary", "model_version": "m-v2"}
    ) in (None, 0.0)


@pytest.mark.redis
@pytest.mark.triton
@pytest.mark.parametrize("percent", [30, 70])
async def test_a_share_of_the_stable_requests_is_sampled(
    redis_url: str, redis_client: redis.Redis, triton: TritonServer, percent: int
) -> None:
    seed = 5
    draws = random.Random(seed)
    want = sum(draws.random() * 100 < percent for _ in USERS)
    assert 0 < want < len(USERS)
    gateway = gateway_for(redis_url, table(triton, shadow=percent))
    await serve_users(gateway, USERS, random.Random(seed))
    assert summed(redis_client, gateway.keys, "m-v2").shadow_requests == want


@pytest.mark.redis
@pytest.mark.triton
async def test_a_canary_whose_models_fail_counts_shadow_errors_only(
    redis_url: str, redis_client: redis.Redis, triton: TritonServer
) -> None:
    """The canary's Triton refuses connections: its shadow runs fall back, which is the
    canary's error; the stable's answers are unaffected."""
    gateway = gateway_for(redis_url, table(triton, shadow=100, canary_triton="127.0.0.1:1"))
    bodies = await serve_users(gateway, USERS)
    assert {b["modelVersion"] for b in bodies} == {"m-v1"}
    got = summed(redis_client, gateway.keys, "m-v2")
    assert (got.shadow_requests, got.shadow_errors, got.shadow_compared) == (24, 24, 0)
    assert sum(got.shadow_latency) == len(USERS)
    assert (got.shadow_overlap, got.shadow_rank) == (None, None)
    assert (got.requests, got.errors) == (0, 0)  # the canary served nobody


class HeldTriton:
    """A Triton that is up (its readiness probe answers) and holds every inference until
    released, then drops it: a shadow run on it stays running for as long as a test needs."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.released = asyncio.Event()
        self.held = 0

    @property
    def endpoint(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> HeldTriton:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        self.released.set()
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        if line.startswith(b"GET"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
        else:
            self.held += 1
            await self.released.wait()
        writer.close()


@pytest.mark.redis
@pytest.mark.triton
async def test_shadow_runs_over_the_bound_are_skipped_and_counted(
    redis_url: str, redis_client: redis.Redis, triton: TritonServer
) -> None:
    async with HeldTriton() as held:
        routing = table(triton, shadow=100, canary_triton=held.endpoint)
        gateway = gateway_for(redis_url, routing, max_in_flight=4)
        async with serving(gateway) as client:
            assert gateway.shadow is not None
            assert gateway.shadow.concurrency == 1
            first = await recommend(client, 1)  # its shadow run waits on the held Triton
            second = await recommend(client, 2)  # the bound is reached: skipped
            assert len(gateway.shadow.running) == 1
            held.released.set()
            await gateway.shadow.drain()
            assert held.held == 1
    got = summed(redis_client, gateway.keys, "m-v2")
    assert (got.shadow_requests, got.shadow_errors, got.shadow_skipped) == (1, 1, 1)
    assert (
        gateway.metrics.registry.get_sample_value(
            "recsys_gateway_shadow_runs_total", {"model_version": "m-v2", "outcome": "skipped"}
        )
        == 1.0
    )
    assert first["items"]
    assert second["items"]
