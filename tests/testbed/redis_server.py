"""A real redis-server (Debian's package) on a free port, with no persistence.

It listens on the loopback unless ``start_redis(address=...)`` names another address of this
machine: the real node's pods reach it on their bridge's gateway address (``real_node.py``).
"""

from __future__ import annotations

import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from testbed.processes import ComponentFailed, ProcessGroup, free_port, wait_until


@dataclass
class RedisServer:
    host: str
    port: int
    procs: ProcessGroup
    workdir: Path

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def url_for_db(self, db: int) -> str:
        return f"redis://{self.host}:{self.port}/{db}"

    def stop(self) -> None:
        self.procs.stop_all()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _pong(address: str, port: int) -> bool:
    with socket.create_connection((address, port), timeout=2) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


def start_redis(
    databases: int = 64,
    extra_args: tuple[str, ...] = (),
    address: str = "127.0.0.1",
    port: int | None = None,
) -> RedisServer:
    """``port``: a given one (to bring a stopped server back where its clients look)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ComponentFailed(
            "redis-server is not installed: run `make deps` (it installs Debian's redis-server)"
        )
    workdir = Path(tempfile.mkdtemp(prefix="recsys-redis-"))
    procs = ProcessGroup(workdir)
    port = port or free_port()
    proc = procs.start(
        "redis-server",
        [
            binary,
            "--port",
            str(port),
            "--bind",
            address,
            "--save",
            "",
            "--appendonly",
            "no",
            "--databases",
            str(databases),
            "--dir",
            str(workdir),
            # Protected mode answers only loopback clients of a password-less server; on a pod
            # bridge's address the clients are the pods (and only they reach that address).
            "--protected-mode",
            "yes" if address == "127.0.0.1" else "no",
            *extra_args,
        ],
    )
    try:
        wait_until(proc, lambda: _pong(address, port), 20, "answering PING")
    except BaseException:
        procs.stop_all()
        raise
    return RedisServer(address, port, procs, workdir)
