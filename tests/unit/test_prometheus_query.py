"""The ``prometheus`` provider's pure parts (templates, durations) and how ``query`` reads each
shape of answer, from a local HTTP server that answers as Prometheus' API does.

The server only replays answers; that real Prometheus gives these answers to real queries is
tests/integration/test_prometheus_provider.py's job.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx2 as httpx
import pytest
from aiohttp import web

from recsys_operator.prometheus import (
    PLACEHOLDERS,
    PrometheusError,
    prometheus_duration,
    query,
    render,
)
from testbed.processes import free_port

VALUES = {
    "variant": "canary",
    "modelVersion": "movies-v7",
    "interval": "30s",
    "namespace": "shop",
    "recommender": "movies",
}
FLAGGER_STYLE = (
    'sum(rate(recsys_gateway_requests_total{variant="{{variant}}",code="200"}[{{interval}}]))'
    ' / sum(rate(recsys_gateway_requests_total{variant="{{variant}}"}[{{interval}}])) * 100'
)


def test_every_documented_placeholder_is_given_a_value_in_the_rows_below() -> None:
    assert set(VALUES) == set(PLACEHOLDERS)


@pytest.mark.parametrize(
    ("template", "rendered"),
    [
        (
            FLAGGER_STYLE,
            'sum(rate(recsys_gateway_requests_total{variant="canary",code="200"}[30s]))'
            ' / sum(rate(recsys_gateway_requests_total{variant="canary"}[30s])) * 100',
        ),
        ("{{ modelVersion }}|{{namespace  }}|{{\trecommender}}", "movies-v7|shop|movies"),
        ('x{model_version="{{modelVersion}}"}', 'x{model_version="movies-v7"}'),
        # PromQL's own braces are not placeholders
        ('sum by (variant) (x{a="b"})', 'sum by (variant) (x{a="b"})'),
        ('x{a=~"b{2}"}', 'x{a=~"b{2}"}'),
        ("{{variant}}{{variant}}", "canarycanary"),
        ("", ""),
        ("{ {variant} }", "{ {variant} }"),
    ],
)
def test_render(template: str, rendered: str) -> None:
    assert render(template, VALUES) == rendered


@pytest.mark.parametrize(
    ("template", "named"),
    [
        ('x{v="{{varaint}}"}', "{{varaint}}"),
        ("{{ Variant }}", "{{Variant}}"),
        ("{{}}", "{{}}"),
        ("{{model version}}", "{{model version}}"),
        ("rate(x[{{window}}])", "{{window}}"),
    ],
)
def test_an_unknown_placeholder_is_named(template: str, named: str) -> None:
    with pytest.raises(ValueError, match="unknown placeholder") as err:
        render(template, VALUES)
    assert named in str(err.value)
    assert "known: interval, modelVersion, namespace, recommender, variant" in str(err.value)


def test_a_value_holding_braces_is_not_rendered_again() -> None:
    assert render("{{a}}-{{b}}", {"a": "{{b}}", "b": "x"}) == "{{b}}-x"


@pytest.mark.parametrize(
    ("seconds", "duration"),
    [
        (30, "30s"),
        (300, "5m"),
        (90, "90s"),
        (60, "1m"),
        (1, "1s"),
        (3600, "1h"),
        (5400, "90m"),
        (86_400, "1d"),
        (172_800, "2d"),
        (0.25, "250ms"),
        (1.5, "1500ms"),
        (0.001, "1ms"),
        (29.9996, "30s"),  # float noise from arithmetic rounds to the millisecond
    ],
)
def test_prometheus_duration(seconds: float, duration: str) -> None:
    assert prometheus_duration(seconds) == duration


@pytest.mark.parametrize("seconds", [0, -5, 0.0004, math.inf, math.nan])
def test_prometheus_duration_refuses_what_no_window_can_be(seconds: float) -> None:
    with pytest.raises(ValueError, match="duration"):
        prometheus_duration(seconds)


# --- query: each shape of answer ------------------------------------------------------------


@dataclass
class Replay:
    """A local server answering every request with ``status`` and ``body`` after ``delay``."""

    address: str
    status: int = 200
    body: str = ""
    content_type: str = "application/json"
    delay: float = 0.0
    seen: list[web.Request] = field(default_factory=list)

    def answer(self, status: int, body: Any, content_type: str = "application/json") -> None:
        self.status, self.content_type = status, content_type
        self.body = body if isinstance(body, str) else json.dumps(body)


@pytest.fixture
async def replay() -> AsyncIterator[Replay]:
    port = free_port()
    server = Replay(f"http://127.0.0.1:{port}")

    async def handle(request: web.Request) -> web.Response:
        server.seen.append(request)
        await asyncio.sleep(server.delay)
        return web.Response(
            status=server.status, text=server.body, content_type=server.content_type
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield server
    finally:
        await runner.cleanup()


def ok(result_type: str, result: Any) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": result_type, "result": result}}


def sample(value: str, **labels: str) -> dict[str, Any]:
    return {"metric": labels, "value": [1_700_000_000.123, value]}


@pytest.mark.parametrize(
    ("body", "value"),
    [
        (ok("vector", [sample("99.5")]), 99.5),
        (ok("vector", [sample("3", variant="canary")]), 3.0),
        (ok("scalar", [1_700_000_000.1, "42"]), 42.0),
        (ok("vector", [sample("0")]), 0.0),
        (ok("vector", [sample("+Inf")]), math.inf),  # histogram_quantile past the last bucket
        (ok("vector", [sample("-Inf")]), -math.inf),
        (ok("vector", []), None),  # no data
        (ok("vector", [sample("NaN")]), None),  # 0/0: no requests in the window
        (ok("scalar", [1_700_000_000.1, "NaN"]), None),
        ({**ok("vector", [sample("1")]), "warnings": ["PromQL info: ..."]}, 1.0),
    ],
)
async def test_query_reads_one_number(replay: Replay, body: Any, value: float | None) -> None:
    replay.answer(200, body)
    async with httpx.AsyncClient() as client:
        assert await query(client, replay.address, "up", 2.0) == value


@pytest.mark.parametrize(
    ("status", "body", "content_type", "message"),
    [
        (
            200,
            ok("vector", [sample("1", pod="a"), sample("2", pod="b"), sample("3", pod="c")]),
            "application/json",
            r"^query returned 3 series; aggregate it \(sum/avg\) to one$",
        ),
        (
            400,
            {
                "status": "error",
                "errorType": "bad_data",
                "error": 'invalid parameter "query": 1:10: parse error: unclosed left parenthesis',
            },
            "application/json",
            r"^bad_data: invalid parameter \"query\": 1:10: parse error: unclosed left paren",
        ),
        (
            503,
            {"status": "error", "errorType": "timeout", "error": "query timed out in expression"},
            "application/json",
            "^timeout: query timed out",
        ),
        (
            422,
            {"status": "error", "errorType": "execution", "error": "many-to-many matching"},
            "application/json",
            "^execution: many-to-many matching",
        ),
        (502, "<html>Bad Gateway</html>", "text/html", r"HTTP 502: <html>Bad Gateway</html>"),
        (404, "", "text/plain", "HTTP 404: Not Found"),
        (200, "not json", "text/plain", "HTTP 200: not json"),
        (500, {"status": "success"}, "application/json", "HTTP 500: unexpected answer"),
        (
            200,
            ok("matrix", [{"metric": {}, "values": [[1, "1"], [2, "2"]]}]),
            "application/json",
            "range vector; wrap it in a function such as rate()",
        ),
        (200, ok("string", [1, "hello"]), "application/json", "a string, not a number"),
        (
            200,
            ok("vector", [{"metric": {}, "histogram": [1, {"count": "3"}]}]),
            "application/json",
            "native histogram",
        ),
        (200, ok("vector", [sample("lots")]), "application/json", "unexpected sample value"),
        (200, ok("scalar", "7"), "application/json", "unexpected sample"),
        (200, {"status": "success"}, "application/json", "answer without data"),
    ],
)
async def test_query_errors_say_why(
    replay: Replay, status: int, body: Any, content_type: str, message: str
) -> None:
    replay.answer(status, body, content_type)
    async with httpx.AsyncClient() as client:
        with pytest.raises(PrometheusError, match=message):
            await query(client, replay.address, "up", 2.0)


async def test_query_sends_the_promql_and_a_server_side_timeout(replay: Replay) -> None:
    replay.answer(200, ok("vector", []))
    promql = render(FLAGGER_STYLE, VALUES) + ' + on() group_left vector(1 > bool 0) and "a&b=c"'
    async with httpx.AsyncClient() as client:
        await query(client, replay.address + "/prom/", promql, 2.5)
    (request,) = replay.seen
    assert request.method == "GET"
    assert request.path == "/prom/api/v1/query"  # a path prefix is kept, one slash
    assert dict(request.query) == {"query": promql, "timeout": "2500ms"}


async def test_query_gives_up_after_its_timeout(replay: Replay) -> None:
    replay.answer(200, ok("vector", [sample("1")]))
    replay.delay = 5.0
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with httpx.AsyncClient() as client:
        with pytest.raises(PrometheusError, match=r"no answer within 0.2 s"):
            await query(client, replay.address, "up", 0.2)
    assert loop.time() - started < 1.5


async def test_query_names_a_prometheus_it_cannot_reach() -> None:
    address = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with httpx.AsyncClient() as client:
        with pytest.raises(PrometheusError, match=rf"^{address}/api/v1/query: ConnectError"):
            await query(client, address, "up", 2.0)
