"""The gateway's keep-alive HTTP/1.1 client against real servers on loopback: an aiohttp
application for the ordinary exchanges, raw asyncio servers for the awkward ones."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from recsys_workloads.gateway.http1 import KeepAlivePool, ProtocolError, parse_head


async def _serve_app(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"127.0.0.1:{port}"


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve_raw(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"127.0.0.1:{port}"


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return await reader.readexactly(length)


@pytest.fixture
async def echo() -> AsyncIterator[tuple[str, list[str]]]:
    """An aiohttp server echoing the body, with the peer port of every request it served."""
    peers: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        peers.append(str(request.transport.get_extra_info("peername")[1]))  # type: ignore[union-attr]
        body = await request.read()
        if request.path == "/fail":
            return web.Response(status=400, body=b"bad input")
        return web.Response(body=body[::-1], content_type=request.content_type)

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner, endpoint = await _serve_app(app)
    yield endpoint, peers
    await runner.cleanup()


async def test_posts_reuse_one_connection(echo: tuple[str, list[str]]) -> None:
    endpoint, peers = echo
    pool = KeepAlivePool()
    for n in range(5):
        status, body = await pool.post(endpoint, "/v2/models/m/infer", f"abc{n}".encode())
        assert (status, body) == (200, f"{n}cba".encode())
    assert len(set(peers)) == 1  # kept alive
    status, body = await pool.post(endpoint, "/fail", b"x")
    assert (status, body) == (400, b"bad input")
    await pool.close()
    with pytest.raises(ProtocolError, match="closed"):
        await pool.post(endpoint, "/x", b"")


async def test_concurrent_posts_open_as_many_connections_as_needed(
    echo: tuple[str, list[str]],
) -> None:
    endpoint, peers = echo
    pool = KeepAlivePool()
    results = await asyncio.gather(*(pool.post(endpoint, "/p", b"%d" % n) for n in range(10, 18)))
    assert [b for _, b in results] == [(b"%d" % n)[::-1] for n in range(10, 18)]
    assert len(pool.idle[endpoint]) == len(set(peers)) > 1
    await pool.close()


async def test_chunked_and_close_framed_responses() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n"
        )
        await _read_request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")
        writer.close()

    server, endpoint = await _serve_raw(handler)
    pool = KeepAlivePool()
    assert await pool.post(endpoint, "/a", b"1") == (200, b"hello world")
    assert await pool.post(endpoint, "/b", b"2") == (200, b"until the end")
    assert pool.idle[endpoint] == []  # the close-framed connection is not kept
    await pool.close()
    server.close()


async def test_a_connection_the_server_closed_while_idle_is_replaced() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()  # says keep-alive, then closes: a server's idle timeout

    server, endpoint = await _serve_raw(handler)
    pool = KeepAlivePool()
    assert await pool.post(endpoint, "/a", b"") == (200, b"ok")
    await asyncio.sleep(0.05)
    assert await pool.post(endpoint, "/a", b"") == (200, b"ok")
    assert connections == 2
    await pool.close()
    server.close()


async def test_a_timed_out_exchange_never_answers_the_next_request() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                body = await _read_request(reader)
            except asyncio.IncompleteReadError:
                return
            if body == b"slow":
                await asyncio.sleep(0.3)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()

    server, endpoint = await _serve_raw(handler)
    pool = KeepAlivePool()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await pool.post(endpoint, "/a", b"slow")
    assert pool.idle.get(endpoint) == []
    assert await pool.post(endpoint, "/a", b"fast") == (200, b"fast")
    await asyncio.sleep(0.4)  # the late answer arrives on the abandoned connection only
    assert await pool.post(endpoint, "/a", b"next") == (200, b"next")
    await pool.close()
    server.close()


async def test_garbage_and_refusal_raise_transport_errors() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        writer.close()

    server, endpoint = await _serve_raw(handler)
    pool = KeepAlivePool()
    with pytest.raises(ProtocolError, match="status line"):
        await pool.post(endpoint, "/a", b"")
    server.close()
    await server.wait_closed()
    with pytest.raises(ConnectionRefusedError):
        await pool.post(endpoint, "/a", b"")
    with pytest.raises(ProtocolError, match="host:port"):
        await pool.post("no-port", "/a", b"")
    await pool.close()


def test_parse_head() -> None:
    assert parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 12") == (200, 12, False, True)
    assert parse_head(b"HTTP/1.1 503 Busy\r\nConnection: close") == (503, None, False, False)
    assert parse_head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive") == (200, None, False, True)
    assert parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked")[2] is True
    with pytest.raises(ProtocolError, match="Content-Length"):
        parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: many")
    with pytest.raises(ProtocolError, match="status code"):
        parse_head(b"HTTP/1.1 OK")
