"""The online stack for real: Triton (python backend, torch) serving repositories built from
MovieLens-100k artifacts, Redis holding materialized features, and the gateway in front.

One module on purpose: the artifacts (a training run) and the Triton server (four python
stubs that each import torch) are the expensive parts, built once here and shared. The last
test stops Triton (fallback paths), so it must stay last.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest
import redis
import redis.asyncio
import tritonclient.http as httpclient
from serving_support import (
    ITEMS_VIEW,
    RECOMMENDER,
    USERS_VIEW,
    Artifacts,
    build_artifacts,
    gateway_client,
    gateway_config,
    materialize_features,
    routing,
    user_history,
)

from recsys_contract.keyspace import (
    FeatureViewKeys,
    GatewayKeys,
    IndexAlias,
    LivePointer,
    PrecomputedList,
)
from recsys_contract.precompute import PrecomputeConfig
from recsys_workloads import precompute
from recsys_workloads.ann_index import exact_top_k
from recsys_workloads.artifact_store import Store
from recsys_workloads.featurestore.reader import read_online_features
from recsys_workloads.gateway.control import (
    block_items,
    mark_seen,
    move_index_alias,
    publish_routing,
)
from recsys_workloads.gateway.served_log import ServedRecord
from recsys_workloads.index_build import load_index
from recsys_workloads.logjoin import work as log_join
from recsys_workloads.scoring import SCORING_FILE
from recsys_workloads.serving.inference import RankerScorer, RankQuery, UserTower
from recsys_workloads.train.logged import read_logged
from testbed.redis_server import start_redis
from testbed.triton_server import TritonServer, start_triton

pytestmark = [pytest.mark.triton, pytest.mark.redis]
KEYS = GatewayKeys.of(RECOMMENDER)
#: Four python stubs importing torch on a busy 2-core machine take minutes, not seconds.
TRITON_START_TIMEOUT = 600
Json = dict[str, Any]


@pytest.fixture(scope="module")
def art(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    return build_artifacts(tmp_path_factory.mktemp("serving"))


@pytest.fixture(scope="module")
def triton(art: Artifacts) -> Iterator[TritonServer]:
    # explicit model control, so the fallback test can unload one model and keep the other
    server = start_triton(
        art.repository,
        ("--model-control-mode=explicit", "--load-model=*"),
        timeout=TRITON_START_TIMEOUT,
    )
    try:
        yield server
    finally:
        if server.process.alive():  # a failed fallback test may leave it frozen
            os.kill(server.process.pid, signal.SIGCONT)
        server.stop()


@pytest.fixture
def online(redis_url: str, art: Artifacts) -> str:
    """This test's Redis database, with MovieLens users and items materialized."""
    materialize_features(redis_url, art.paths)
    return redis_url


#: A request the gateway answers in milliseconds; one that hangs fails here, with every task's
#: stack, instead of at the suite's timeout with only the idle event loop's.
REQUEST_LIMIT_S = 60


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, Json]:
    try:
        async with asyncio.timeout(REQUEST_LIMIT_S), session.get(url) as resp:
            return resp.status, await resp.json()
    except TimeoutError:
        stacks = []
        for task in asyncio.all_tasks():
            out = io.StringIO()
            task.print_stack(file=out)
            stacks.append(out.getvalue())
        detail = "\n".join(stacks)
        raise AssertionError(f"GET {url}: no answer in {REQUEST_LIMIT_S}s\n{detail}") from None


async def recommend(
    session: aiohttp.ClientSession, base: str, user: int, k: int = 10, **params: str
) -> Json:
    query = "&".join(f"{a}={b}" for a, b in {"user_id": user, "k": k, **params}.items())
    status, body = await get(session, f"{base}/v1/recommendations?{query}")
    assert status == 200, body
    return body


async def wait_ready(session: aiohttp.ClientSession, base: str, **want: Any) -> Json:
    """Poll /readyz until it is 200 and its body holds ``want``."""
    body: Json = {}
    for _ in range(300):
        status, body = await get(session, f"{base}/readyz")
        if status == 200 and all(body.get(k) == v for k, v in want.items()):
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"gateway never became ready with {want}: {body}")


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def metrics_text(session: aiohttp.ClientSession, base: str) -> str:
    async with session.get(f"{base}/metrics") as resp:
        return await resp.text()


# --- Triton alone ---------------------------------------------------------------------------


def tower_inputs(
    user: int, features: Json | None, history: list[int] | None = None
) -> list[httpclient.InferInput]:
    uid = httpclient.InferInput("user_id", [1, 1], "INT64")
    uid.set_data_from_numpy(np.array([[user]], dtype=np.int64))
    feats = httpclient.InferInput("user_features", [1, 1], "BYTES")
    feats.set_data_from_numpy(np.array([[json.dumps(features).encode()]], dtype=object))
    if not history:
        return [uid, feats]
    hist = httpclient.InferInput("history", [1, len(history)], "INT64")
    hist.set_data_from_numpy(np.array([history], dtype=np.int64))
    return [uid, feats, hist]


def test_two_versions_serve_side_by_side_as_the_models_do_in_process(
    art: Artifacts, triton: TritonServer
) -> None:
    client = httpclient.InferenceServerClient(url=triton.http_url, concurrency=8)
    features = {"age": 33, "gender": "M", "occupation": "engineer"}
    history = [50, 181, 1]
    vectors = {}
    for version in ("ml-v1", "ml-v2"):
        assert client.is_model_ready(f"{version}.user-tower")
        assert client.is_model_ready(f"{version}.ranker")
        local = UserTower.load(art.repository / f"{version}.user-tower" / "1")
        out = client.infer(f"{version}.user-tower", tower_inputs(5, features, history))
        vector = out.as_numpy("embedding")
        np.testing.assert_allclose(
            vector, local.embed([5], [features], [history]), rtol=1e-4, atol=1e-5
        )
        vectors[version] = vector
    assert not np.allclose(vectors["ml-v1"], vectors["ml-v2"], atol=1e-3)

    # concurrent ranker calls of different lengths: the dynamic batcher may put them in one
    # execute (ragged item_ids); each answer must still be its own query's
    scorer = RankerScorer.load(art.repository / "ml-v1.ranker" / "1")
    rng = np.random.default_rng(0)
    pending = []
    for n in range(12):
        items = rng.choice(np.arange(1, 1600), size=5 + 7 * n, replace=False).astype(np.int64)
        recent = [int(i) for i in items[: n % 4]]  # ragged histories too, some empty
        inputs = tower_inputs(10 + n, {"age": 20 + n}, recent)
        ids = httpclient.InferInput("item_ids", [1, items.size], "INT64")
        ids.set_data_from_numpy(items[None, :])
        pending.append((n, items, recent, client.async_infer("ml-v1.ranker", [*inputs, ids])))
    for n, items, recent, call in pending:
        got = call.get_result().as_numpy("scores").reshape(-1)
        want = scorer.score([RankQuery(10 + n, {"age": 20 + n}, items, recent)])[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

    bad = tower_inputs(5, None)
    bad[1].set_data_from_numpy(np.array([[b"{not json"]], dtype=object))
    with pytest.raises(Exception, match=r"(?i)expecting|json"):
        client.infer("ml-v1.user-tower", bad)
    client.close()


# --- the gateway ----------------------------------------------------------------------------


def expected_ranking(art: Artifacts, redis_url: str, user: int, k: int) -> list[int]:
    """The four stages computed independently, in-process, from the same stores."""
    client = redis.Redis.from_url(redis_url)
    row = read_online_features(client, FeatureViewKeys.of(USERS_VIEW), [user]).rows[0]
    history = [int(i) for i in client.zrevrange(KEYS.seen(user), 0, 99)]
    client.close()
    tower = UserTower.load(art.repository / "ml-v1.user-tower" / "1")
    index, _ = load_index(Store({}), art.v1.index)
    inner, ids = index.search(tower.embed([user], [row], [history]), 100 + len(history))
    keep = (ids[0] >= 0) & ~np.isin(ids[0], history)
    candidates, retrieval = ids[0][keep][:100], inner[0][keep][:100]
    scorer = RankerScorer.load(art.repository / "ml-v1.ranker" / "1")
    logits = scorer.score([RankQuery(user, row, candidates, history)])[0]
    # the version's own weights, read from its model artifact, and the formula by hand
    fusion = json.loads((Path(art.v1.artifact.removeprefix("file://")) / SCORING_FILE).read_text())
    scores = fusion["rankerWeight"] * logits.astype(np.float64) + fusion[
        "retrievalWeight"
    ] * retrieval.astype(np.float64)
    order = np.argsort(-scores, kind="stable")
    return [int(candidates[i]) for i in order[:k]]


async def test_results_have_the_right_shape_and_order(
    art: Artifacts, triton: TritonServer, online: str
) -> None:
    client = redis.Redis.from_url(online)
    mark_seen(client, KEYS, 42, user_history(art.paths, 42)[:12])  # history for one user
    client.close()
    cfg = gateway_config(art, triton.http_url, online)
    async with gateway_client(cfg) as (_, base, session):
        await wait_ready(session, base)
        for user in (1, 42, 500):
            body = await recommend(session, base, user, k=7, page="home")
            assert body["modelVersion"] == "ml-v1"
            assert body["variant"] == "stable"
            assert body["fallback"] is None
            assert body["requestId"].endswith("-s")
            ids = [it["itemId"] for it in body["items"]]
            scores = [it["score"] for it in body["items"]]
            assert len(ids) == 7
            assert len(set(ids)) == 7
            assert scores == sorted(scores, reverse=True)
            assert ids == expected_ranking(art, online, user, 7)
            assert set(body["timingsMs"]) == {
                "retrieval", "filtering", "scoring", "ordering", "total"
            }  # fmt: skip
        # a user the models and the store never saw still gets a full list
        assert len((await recommend(session, base, 99999, k=5))["items"]) == 5
        for query, named in (
            ("k=3", "user_id: required"),
            ("user_id=abc", "user_id: 'abc' is not an integer"),
            ("user_id=1&k=0", "k: 0 is outside [1, 100]"),
        ):
            status, body = await get(session, f"{base}/v1/recommendations?{query}")
            assert status == 400
            assert named in body["error"]
        text = await metrics_text(session, base)
        assert metric(text, "recsys_gateway_requests_total", code="200") == 4
        assert metric(text, "recsys_gateway_served_items_total", variant="stable") == 26
        count = "recsys_gateway_stage_duration_seconds_count"
        assert metric(text, count, stage="scoring", variant="stable") == 4


async def test_filtering_really_removes_seen_and_blocked_items(
    art: Artifacts, triton: TritonServer, online: str
) -> None:
    client = redis.Redis.from_url(online)
    user = 13  # rated over 600 films: without the filter, seen films fill the list
    history = user_history(art.paths, user)
    cfg = gateway_config(art, triton.http_url, online)
    async with gateway_client(cfg) as (_, base, session):
        await wait_ready(session, base)
        before = [it["itemId"] for it in (await recommend(session, base, user))["items"]]
        assert set(before) & set(history), "the check below would prove nothing"

        mark_seen(client, KEYS, user, history)
        after = await recommend(session, base, user)
        ids = [it["itemId"] for it in after["items"]]
        assert len(ids) == 10
        assert not set(ids) & set(history)

        block_items(client, KEYS, [ids[0]])
        block_items(client, KEYS, [ids[1]], user_id=user)
        blocked = [it["itemId"] for it in (await recommend(session, base, user))["items"]]
        assert ids[0] not in blocked
        assert ids[1] not in blocked
        # another user is spared the per-user block list but not the global one
        other = [it["itemId"] for it in (await recommend(session, base, 14, k=50))["items"]]
        assert ids[0] not in other

        # a click posted for a served item filters it from the next response
        latest = await recommend(session, base, user)
        clicked = latest["items"][0]["itemId"]
        event = {"requestId": latest["requestId"], "itemId": clicked, "type": "click",
                 "userId": user}  # fmt: skip
        async with session.post(f"{base}/v1/events", json=event) as resp:
            assert resp.status == 202
        again = [it["itemId"] for it in (await recommend(session, base, user))["items"]]
        assert clicked not in again
    client.close()


async def test_similar_items_are_the_nearest_in_the_index_and_filtered(
    art: Artifacts, triton: TritonServer, online: str
) -> None:
    """GET /v1/items/{id}/similar: the item's nearest neighbours by inner product in the
    stable version's index (checked against exact search over every item vector), never the
    item itself, without blocked items (and a given user's seen ones); unknown items 404."""
    client = redis.Redis.from_url(online)
    cfg = gateway_config(art, triton.http_url, online)
    async with gateway_client(cfg) as (gw, base, session):
        await wait_ready(session, base)
        assert gw.service is not None
        stable = gw.service.variant("stable")
        assert stable is not None
        index = stable.index.index
        ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        vectors = np.stack([index.reconstruct(int(i)) for i in ids])
        item = int(ids[7])
        exact = exact_top_k(vectors, ids, vectors[7:8], 11)[0].tolist()
        exact = [i for i in exact if i != item][:10]

        status, body = await get(session, f"{base}/v1/items/{item}/similar?k=10")
        assert status == 200, body
        got = [it["itemId"] for it in body["items"]]
        assert body["modelVersion"] == "ml-v1"
        assert len(got) == 10
        assert item not in got
        assert len(set(got) & set(exact)) >= 8, (got, exact)  # HNSW is approximate
        scores = [it["score"] for it in body["items"]]
        assert scores == sorted(scores, reverse=True)

        block_items(client, KEYS, [got[0]])
        status, body = await get(session, f"{base}/v1/items/{item}/similar?k=10")
        assert got[0] not in [it["itemId"] for it in body["items"]]
        assert len(body["items"]) == 10
        mark_seen(client, KEYS, 21, got[1:3])
        status, body = await get(session, f"{base}/v1/items/{item}/similar?k=10&user_id=21")
        assert status == 200, body
        assert not {got[0], *got[1:3]} & {it["itemId"] for it in body["items"]}

        missing = int(ids.max()) + 1000
        status, body = await get(session, f"{base}/v1/items/{missing}/similar")
        assert status == 404
        assert "not in ml-v1's index" in body["error"]
        status, body = await get(session, f"{base}/v1/items/{item}/similar?k=0")
        assert status == 400
        assert "k: 0 is outside" in body["error"]
        text = await metrics_text(session, base)
        assert metric(text, "recsys_gateway_similar_requests_total", code="200") == 3
        assert metric(text, "recsys_gateway_similar_requests_total", code="404") == 1
        assert metric(text, "recsys_gateway_requests_total") == 0  # recommendations only
    client.close()


async def test_item_rules_use_the_materialized_item_features(
    art: Artifacts, triton: TritonServer, online: str
) -> None:
    cfg = gateway_config(
        art,
        triton.http_url,
        online,
        filtering={"excludeSeen": True, "itemSelector": {"matchExpressions": [
            {"key": "release_year", "operator": "Gt", "values": ["1990"]}]}},
        ordering={"diversity": {"key": "genres", "maxPerValue": 2}},
    )  # fmt: skip
    client = redis.Redis.from_url(online)
    async with gateway_client(cfg) as (_, base, session):
        await wait_ready(session, base)
        for user in (1, 2, 3):
            ids = [it["itemId"] for it in (await recommend(session, base, user))["items"]]
            assert ids
            rows = read_online_features(client, FeatureViewKeys.of(ITEMS_VIEW), ids).rows
            assert all(r is not None and r["release_year"] > 1990 for r in rows)
            genres = [g for r in rows if r is not None for g in r["genres"]]
            assert max(genres.count(g) for g in set(genres)) <= 2
    client.close()


async def test_sticky_routing_holds_across_a_weight_change(
    art: Artifacts, triton: TritonServer, online: str
) -> None:
    client = redis.Redis.from_url(online)
    users = list(range(1, 161))
    cfg = gateway_config(art, triton.http_url, online)
    async with gateway_client(cfg) as (_, base, session):
        await wait_ready(session, base, routingSource="config")

        async def variants() -> dict[int, str]:
            out = {}
            for u in users:
                body = await recommend(session, base, u, k=3)
                want = {"stable": "ml-v1", "canary": "ml-v2"}[body["variant"]]
                assert body["modelVersion"] == want
                out[u] = body["variant"]
            return out

        publish_routing(client, KEYS, routing(art.v1, triton.http_url, art.v2, 20))
        await wait_ready(session, base, routingSource="redis", canaryWeight=20,
                         loading=[], indexes=sorted([art.v1.index, art.v2.index]))  # fmt: skip
        first = await variants()
        assert 10 <= sum(v == "canary" for v in first.values()) <= 55
        assert first == await variants()  # the same users, the same variants

        publish_routing(client, KEYS, routing(art.v1, triton.http_url, art.v2, 60))
        await wait_ready(session, base, canaryWeight=60)
        second = await variants()
        assert all(second[u] == "canary" for u in users if first[u] == "canary")
        assert sum(v == "canary" for v in second.values()) > sum(
            v == "canary" for v in first.values()
        )

        publish_routing(client, KEYS, routing(art.v1, triton.http_url))
        await wait_ready(session, base, canaryWeight=0, canary=None)
        assert set((await variants()).values()) == {"stable"}
        text = await metrics_text(session, base)
        assert metric(text, "recsys_gateway_requests_total", variant="canary") > 0
        assert metric(text, "recsys_gateway_routing_updates_total", source="redis") == 3
    client.close()


async def test_index_alias_swap_under_load_drops_no_request(
    art: Artifacts, triton: TritonServer, online: str
) -> None:
    assert art.v1.hnsw_index is not None
    client = redis.Redis.from_url(online)
    move_index_alias(client, KEYS, IndexAlias(art.v1.index, "ml-v1"))
    cfg = gateway_config(art, triton.http_url, online)
    async with gateway_client(cfg) as (gw, base, session):
        await wait_ready(session, base, indexes=[art.v1.index])
        results: list[tuple[int, Json]] = []
        a_quarter_done = asyncio.Event()

        async def worker(n: int) -> None:
            for i in range(40):
                async with session.get(
                    f"{base}/v1/recommendations?user_id={1 + (n * 40 + i) % 900}&k=5"
                ) as resp:
                    results.append((resp.status, await resp.json()))
                if len(results) >= 60:
                    a_quarter_done.set()

        async def swap() -> None:
            await a_quarter_done.wait()
            move_index_alias(client, KEYS, IndexAlias(str(art.v1.hnsw_index), "ml-v1"))

        await asyncio.gather(*(worker(n) for n in range(6)), swap())
        assert [s for s, _ in results] == [200] * 240
        assert all(b["fallback"] is None and len(b["items"]) == 5 for _, b in results)
        used = [b["index"] for _, b in results]
        assert used[0] == art.v1.index
        assert used[-1] == art.v1.hnsw_index
        assert used.index(str(art.v1.hnsw_index)) >= 60
        # after the swap, the old index is gone from the pool
        assert sorted(gw.pool.loaded) == [art.v1.hnsw_index]
        # an alias naming another version's index does not redirect stable traffic
        move_index_alias(client, KEYS, IndexAlias(art.v2.index, "ml-v2"))
        await wait_ready(session, base, indexes=[art.v1.index])
        assert (await recommend(session, base, 3))["index"] == art.v1.index
    client.close()


async def test_events_join_their_impressions(
    art: Artifacts, triton: TritonServer, online: str, tmp_path: Path
) -> None:
    cfg = gateway_config(art, triton.http_url, online)
    async with gateway_client(cfg) as (_, base, session):
        await wait_ready(session, base)
        served = [await recommend(session, base, u, k=4, page="p") for u in (7, 8, 9)]
        events = [
            {"requestId": served[0]["requestId"], "itemId": served[0]["items"][1]["itemId"],
             "type": "click", "userId": 7},
            {"requestId": served[0]["requestId"], "itemId": served[0]["items"][1]["itemId"],
             "type": "purchase", "userId": 7},
            {"requestId": served[2]["requestId"], "itemId": served[2]["items"][3]["itemId"],
             "type": "click"},
            {"requestId": served[1]["requestId"], "itemId": 1_000_000, "type": "click"},
        ]  # fmt: skip
        async with session.post(f"{base}/v1/events", json={"events": events}) as resp:
            assert resp.status == 202
            assert (await resp.json()) == {"accepted": 4}
        async with session.post(f"{base}/v1/events", json=[{"type": "click"}]) as resp:
            assert resp.status == 400
            assert "events[0].requestId" in (await resp.json())["error"]
        text = await metrics_text(session, base)
        assert metric(text, "recsys_gateway_events_total", variant="stable", type="click") == 3
    # the gateway has shut down: its writer flushed every served entry
    out = tmp_path / "logged"
    cfg = {
        "recommender": RECOMMENDER,
        "onlineStore": {"redisUrl": online},
        "outputUri": str(out),
        "waitSeconds": 0,
    }
    summary = log_join(cfg)
    assert summary["responses"] == 3
    assert summary["unmatchedEvents"] == 1
    rows = pq.read_table(out, partitioning=None).to_pylist()
    assert len(rows) == 12
    by_key = {(r["request_id"], r["item_id"]): r for r in rows}
    first = by_key[(served[0]["requestId"], served[0]["items"][1]["itemId"])]
    assert (first["clicked"], first["purchased"], first["position"]) == (True, True, 1)
    assert first["user_features"] is not None
    assert json.loads(first["user_features"])["occupation"]
    third = by_key[(served[2]["requestId"], served[2]["items"][3]["itemId"])]
    assert (third["clicked"], third["purchased"], third["user_id"]) == (True, False, 9)
    assert sum(r["clicked"] for r in rows) == 2
    assert all(r["model_version"] == "ml-v1" for r in rows)
    # the next training reads the clicked rows as interactions
    positives = read_logged(Store({}), str(out), None, None)
    assert sorted(positives.interactions.user_ids.tolist()) == [7, 9]
    assert sorted(positives.interactions.ratings.tolist()) == [1.0, 2.0]
    # the cursor persisted in Redis: a second run turns nothing into rows twice
    again = log_join(cfg)
    assert again["responses"] == 0


async def test_redis_down_is_a_clear_503_and_no_crash(art: Artifacts, triton: TritonServer) -> None:
    server = start_redis(databases=1)
    try:
        materialize_features(server.url, art.paths)
        cfg = gateway_config(art, triton.http_url, server.url, redisTimeout="200ms")
        async with gateway_client(cfg) as (gw, base, session):
            await wait_ready(session, base)
            await recommend(session, base, 1)
            server.stop()
            for _ in range(3):
                status, body = await get(session, f"{base}/v1/recommendations?user_id=1")
                assert status == 503
                assert "Redis" in body["error"]
            event = {"requestId": "0" * 32 + "-s", "itemId": 1, "type": "click"}
            async with session.post(f"{base}/v1/events", json=event) as resp:
                assert resp.status == 503
            status, _ = await get(session, f"{base}/healthz")
            assert status == 200
            for _ in range(50):
                status, body = await get(session, f"{base}/readyz")
                if status == 503:
                    break
                await asyncio.sleep(0.1)
            assert (status, body["redis"], body["indexLoaded"]) == (503, False, True)
            text = await metrics_text(session, base)
            assert metric(text, "recsys_gateway_errors_total", reason="redis") == 3
            assert metric(text, "recsys_gateway_requests_total", code="503") == 3
            assert gw.poller is not None
            assert not gw.poller.done()
    finally:
        server.stop()


@pytest.mark.chaos
async def test_redis_restarted_under_load_is_503_then_serves_again_without_a_restart(
    art: Artifacts, triton: TritonServer
) -> None:
    """Chaos: Redis killed under a steady load and started again on its port. While it is
    down every answer is a 503 (never a 5xx of another kind, a hang or a crash); once it is
    back and its features are materialized again (this Redis keeps nothing across a restart,
    as a cache would), the same gateway process serves 200s again."""
    server = start_redis(databases=1)
    back = None
    try:
        materialize_features(server.url, art.paths)
        cfg = gateway_config(art, triton.http_url, server.url, redisTimeout="200ms")
        async with gateway_client(cfg) as (gw, base, session):
            await wait_ready(session, base)
            stage = "up"
            seen: dict[str, Counter[int]] = {"up": Counter(), "down": Counter(), "back": Counter()}
            stop = asyncio.Event()

            async def client(i: int) -> None:
                n = 0
                while not stop.is_set():
                    at = stage
                    status, _ = await get(
                        session, f"{base}/v1/recommendations?user_id={1 + n % 50}"
                    )
                    if at == stage:  # a request that spans a switch belongs to neither side
                        seen[at][status] += 1
                    n += 1
                    await asyncio.sleep(0.005)

            tasks = [asyncio.create_task(client(i)) for i in range(4)]
            await asyncio.sleep(1.5)
            stage = "down"
            server.stop()
            await asyncio.sleep(2.0)
            back = start_redis(databases=1, port=server.port)
            await asyncio.to_thread(materialize_features, back.url, art.paths)
            stage = "back"
            for _ in range(100):  # the pool's next connection reaches the new server
                if seen["back"][200] >= 20:
                    break
                await asyncio.sleep(0.1)
            stop.set()
            await asyncio.gather(*tasks)
            text = await metrics_text(session, base)
            assert gw.poller is not None
            assert not gw.poller.done()
        summary = {k: dict(v) for k, v in seen.items()}
        print(f"\nchaos: Redis restarted under load, answers by stage: {summary}")
        assert set(seen["up"]) == {200}, summary
        assert set(seen["down"]) <= {200, 503}, summary
        assert seen["down"][503] >= 10, summary
        assert seen["back"][200] >= 20, summary
        assert set(seen["back"]) <= {200, 503}, summary
        assert metric(text, "recsys_gateway_errors_total", reason="redis") >= seen["down"][503]
    finally:
        server.stop()
        if back is not None:
            back.stop()


async def test_requests_past_max_in_flight_are_shed_with_503(
    art: Artifacts, triton: TritonServer, online: str
) -> None:
    cfg = gateway_config(art, triton.http_url, online, scoringTimeout="1s", maxInFlight=2)
    async with gateway_client(cfg) as (_, base, session):
        await wait_ready(session, base)

        async def ask(user: int) -> tuple[int, Json, str | None]:
            async with session.get(f"{base}/v1/recommendations?user_id={user}") as resp:
                return resp.status, await resp.json(), resp.headers.get("Retry-After")

        os.kill(triton.process.pid, signal.SIGSTOP)  # admitted requests wait for the deadline
        try:
            answers = await asyncio.gather(*(ask(u) for u in range(1, 6)))
        finally:
            os.kill(triton.process.pid, signal.SIGCONT)
        assert sorted(status for status, _, _ in answers) == [200, 200, 503, 503, 503]
        for status, body, retry_after in answers:
            if status == 503:
                assert "maxInFlight" in body["error"]
                assert retry_after == "1"
            else:
                assert body["fallback"] == "triton-timeout"
        assert (await ask(1))[0] == 200  # the slots were given back
        text = await metrics_text(session, base)
        assert metric(text, "recsys_gateway_errors_total", reason="overloaded") == 3


# --- hybrid serving: lists computed ahead ---------------------------------------------------


async def run_precompute(cfg: Json, audience: Json, top_n: int = 50) -> Json:
    """The pre-computation Job's work, in this event loop (its entry point runs its own)."""
    config = PrecomputeConfig.model_validate({"gateway": cfg, "audience": audience, "topN": top_n})
    client = redis.asyncio.Redis.from_url(cfg["redisUrl"])
    try:
        return (await precompute.run(config, client)).to_wire()
    finally:
        await client.aclose()


async def test_head_lists_are_served_filtered_and_never_across_a_promotion(
    art: Artifacts, triton: TritonServer, online: str
) -> None:
    client = redis.Redis.from_url(online)
    head, tail = [5, 6, 7], 8
    cfg = gateway_config(art, triton.http_url, online, precomputed={"maxAge": "1h"})
    async with gateway_client(cfg) as (_, base, session):
        await wait_ready(session, base)
        # traffic: the head users come often, the tail user once
        live: dict[int, list[int]] = {}
        for _ in range(3):
            for user in head:
                body = await recommend(session, base, user)
                assert body["source"] == "live"  # nothing stored yet
                live[user] = [it["itemId"] for it in body["items"]]
        await recommend(session, base, tail)
        await asyncio.sleep(0.3)  # the served log's writer flushes in the background

        summary = await run_precompute(cfg, {"mostActive": 3, "windowSeconds": 3600})
        assert summary["modelVersion"] == "ml-v1"
        assert (summary["users"], summary["written"]) == (3, 3)
        assert client.exists(KEYS.precomputed("ml-v1", tail)) == 0
        raw = client.get(KEYS.precomputed("ml-v1", head[0]))
        assert raw is not None
        stored = PrecomputedList.from_json(raw)
        assert stored.model_version == "ml-v1"
        assert len(stored.items) == 50
        assert 0 < client.pttl(KEYS.precomputed("ml-v1", head[0])) <= 3_600_000

        # the head is served its stored list: the same items the live stages ranked
        for user in head:
            body = await recommend(session, base, user)
            assert body["source"] == "precomputed", body
            assert body["modelVersion"] == "ml-v1"
            assert [it["itemId"] for it in body["items"]] == live[user]
        assert (await recommend(session, base, tail))["source"] == "live"

        # the live filters still apply to a stored list
        user, first = head[0], live[head[0]][0]
        mark_seen(client, KEYS, user, [first])
        block_items(client, KEYS, [live[user][1]], user_id=user)
        body = await recommend(session, base, user)
        ids = [it["itemId"] for it in body["items"]]
        assert body["source"] == "precomputed"
        assert first not in ids
        assert live[user][1] not in ids
        assert len(ids) == 10

        # a list older than maxAge is ignored
        old = PrecomputedList("ml-v1", stored.computed_ms - 7_200_000, stored.items, stored.scores)
        client.set(KEYS.precomputed("ml-v1", head[1]), old.to_json())
        assert (await recommend(session, base, head[1]))["source"] == "live"
        # so is one whose content names another version than its key
        other = PrecomputedList("ml-v2", stored.computed_ms, stored.items, stored.scores)
        client.set(KEYS.precomputed("ml-v1", head[1]), other.to_json())
        assert (await recommend(session, base, head[1]))["source"] == "live"

        # promotion: ml-v2 becomes stable; no user gets ml-v1's list from then on
        publish_routing(client, KEYS, routing(art.v2, triton.http_url))
        await wait_ready(session, base, routingSource="redis", loading=[], indexes=[art.v2.index])
        for user in head:
            body = await recommend(session, base, user)
            assert body["modelVersion"] == "ml-v2"
            assert body["source"] == "live", body
        # until the Job writes ml-v2's own lists
        v2_cfg = {**cfg, "routing": routing(art.v2, triton.http_url)}
        summary = await run_precompute(v2_cfg, {"mostActive": 2, "windowSeconds": 3600})
        assert (summary["modelVersion"], summary["written"]) == ("ml-v2", 2)
        served = [await recommend(session, base, user) for user in head]
        assert {b["modelVersion"] for b in served} == {"ml-v2"}
        assert sum(b["source"] == "precomputed" for b in served) == 2
        # the served log says which responses were stored lists
        await asyncio.sleep(0.3)  # the writer flushes in the background
        logged = {
            r.request_id: r.source
            for r in (ServedRecord.from_fields(f) for _, f in client.xrange(KEYS.served))
        }
        assert [logged[b["requestId"]] for b in served] == [b["source"] for b in served]

        text = await metrics_text(session, base)
        for outcome in ("served", "missing", "stale", "other-version"):
            assert metric(text, "recsys_gateway_precomputed_total", outcome=outcome) > 0, outcome
    client.close()


async def test_precompute_for_all_users_walks_the_user_feature_keys(
    art: Artifacts, triton: TritonServer, online: str
) -> None:
    client = redis.Redis.from_url(online)
    cfg = gateway_config(art, triton.http_url, online, precomputed={"maxAge": "1h"})
    raw = client.get(FeatureViewKeys.of(USERS_VIEW).live)
    assert raw is not None
    pointer = LivePointer.from_json(raw)
    users = {
        int(k.decode().rsplit(":", 1)[1])
        for layer in pointer.layers
        for k in client.scan_iter(match=f"{FeatureViewKeys.of(USERS_VIEW).layer(layer)}*")
    }
    summary = await run_precompute(cfg, {"all": True}, top_n=10)
    assert summary["users"] >= len(users) == summary["written"] + summary["skipped"]
    written = {int(k.decode().rsplit(":", 1)[1]) for k in client.scan_iter(
        match=KEYS.precomputed("ml-v1", "*"))}  # fmt: skip
    assert written == users
    client.close()


# --- Batch mode: stored lists only, no Triton ------------------------------------------------


async def test_batch_mode_serves_stored_lists_and_popular_items_without_any_triton(
    art: Artifacts, online: str
) -> None:
    """No Triton runs in this test (the ``triton`` fixture is not asked for): a variant without
    ``triton`` is served from its stored lists alone, and a user without a usable list gets the
    version's popular items, 200 and said so, never an error."""
    client = redis.Redis.from_url(online)
    popular = [
        p["itemId"]
        for p in json.loads((Path(art.v1.artifact[7:]) / "popular_items.json").read_text())
    ]
    cfg = gateway_config(art, "unused", online, precomputed={"maxAge": "1h"})
    del cfg["routing"]["stable"]["triton"]  # Batch mode: the operator renders no address
    listed, without, stale, other = 5, 6, 7, 8
    now_ms = int(time.time() * 1000)
    items = [i for i in range(1, 200) if i not in popular[:30]][:40]  # unlike the popular ones
    scores = [float(40 - n) for n in range(len(items))]
    client.set(
        KEYS.precomputed("ml-v1", listed), PrecomputedList("ml-v1", now_ms, items, scores).to_json()
    )
    client.set(
        KEYS.precomputed("ml-v1", stale),
        PrecomputedList("ml-v1", now_ms - 7_200_000, items, scores).to_json(),
    )
    client.set(
        KEYS.precomputed("ml-v1", other), PrecomputedList("ml-v2", now_ms, items, scores).to_json()
    )
    async with gateway_client(cfg) as (gw, base, session):
        await wait_ready(session, base)
        body = await recommend(session, base, listed)
        assert (body["source"], body["fallback"]) == ("precomputed", None), body
        ids = [it["itemId"] for it in body["items"]]
        assert set(ids) <= set(items)
        assert len(ids) == 10

        for user in (without, stale, other):
            body = await recommend(session, base, user)
            assert (body["source"], body["fallback"]) == ("popular", "no-list"), body
            assert body["modelVersion"] == "ml-v1"
            assert body["timingsMs"]["scoring"] == 0.0
            ids = [it["itemId"] for it in body["items"]]
            assert len(ids) == 10
            assert ids == [p for p in popular if p in ids]  # popularity order, filtered

        # the live filters apply to a stored list; one left too short is not served either
        mark_seen(client, KEYS, listed, items[:35])
        body = await recommend(session, base, listed)
        assert (body["source"], body["fallback"]) == ("popular", "no-list"), body

        # the version counts as reachable: it needs no Triton, so the operator's readiness
        # check waits for its index alone
        for _ in range(50):
            if "ml-v1" in gw.reachable:
                break
            await asyncio.sleep(0.1)
        assert "ml-v1" in gw.reachable

        text = await metrics_text(session, base)
        assert metric(text, "recsys_gateway_fallbacks_total", reason="no-list") == 4
        for outcome in ("served", "missing", "stale", "other-version", "short"):
            assert metric(text, "recsys_gateway_precomputed_total", outcome=outcome) >= 1, outcome
    client.close()


# --- last: this test stops Triton -------------------------------------------------------------


async def test_triton_slow_or_down_falls_back_within_the_deadline(
    art: Artifacts, triton: TritonServer, online: str
) -> None:
    popular = [
        p["itemId"]
        for p in json.loads((Path(art.v1.artifact[7:]) / "popular_items.json").read_text())
    ]
    cfg = gateway_config(art, triton.http_url, online, scoringTimeout="300ms")
    async with gateway_client(cfg) as (_, base, session):
        await wait_ready(session, base)
        assert (await recommend(session, base, 1))["fallback"] is None

        # slow: the server is frozen; the user tower misses the deadline
        os.kill(triton.process.pid, signal.SIGSTOP)
        try:
            slow = [await recommend(session, base, u, k=5) for u in (1, 2)]
        finally:
            os.kill(triton.process.pid, signal.SIGCONT)
        assert [b["fallback"] for b in slow] == ["triton-timeout"] * 2
        for body in slow:
            ids = [it["itemId"] for it in body["items"]]
            assert ids == [p for p in popular if p in ids][:5]  # popularity order

        # thawed: served by the models again
        for _ in range(50):
            if (await recommend(session, base, 3))["fallback"] is None:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("Triton never came back into use")

        # the ranker alone unavailable: retrieval order is served instead
        async with session.post(
            f"http://{triton.http_url}/v2/repository/models/ml-v1.ranker/unload"
        ) as resp:
            assert resp.status == 200
        body = await recommend(session, base, 4, k=5)
        assert body["fallback"] == "triton-error"
        scores = [it["score"] for it in body["items"]]
        assert scores == sorted(scores, reverse=True)
        assert all(-1.0 <= s <= 1.0 for s in scores)  # cosine similarities, not logits

        # down
        triton.stop()
        down = [await recommend(session, base, u, k=5) for u in range(1, 8)]
        assert {b["fallback"] for b in down} <= {"triton-unavailable", "triton-circuit-open"}
        assert down[-1]["fallback"] == "triton-circuit-open"
        assert all(len(b["items"]) == 5 for b in down)
        text = await metrics_text(session, base)
        fallbacks = "recsys_gateway_fallbacks_total"
        assert metric(text, fallbacks, reason="triton-timeout") == 2
        assert metric(text, fallbacks, reason="triton-error") == 1
        assert metric(text, fallbacks, reason="triton-unavailable") >= 1
        assert metric(text, fallbacks, reason="triton-circuit-open") >= 1
