"""Pipelined bulk writes to Redis with commands built by Arrow, not by Python loops.

Why not redis-py's pipeline: it packs every command in Python (~10^5 commands/s per core),
so the client, not Redis, becomes the bottleneck long before the server's ceiling. Here a
whole batch of ``HSET``/``PEXPIREAT`` commands is built as one Arrow binary column
(``binary_join_element_wise`` over the RESP pieces), whose data buffer *is* the wire bytes of
the batch, and is written to the socket in one ``sendall``. A reader thread drains replies as
they come and only counts them: every reply to these commands is a single line (``:N`` or
``-ERR``), so counting newlines counts replies, and an error line is kept for the message.
The pipeline is non-transactional: Redis interleaves other clients (the gateway's reads)
between our commands, so readers are never blocked for long. A sender thread writes batch k
while the caller builds batch k+1 (Arrow and socket writes both release the GIL), so Redis
never idles while the client encodes.

On a Redis Cluster (:class:`NodeWriters`) the writer computes each key's slot (redis-py's
``key_slot``, the cluster's own CRC16 and hash-tag rule), looks up the primary that owns it in
the slot map the cluster client discovered, and sends each node its own pipeline over its own
raw connection, so the nodes are written in parallel. A slot that moves during a run answers
``MOVED``: the run fails as transient and its rerun reads the new map (it writes a fresh layer,
which no reader sees before the pointer names it, so nothing half-written is ever served).
"""

from __future__ import annotations

import contextlib
import queue
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import redis
import redis.cluster
from redis.connection import parse_url
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from recsys_contract.keyspace import TS_FIELD, feature_field
from recsys_workloads.runtime import BadInputError, TransientError

CRLF = b"\r\n"
_BIN = pa.binary()


def _text(array: pa.Array) -> pa.Array:
    return pc.cast(pc.cast(array, pa.string()), _BIN)


def bulk_strings(values: pa.Array) -> pa.Array:
    """``$<len>\\r\\n<value>\\r\\n`` per value (RESP bulk strings); null stays null."""
    return pc.binary_join_element_wise(
        b"$", _text(pc.binary_length(values)), CRLF, values, CRLF, b""
    )


def _constant_bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def hset_commands(
    keys: pa.Array,
    timestamps_us: pa.Array,
    values: Sequence[pa.Array],
    expire_at_ms: pa.Array | None,
) -> tuple[memoryview, int]:
    """The RESP bytes of one batch and how many replies they will produce.

    Per entity: ``HSET key t <ts> 0 <v0> 1 <v1> ...`` (null values leave their field out),
    followed by ``PEXPIREAT key <ms>`` when ``expire_at_ms`` is given.
    """
    rows = len(keys)
    key_bulk = bulk_strings(keys.cast(_BIN))
    pieces: list[Any] = []
    nulls = [v.null_count > 0 for v in values]
    if any(nulls):
        present = np.full(rows, 2 + 2 * (1 + len(values)), dtype=np.int64)
        for value, has_null in zip(values, nulls, strict=True):
            if has_null:
                present -= 2 * np.asarray(
                    pc.is_null(value).to_numpy(zero_copy_only=False), np.int64
                )
        header: Any = pc.binary_join_element_wise(
            b"*", _text(pa.array(present)), b"\r\n$4\r\nHSET\r\n", b""
        )
    else:
        header = b"*%d\r\n$4\r\nHSET\r\n" % (2 + 2 * (1 + len(values)))
    pieces += [header, key_bulk, _constant_bulk(TS_FIELD), bulk_strings(_text(timestamps_us))]
    for index, value in enumerate(values):
        pair = pc.binary_join_element_wise(
            _constant_bulk(feature_field(index)), bulk_strings(value), b""
        )
        pieces.append(pc.fill_null(pair, b"") if value.null_count else pair)
    replies = rows
    if expire_at_ms is not None:
        pieces += [b"*3\r\n$9\r\nPEXPIREAT\r\n", key_bulk, bulk_strings(_text(expire_at_ms))]
        replies += rows
    joined = pc.binary_join_element_wise(*pieces, b"")
    return wire_bytes(joined), replies


def key_commands(command: bytes, keys: pa.Array, args: Sequence[bytes] = ()) -> memoryview:
    """``<command> key <args...>`` for every key (e.g. ``PEXPIRE k 60000 LT``, ``UNLINK k``)."""
    head = b"*%d\r\n%s" % (2 + len(args), _constant_bulk(command))
    tail = b"".join(_constant_bulk(a) for a in args)
    return wire_bytes(pc.binary_join_element_wise(head, bulk_strings(keys.cast(_BIN)), tail, b""))


def wire_bytes(joined: pa.Array) -> memoryview:
    """The concatenated values of a binary array, without copying."""
    if isinstance(joined, pa.ChunkedArray):
        joined = joined.combine_chunks()
    if len(joined) == 0:
        return memoryview(b"")
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int32)
    start, end = offsets[joined.offset], offsets[joined.offset + len(joined)]
    return memoryview(joined.buffers()[2])[start:end]


class _ReplyCounter(threading.Thread):
    """Drains the socket, counting single-line replies and keeping the first error line."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(name="resp-replies", daemon=True)
        self.sock = sock
        self.count = 0
        self.first_error: str | None = None
        self.failure: BaseException | None = None
        self.stop = False
        self.changed = threading.Condition()
        self._line_start = True
        self._error_tail = b""

    def run(self) -> None:
        try:
            while not self.stop:
                try:
                    chunk = self.sock.recv(1 << 20)
                except TimeoutError:
                    continue
                if not chunk:
                    raise ConnectionError("Redis closed the connection")
                self._scan_errors(chunk)
                with self.changed:
                    self.count += chunk.count(b"\n")
                    self.changed.notify_all()
        except BaseException as exc:
            with self.changed:
                self.failure = exc
                self.changed.notify_all()

    def _scan_errors(self, chunk: bytes) -> None:
        if self._error_tail:
            self._error_tail += chunk
            if b"\r\n" in self._error_tail:
                self._keep_error(self._error_tail)
        elif self.first_error is None and (
            (self._line_start and chunk[:1] == b"-") or b"\n-" in chunk
        ):
            at = 0 if self._line_start and chunk[:1] == b"-" else chunk.index(b"\n-") + 1
            self._error_tail = chunk[at:]
            if b"\r\n" in self._error_tail:
                self._keep_error(self._error_tail)
        self._line_start = chunk.endswith(b"\n")

    def _keep_error(self, data: bytes) -> None:
        self.first_error = data[1 : data.index(b"\r\n")].decode(errors="replace")
        self._error_tail = b""


class _Sender(threading.Thread):
    """Writes queued payloads to the socket in order; the bounded queue is the backpressure."""

    def __init__(self, sock: socket.socket, depth: int) -> None:
        super().__init__(name="resp-sender", daemon=True)
        self.sock = sock
        self.pending: queue.Queue[memoryview | None] = queue.Queue(maxsize=depth)
        self.failure: OSError | None = None

    def run(self) -> None:
        while True:
            payload = self.pending.get()
            try:
                if payload is None:
                    return
                if self.failure is None:
                    self.sock.sendall(payload)
            except OSError as exc:
                self.failure = exc
            finally:
                self.pending.task_done()


class BulkWriter:
    """One raw connection for fire-and-count pipelines; use as a context manager."""

    def __init__(
        self,
        url: str,
        password: str | None,
        timeout: float = 10.0,
        address: tuple[str, int] | None = None,
    ) -> None:
        """``address``: the node to connect to instead of the URL's (a cluster's primary); the
        URL still gives the scheme, the user and the database."""
        options: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        host, port = address or (options.get("host", "127.0.0.1"), int(options.get("port", 6379)))
        self.where = f"{host}:{port}"
        try:
            sock = socket.create_connection((host, port), timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if "connection_class" in options and "SSL" in options["connection_class"].__name__:
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        except OSError as exc:
            raise TransientError(f"Redis at {self.where} is unreachable ({exc})") from exc
        self.sock = sock
        password = password if password is not None else options.get("password")
        username = options.get("username")
        hello: list[list[bytes]] = []
        if password:
            hello.append([b"AUTH", *([username.encode()] if username else []), password.encode()])
        if options.get("db"):
            hello.append([b"SELECT", str(options["db"]).encode()])
        for command in hello:
            self._call(command)
        # Bounds a send to a server that stopped reading; the reply thread just polls again.
        self.sock.settimeout(timeout * 6)
        self.replies = _ReplyCounter(self.sock)
        self.replies.start()
        self.sender = _Sender(self.sock, depth=2)
        self.sender.start()
        self.expected = 0
        self.timeout = timeout

    def _call(self, command: list[bytes]) -> None:
        payload = b"*%d\r\n" % len(command) + b"".join(_constant_bulk(c) for c in command)
        try:
            self.sock.sendall(payload)
            reply = self.sock.recv(4096)
        except OSError as exc:
            raise TransientError(f"Redis at {self.where}: {exc}") from exc
        if reply.startswith(b"-"):
            message = reply[1:].strip().decode(errors="replace")
            if command[0] == b"AUTH" or message.startswith(("NOAUTH", "WRONGPASS")):
                raise BadInputError(
                    f"Redis at {self.where} refused the credentials ({message}); set "
                    "REDIS_PASSWORD to the server's password"
                )
            raise TransientError(f"Redis at {self.where} answered {command[0].decode()}: {message}")

    def send(self, payload: memoryview, replies: int) -> None:
        """Queue ``payload`` for the sender thread (blocks while two batches are queued)."""
        self._check()
        self.expected += replies
        self.sender.pending.put(payload)

    def _check(self) -> None:
        if self.sender.failure is not None:
            raise TransientError(
                f"Redis at {self.where}: write failed ({self.sender.failure})"
            ) from self.sender.failure
        if self.replies.failure is not None:
            raise TransientError(
                f"Redis at {self.where}: connection lost ({self.replies.failure})"
            ) from self.replies.failure
        if self.replies.first_error is not None:
            message = self.replies.first_error
            if message.startswith(("WRONGTYPE", "NOPERM", "NOAUTH")):
                raise BadInputError(f"Redis at {self.where} rejected a write: {message}")
            raise TransientError(f"Redis at {self.where} rejected a write: {message}")

    def wait(self, in_flight: int = 0) -> None:
        """Block until at most ``in_flight`` replies are outstanding (0: all answered)."""
        self.sender.pending.join()
        self._check()
        with self.replies.changed:
            while (
                self.expected - self.replies.count > in_flight
                and self.replies.failure is None
                and self.replies.first_error is None
            ):
                if not self.replies.changed.wait(self.timeout * 6):
                    raise TransientError(
                        f"Redis at {self.where}: no reply for {self.timeout * 6:.0f}s "
                        f"({self.expected - self.replies.count} outstanding)"
                    )
        self._check()

    def close(self) -> None:
        self.replies.stop = True
        self.sender.failure = self.sender.failure or OSError("closed")
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked send or receive
        self.sender.pending.put(None)
        self.sender.join(timeout=5)
        self.replies.join(timeout=5)
        self.sock.close()

    def __enter__(self) -> BulkWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: Builds one node's batch from the row positions routed to it (None: every row).
Batch = Callable[[pa.Array | None], tuple[memoryview, int]]


class NodeWriters:
    """A :class:`BulkWriter` per primary, rows routed by their key's slot; on a single Redis,
    one writer that takes every row. Use as a context manager."""

    def __init__(
        self,
        client: redis.Redis | redis.cluster.RedisCluster,
        url: str,
        password: str | None,
        timeout: float,
    ) -> None:
        self.owner: np.ndarray[Any, np.dtype[np.int64]] | None = None
        self.writers: list[BulkWriter] = []
        try:
            if isinstance(client, redis.cluster.RedisCluster):
                self._open_primaries(client, url, password, timeout)
            else:
                self.writers.append(BulkWriter(url, password, timeout))
        except BaseException:
            self.close()
            raise

    def _open_primaries(
        self, client: redis.cluster.RedisCluster, url: str, password: str | None, timeout: float
    ) -> None:
        primaries = client.get_primaries()  # type: ignore[no-untyped-call]
        index = {node.name: i for i, node in enumerate(primaries)}
        owner = np.empty(REDIS_CLUSTER_HASH_SLOTS, dtype=np.int64)
        try:
            for slot in range(REDIS_CLUSTER_HASH_SLOTS):
                owner[slot] = index[client.nodes_manager.get_node_from_slot(slot).name]
        except (redis.exceptions.SlotNotCoveredError, KeyError) as exc:
            raise TransientError(
                f"the Redis Cluster's slot map is incomplete ({exc}); retry"
            ) from exc
        self.owner = owner
        for node in primaries:
            self.writers.append(BulkWriter(url, password, timeout, (node.host, int(node.port))))

    def route(self, keys: pa.Array) -> Iterator[tuple[BulkWriter, pa.Array | None]]:
        """Each writer with the positions of the ``keys`` its node owns."""
        if self.owner is None:
            yield self.writers[0], None
            return
        slots = np.fromiter((key_slot(k) for k in keys.cast(_BIN).to_pylist()), np.int64, len(keys))
        nodes = self.owner[slots]
        for i, writer in enumerate(self.writers):
            rows = np.flatnonzero(nodes == i)
            if len(rows):
                yield writer, pa.array(rows)

    def send(self, keys: pa.Array, batch: Batch) -> None:
        """Send each node the commands ``batch`` builds from its share of ``keys``' rows."""
        for writer, rows in self.route(keys):
            writer.send(*batch(rows))

    def wait(self) -> None:
        for writer in self.writers:
            writer.wait()

    def close(self) -> None:
        for writer in self.writers:
            writer.close()

    def __enter__(self) -> NodeWriters:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def take(array: pa.Array, rows: pa.Array | None) -> pa.Array:
    """The ``rows`` of ``array`` (all of it when None)."""
    return array if rows is None else array.take(rows)
