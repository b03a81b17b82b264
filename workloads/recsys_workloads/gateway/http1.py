"""A keep-alive HTTP/1.1 client for the gateway's calls to Triton, on asyncio streams.

Two Triton calls per request are the gateway's hottest I/O, and the gateway is one event loop
on one core: aiohttp's client costs about 0.8 ms of CPU per call on this machine, this one
about 0.3 ms (benchmarks/README.md, "Online serving"), for the one shape of exchange needed
here: a POST with a body to a known ``host:port``, a response framed by ``Content-Length``
(or chunked), connections reused. Anything else (redirects, TLS, proxies, cookies) is out
of scope on purpose: Triton is reached over the cluster network by Service name.

A connection whose exchange did not finish cleanly (error, timeout, cancellation) is closed,
never returned to the pool, so a late response cannot be read as the answer to the next
request. A reused idle connection that the server had closed meanwhile fails before any byte
of the response arrives; that one exchange is retried once on a fresh connection.
"""

from __future__ import annotations

import asyncio
import contextlib

HEADER_END = b"\r\n\r\n"
MAX_HEADER_BYTES = 64 * 1024


class ProtocolError(OSError):
    """The upstream answered something that is not a well-formed HTTP/1.1 response."""


class _StaleConnection(Exception):
    """A pooled connection was closed by the server before answering."""


Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def _request(
    host: str, path: str, body: bytes, content_type: bytes, method: bytes = b"POST"
) -> bytes:
    head = b"%s %s HTTP/1.1\r\nHost: %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n" % (
        method,
        path.encode(),
        host.encode(),
        content_type,
        len(body),
    )
    return head + body


def parse_head(head: bytes) -> tuple[int, int | None, bool, bool]:
    """Status, Content-Length (None when absent), chunked?, keep-alive? of a response head."""
    lines = head.split(b"\r\n")
    status_line = lines[0].split(b" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/1."):
        raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    try:
        status = int(status_line[1])
    except ValueError as exc:
        raise ProtocolError(f"bad status code in {lines[0][:80]!r}") from exc
    length: int | None = None
    chunked = False
    keep_alive = status_line[0] == b"HTTP/1.1"
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        value = value.strip().lower()
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError as exc:
                raise ProtocolError(f"bad Content-Length {value[:40]!r}") from exc
        elif name == b"transfer-encoding":
            chunked = value.endswith(b"chunked")
        elif name == b"connection":
            keep_alive = value == b"keep-alive" or (keep_alive and value != b"close")
    return status, length, chunked, keep_alive


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise ProtocolError(f"bad chunk size {size_line[:40]!r}") from exc
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass  # trailers
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


class KeepAlivePool:
    """Idle connections per ``host:port``, opened on demand, without an upper bound: the
    gateway's concurrency is bounded by its own request rate and deadline."""

    def __init__(self, content_type: str = "application/json") -> None:
        self.content_type = content_type.encode()
        self.idle: dict[str, list[Conn]] = {}
        self.closed = False

    async def _connect(self, endpoint: str) -> Conn:
        host, _, port = endpoint.rpartition(":")
        if not host or not port.isdigit():
            raise ProtocolError(f"endpoint {endpoint!r} is not host:port")
        return await asyncio.open_connection(host, int(port), limit=MAX_HEADER_BYTES)

    async def _exchange(self, conn: Conn, request: bytes, reused: bool) -> tuple[int, bytes, bool]:
        reader, writer = conn
        writer.write(request)
        try:
            head = await reader.readuntil(HEADER_END)
        except asyncio.IncompleteReadError as exc:
            if reused and not exc.partial:
                raise _StaleConnection from exc
            raise
        except asyncio.LimitOverrunError as exc:
            raise ProtocolError("response head too large") from exc
        status, length, chunked, keep_alive = parse_head(head[: -len(HEADER_END)])
        if chunked:
            body = await _read_chunked(reader)
        elif length is not None:
            body = await reader.readexactly(length)
        else:
            body = await reader.read()  # framed by the close
            keep_alive = False
        return status, body, keep_alive

    async def get(self, endpoint: str, path: str) -> tuple[int, bytes]:
        """Status and body of a GET, as ``post``."""
        return await self.post(endpoint, path, b"", b"GET")

    async def post(
        self, endpoint: str, path: str, body: bytes, method: bytes = b"POST"
    ) -> tuple[int, bytes]:
        """Status and body of a POST; transport failures raise ``OSError`` (or
        ``asyncio.IncompleteReadError``), a malformed response ``ProtocolError``."""
        if self.closed:
            raise ProtocolError("the client is closed")
        request = _request(endpoint, path, body, self.content_type, method)
        idle = self.idle.setdefault(endpoint, [])
        for attempt in range(2):
            reused = bool(idle) and attempt == 0
            conn = idle.pop() if reused else await self._connect(endpoint)
            try:
                status, payload, keep_alive = await self._exchange(conn, request, reused)
            except _StaleConnection:
                conn[1].close()
                continue
            except BaseException:
                conn[1].close()  # mid-exchange: never reuse
                raise
            if keep_alive and not self.closed:
                idle.append(conn)
            else:
                conn[1].close()
            return status, payload
        raise ProtocolError(f"{endpoint} closed the connection before answering")

    async def close(self) -> None:
        self.closed = True
        writers = [w for conns in self.idle.values() for _, w in conns]
        self.idle.clear()
        for w in writers:
            w.close()
        for w in writers:
            with contextlib.suppress(OSError):
                await w.wait_closed()
