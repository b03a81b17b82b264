"""The ``prometheus`` provider against a real Prometheus scraping a real gateway's /metrics.

The gateway serves stable and a 30 % canary from serving_support's MovieLens artifacts, with no
Triton behind it: every answer is its fallback list, which the gateway counts exactly as a scored
one, and the provider only reads those counters. A few users' seen-sets hold a string instead
of a sorted set, so Redis answers WRONGTYPE and the gateway a 503 labelled with the user's
variant: each variant gets a success rate of its own, known from the answers the test got.

Why the rate figures can be checked exactly: the traffic is sent twice, once before Prometheus
starts (so every series exists from its first sample on) and once more after it has scraped
that; the second round is the only increase inside any window. All series come from one target,
so they share sample times and ``rate`` extrapolates them all by the same factor, which a ratio
of rates cancels (the sent rounds being equal keeps the counters' zero-point limit equal too).
An absolute rate keeps that factor, so it is checked within bounds of the scrape interval.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx2 as httpx
import pytest
import pytest_asyncio
import redis
from serving_support import RECOMMENDER, build_artifacts, gateway_client, gateway_config, routing

from recsys_contract.keyspace import GatewayKeys
from recsys_operator.prometheus import PrometheusError, prometheus_duration, query, render
from recsys_workloads.gateway.config import parse_routing
from recsys_workloads.gateway.routing import choose_variant
from testbed.processes import free_port
from testbed.prometheus_server import PrometheusServer, start_prometheus
from testbed.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.asyncio(loop_scope="module")]

NAMESPACE, NAME = RECOMMENDER.split(".")
USERS = range(1, 41)
CANARY_WEIGHT = 30
#: users whose requests fail: more of them on the canary, so the two rates differ
POISONED_STABLE, POISONED_CANARY = 1, 3
#: the analysis window, longer than the whole test: it holds every sample Prometheus took
WINDOW_S = 60
#: Prometheus samples taken of the first round before the second is sent (the rate bounds)
SAMPLES_BEFORE = 3
TIMEOUT_S = 5.0
WAIT_S = 20.0

SUCCESS_RATE = (
    'sum(rate(recsys_gateway_requests_total{variant="{{variant}}",code="200"}[{{interval}}]))'
    ' / sum(rate(recsys_gateway_requests_total{variant="{{variant}}"}[{{interval}}])) * 100'
)


@dataclass
class World:
    prometheus: PrometheusServer
    client: httpx.AsyncClient
    model_versions: dict[str, str]
    #: answers of one round, by variant and HTTP status
    sent: dict[str, Counter[int]]

    def values(self, variant: str, **over: str) -> dict[str, str]:
        return {
            "variant": variant,
            "modelVersion": self.model_versions.get(variant, "none"),
            "interval": prometheus_duration(WINDOW_S),
            "namespace": NAMESPACE,
            "recommender": NAME,
            **over,
        }

    async def ask(self, template: str, variant: str = "canary") -> float | None:
        promql = render(template, self.values(variant))
        return await query(self.client, self.prometheus.address, promql, TIMEOUT_S)


async def until(what: str, check: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``check`` until it is true, for at most WAIT_S."""
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not {what} within {WAIT_S:.0f} s")
        await asyncio.sleep(0.2)


Answer = tuple[int, int, dict[str, Any]]


async def one_round(session: aiohttp.ClientSession, base: str) -> list[Answer]:
    """Every user asks once; (user, HTTP status, body) in order."""
    answers = []
    for user in USERS:
        async with session.get(f"{base}/v1/recommendations?user_id={user}&k=5") as resp:
            body = await resp.json()
            answers.append((user, resp.status, body))
    return answers


@pytest.fixture(scope="module")
def redis_db(redis_server: RedisServer) -> str:
    """Database 0 of the session's Redis: the per-test ``redis_url`` databases start at 1."""
    url = redis_server.url_for_db(0)
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory, redis_db: str) -> AsyncIterator[World]:
    art = build_artifacts(tmp_path_factory.mktemp("prometheus"), hnsw=False)
    nowhere = f"127.0.0.1:{free_port()}"  # no Triton: every answer is the fallback list
    table = routing(art.v1, nowhere, art.v2, CANARY_WEIGHT)
    parsed = parse_routing(table)
    variant_of = {user: choose_variant(parsed, user) for user in USERS}
    poisoned = [u for u in USERS if variant_of[u] == "stable"][:POISONED_STABLE] + [
        u for u in USERS if variant_of[u] == "canary"
    ][:POISONED_CANARY]
    keys = GatewayKeys.of(RECOMMENDER)
    store = redis.Redis.from_url(redis_db)
    for user in poisoned:
        store.set(keys.seen(user), "not a sorted set")
    store.close()

    cfg = gateway_config(art, nowhere, redis_db, routing=table)
    async with gateway_client(cfg) as (_gateway, base, session):
        # ready, and the canary's index loaded too: until then the gateway serves canary users
        # from the stable (by design), which would move a request from one variant to the other
        for _ in range(600):
            async with session.get(f"{base}/readyz") as resp:
                body = await resp.json()
                if resp.status == 200 and not body.get("loading") and len(body["indexes"]) == 2:
                    break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"the gateway never loaded both indexes: {body}")

        first = await one_round(session, base)
        sent: dict[str, Counter[int]] = {"stable": Counter(), "canary": Counter()}
        for user, status, body in first:
            sent[variant_of[user]][status] += 1
            assert status == (503 if user in poisoned else 200), body
            if status == 200:
                assert body["variant"] == variant_of[user]
                assert body["fallback"] is not None
        total = len(first)

        target = base.removeprefix("http://")
        prometheus = await asyncio.to_thread(
            start_prometheus, [target], 1.0, 30, {"namespace": NAMESPACE, "recommender": NAME}
        )
        client = httpx.AsyncClient()
        w = World(prometheus, client, {"stable": art.v1.name, "canary": art.v2.name}, sent)
        try:

            async def scraped(samples: int, requests: int) -> bool:
                got = await w.ask(
                    f"count_over_time(recsys_gateway_redis_up[{WINDOW_S}s])"
                    f" >= {samples} and on() sum(recsys_gateway_requests_total) == {requests}"
                )
                return got is not None

            await until(f"scraped {SAMPLES_BEFORE} times", lambda: scraped(SAMPLES_BEFORE, total))
            second = await one_round(session, base)
            assert [(u, s) for u, s, _ in second] == [(u, s) for u, s, _ in first]
            await until("scraped after the second round", lambda: scraped(1, 2 * total))
            yield w
        finally:
            await client.aclose()
            await asyncio.to_thread(prometheus.stop)


def success_rate(counts: Counter[int]) -> float:
    return 100 * counts[200] / sum(counts.values())


@pytest.mark.parametrize("variant", ["stable", "canary"])
async def test_success_rate_per_variant_is_what_the_gateway_answered(
    world: World, variant: str
) -> None:
    assert world.sent[variant][503] > 0
    got = await world.ask(SUCCESS_RATE, variant)
    assert got == pytest.approx(success_rate(world.sent[variant]), rel=1e-9)
    assert success_rate(world.sent["stable"]) != success_rate(world.sent["canary"])


COUNT_BY_VERSION = (
    'sum(recsys_gateway_requests_total{variant="{{variant}}",model_version="{{modelVersion}}",'
    'namespace="{{namespace}}",recommender="{{recommender}}"})'
)
SHARE = (
    'sum(rate(recsys_gateway_requests_total{variant="{{variant}}"}[{{interval}}]))'
    ' / sum(rate(recsys_gateway_requests_total{variant=~"stable|canary"}[{{interval}}])) * 100'
)


@pytest.mark.parametrize("variant", ["stable", "canary"])
@pytest.mark.parametrize(
    ("template", "expected"),
    [
        # both rounds, labelled with the variant's ModelVersion and the target's labels
        (COUNT_BY_VERSION, lambda sent, v: 2 * sum(sent[v].values())),
        ("scalar(" + COUNT_BY_VERSION + ")", lambda sent, v: 2 * sum(sent[v].values())),
        (
            COUNT_BY_VERSION.replace("{{variant}}", "{{ variant }}").replace(
                '"})', '",code="503"})'
            ),
            lambda sent, v: 2 * sent[v][503],
        ),
        # the variant's share of the requests in the window (near the canary weight)
        (
            SHARE,
            lambda sent, v: (
                100 * sum(sent[v].values()) / sum(sum(c.values()) for c in sent.values())
            ),
        ),
    ],
)
async def test_exact_figures(
    world: World,
    template: str,
    expected: Callable[[dict[str, Counter[int]], str], float],
    variant: str,
) -> None:
    assert await world.ask(template, variant) == pytest.approx(expected(world.sent, variant))


@pytest.mark.parametrize("variant", ["stable", "canary"])
async def test_request_rate_is_one_rounds_requests_within_the_scrape_granularity(
    world: World, variant: str
) -> None:
    template = 'sum(rate(recsys_gateway_requests_total{variant="{{variant}}"}[{{interval}}]))'
    got = await world.ask(template, variant)
    assert got is not None
    sent = sum(world.sent[variant].values())
    # rate() extrapolates the increase it saw over at least SAMPLES_BEFORE scrape intervals by at
    # most 1.6 intervals (half of one at the start, up to 1.1 at the end)
    low, high = sent / WINDOW_S, sent / WINDOW_S * (SAMPLES_BEFORE + 1.6) / SAMPLES_BEFORE
    assert low <= got <= high


@pytest.mark.parametrize(
    "template",
    [
        # a ModelVersion no gateway served
        COUNT_BY_VERSION.replace("{{modelVersion}}", "movies-v0"),
        # a variant with no series: sum() of nothing, and nothing divided by nothing
        SUCCESS_RATE.replace("{{variant}}", "shadow"),
        'sum(rate(recsys_gateway_requests_total{namespace="elsewhere"}[{{interval}}]))',
        # NaN: a scalar 0/0 and a one-sample vector of it
        "0 / 0",
        "sum(recsys_gateway_canary_weight) * 0 / 0",
    ],
)
async def test_no_data_is_none(world: World, template: str) -> None:
    assert await world.ask(template) is None


@pytest.mark.parametrize(
    ("template", "message"),
    [
        (
            'rate(recsys_gateway_requests_total{variant="{{variant}}"}[{{interval}}])',
            r"^query returned 2 series; aggregate it \(sum/avg\) to one$",
        ),
        ("recsys_gateway_requests_total", r"^query returned 4 series; aggregate it"),
        ("recsys_gateway_requests_total[{{interval}}]", "returned a range vector"),
        ('"a string"', "returned a string, not a number"),
    ],
)
async def test_what_is_not_one_number_is_refused(world: World, template: str, message: str) -> None:
    with pytest.raises(PrometheusError, match=message):
        await world.ask(template)


@pytest.mark.parametrize(
    ("promql", "message"),
    [
        ("sum(rate(recsys_gateway_requests_total[1m])", r"^bad_data: .*unclosed left parenthesis"),
        (
            "rate(recsys_gateway_requests_total)",
            r'^bad_data: .*expected type range vector in call to function "rate"',
        ),
        (
            "sum(no_such_function(up))",
            r'^bad_data: .*unknown function with name "no_such_function"',
        ),
        (
            "recsys_gateway_requests_total / on() recsys_gateway_requests_total",
            r"^execution: .*many-to-many matching not allowed",
        ),
    ],
)
async def test_prometheus_refusals_carry_its_message(
    world: World, promql: str, message: str
) -> None:
    with pytest.raises(PrometheusError, match=message):
        await query(world.client, world.prometheus.address, promql, TIMEOUT_S)


async def test_an_unreachable_prometheus_is_an_error_not_no_data(world: World) -> None:
    address = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(PrometheusError, match="ConnectError"):
        await query(world.client, address, "up", TIMEOUT_S)


async def test_prometheus_listens_on_the_loopback_with_its_data_in_its_own_tmp_dir(
    world: World,
) -> None:
    server = world.prometheus
    resp = await world.client.get(f"{server.address}/api/v1/status/flags", timeout=TIMEOUT_S)
    flags = resp.json()["data"]
    assert flags["web.listen-address"] == f"127.0.0.1:{server.port}"
    assert Path(flags["storage.tsdb.path"]) == server.workdir / "data"
    assert server.workdir.name.startswith("recsys-prometheus-")
