"""A real redis-server (Debian's package) on a free port, with no persistence, and a real
Redis Cluster of such servers (``start_redis_cluster``), made by ``redis-cli --cluster create``.

It listens on the loopback unless ``start_redis(address=...)`` names another address of this
machine: the real node's pods reach it on their bridge's gateway address (``real_node.py``).
A cluster has only database 0, so tests sharing one isolate by key prefix.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS

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


def _binary(name: str) -> str:
    binary = shutil.which(name)
    if binary is None:
        raise ComponentFailed(
            f"{name} is not installed: run `make deps` (it installs Debian's redis-server)"
        )
    return binary


def _server_argv(port: int, address: str, workdir: Path, extra_args: tuple[str, ...]) -> list[str]:
    return [
        _binary("redis-server"),
        "--port",
        str(port),
        "--bind",
        address,
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
        # Protected mode answers only loopback clients of a password-less server; on a pod
        # bridge's address the clients are the pods (and only they reach that address).
        "--protected-mode",
        "yes" if address == "127.0.0.1" else "no",
        *extra_args,
    ]


def start_redis(
    databases: int = 64,
    extra_args: tuple[str, ...] = (),
    address: str = "127.0.0.1",
    port: int | None = None,
) -> RedisServer:
    """``port``: a given one (to bring a stopped server back where its clients look)."""
    workdir = Path(tempfile.mkdtemp(prefix="recsys-redis-"))
    procs = ProcessGroup(workdir)
    port = port or free_port()
    argv = _server_argv(port, address, workdir, ("--databases", str(databases), *extra_args))
    proc = procs.start("redis-server", argv)
    try:
        wait_until(proc, lambda: _pong(address, port), 20, "answering PING")
    except BaseException:
        procs.stop_all()
        raise
    return RedisServer(address, port, procs, workdir)


@dataclass
class RedisCluster:
    """A running Redis Cluster: its primaries' and replicas' ports on 127.0.0.1."""

    primaries: list[int]
    replicas: list[int]
    procs: ProcessGroup
    workdir: Path
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        """A seed node's URL, as a user writes it with ``mode: Cluster``."""
        return f"redis://{self.host}:{self.primaries[0]}/0"

    def primary_clients(self) -> list[redis.Redis]:
        """A plain client per primary, to look at what each node holds."""
        return [redis.Redis(self.host, port) for port in self.primaries]

    def stop(self) -> None:
        self.procs.stop_all()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _cluster_ok(host: str, port: int) -> bool:
    with redis.Redis(host, port, socket_timeout=2, decode_responses=True) as client:
        info = client.execute_command("CLUSTER INFO")
    return isinstance(info, dict) and info.get("cluster_state") == "ok"


def start_redis_cluster(masters: int = 3, replicas: int = 1) -> RedisCluster:
    """``masters`` primaries with ``replicas`` replicas each, slots spread by ``redis-cli``
    (by hand below three primaries, which it refuses); returns once every node says
    ``cluster_state:ok``."""
    workdir = Path(tempfile.mkdtemp(prefix="recsys-redis-cluster-"))
    procs = ProcessGroup(workdir)
    ports = [_node_port() for _ in range(masters * (1 + replicas))]
    try:
        for port in ports:
            node_dir = workdir / str(port)
            node_dir.mkdir()
            cluster_args = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
            bus = ("--cluster-node-timeout", "5000")
            proc = procs.start(
                f"redis-{port}", _server_argv(port, "127.0.0.1", node_dir, cluster_args + bus)
            )
            wait_until(proc, lambda p=port: _pong("127.0.0.1", p), 20, "answering PING")
        if masters >= 3:
            _create(ports, replicas)
        elif replicas == 0:
            _assign(ports)
        else:
            raise ComponentFailed("replicas need three primaries (redis-cli --cluster create)")
        deadline = time.monotonic() + 30
        while not all(_cluster_ok("127.0.0.1", port) for port in ports):
            if time.monotonic() > deadline:
                raise ComponentFailed("the Redis Cluster did not reach cluster_state:ok in 30s")
            time.sleep(0.2)
    except BaseException:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return RedisCluster(ports[:masters], ports[masters:], procs, workdir)


def _node_port() -> int:
    """A free port whose cluster bus port (``port + 10000``, what ``redis-cli`` assumes when
    it joins the nodes) is free too."""
    for _ in range(100):
        port = free_port()
        if port + 10000 < 65536 and _free(port + 10000):
            return port
    raise ComponentFailed("no free port pair (port, port + 10000) on the loopback")


def _free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _assign(ports: list[int]) -> None:
    """What ``redis-cli --cluster create`` does for fewer than the three primaries it insists
    on (a benchmark's smaller sizes): an equal share of the slots each, then the handshake."""
    share = -(-REDIS_CLUSTER_HASH_SLOTS // len(ports))
    for i, port in enumerate(ports):
        with redis.Redis("127.0.0.1", port) as client:
            client.execute_command("CLUSTER SET-CONFIG-EPOCH", i + 1)
            last = min((i + 1) * share, REDIS_CLUSTER_HASH_SLOTS) - 1
            client.execute_command("CLUSTER ADDSLOTSRANGE", i * share, last)
            if i:
                client.execute_command("CLUSTER MEET", "127.0.0.1", ports[0])


def _create(ports: list[int], replicas: int) -> None:
    """``redis-cli --cluster create``: the first ports become primaries, the rest replicas."""
    argv = [_binary("redis-cli"), "--cluster", "create"]
    argv += [f"127.0.0.1:{port}" for port in ports]
    argv += ["--cluster-replicas", str(replicas), "--cluster-yes"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise ComponentFailed(f"redis-cli --cluster create failed: {done.stdout}{done.stderr}")
