"""A TCP proxy on the loopback that holds every byte a client sends for a fixed delay before
passing it on: the operator behind it sees an apiserver that answers each request that much
later (TLS passes through untouched, so the apiserver's certificate still matches 127.0.0.1).
Replies, watch streams included, pass at once."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass, field


@dataclass
class SlowProxy:
    target_host: str
    target_port: int
    delay_s: float
    port: int = 0
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _thread: threading.Thread | None = None
    _server: asyncio.base_events.Server | None = None

    def start(self) -> SlowProxy:
        ready = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._connection, "127.0.0.1", 0)
            )
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, daemon=True, name="slow-proxy")
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the slow proxy did not start")
        return self

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        if self._thread is not None:
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    async def _connection(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            client_w.close()
            return
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def read_client() -> None:
            while data := await client_r.read(65536):
                queue.put_nowait((time.monotonic() + self.delay_s, data))
            queue.put_nowait((time.monotonic() + self.delay_s, b""))

        async def send_late() -> None:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                if not data:
                    server_w.write_eof()
                    return
                server_w.write(data)
                await server_w.drain()

        async def pass_replies() -> None:
            while data := await server_r.read(65536):
                client_w.write(data)
                await client_w.drain()

        replies = asyncio.create_task(pass_replies())
        tasks = [asyncio.create_task(read_client()), asyncio.create_task(send_late()), replies]
        pending = set(tasks)
        with contextlib.suppress(Exception):
            # a client's half-close is normal; anything else ending (the server closing, as an
            # apiserver restart does, or an error on either side) ends the connection
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if any(t is replies or t.exception() for t in done):
                    break
        for task in tasks:
            task.cancel()
        for writer in (client_w, server_w):
            writer.close()
