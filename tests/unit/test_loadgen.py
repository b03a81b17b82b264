"""The Go load generator of the serving benchmark (benchmarks/loadgen), built and run for real
against a small HTTP server in this process that answers like the gateway.

The server's answer is chosen by the user id of each request (``<mode>-<n>``), so one run can
mix successes, fallbacks, server errors and bad bodies, and every sample can be traced back to
the user the Python side asked for.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from testbed.processes import free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import loadgen

SLOW_S = 0.05
HANG_S = 1.0


class GatewayLike(BaseHTTPRequestHandler):
    """``GET /r?user_id=<mode>-<n>``; ``ok``/``fb`` answer like the gateway (``fb``: with a
    fallback reason), echoing ``n`` as a timing; ``slow`` and ``hang`` do so late; ``fail`` is
    a 500 with a body that is not JSON; ``badjson`` and ``notimings`` are malformed 200s;
    ``close`` answers with ``Connection: close``, ``drop`` closes the connection unannounced
    after answering (as a server does with an idle keep-alive connection)."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the gateway
    wbufsize = 1 << 16  # headers and body in one segment: no Nagle / delayed-ACK stall
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        match = re.fullmatch(r"/r\?user_id=([a-z]+)-(\d+)", self.path)
        assert match, self.path
        mode, n = match[1], int(match[2])
        self.server.peers.add(self.client_address)  # type: ignore[attr-defined]
        if mode == "slow":
            time.sleep(SLOW_S)
        elif mode == "hang":
            time.sleep(HANG_S)
        body: dict[str, Any] = {
            "items": [{"itemId": i, "score": 1.0 / (i + 1)} for i in range(20)],
            "fallback": "popular" if mode == "fb" else None,
            "timingsMs": {"total": 1.25, "n": float(n)},
        }
        if mode == "fail":
            self.answer(500, b"internal error: not JSON")
        elif mode == "badjson":
            self.answer(200, b"{not json")
        elif mode == "notimings":
            self.answer(200, json.dumps({"fallback": None}).encode())
        else:
            self.answer(200, json.dumps(body).encode(), close=mode == "close")
        if mode == "drop":
            self.close_connection = True

    def answer(self, status: int, data: bytes, close: bool = False) -> None:
        self.send_response(status)
        if close:
            self.send_header("Connection", "close")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), GatewayLike)
        self.peers: set[tuple[str, int]] = set()

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that gave up: expected
            super().handle_error(request, client_address)

    @property
    def template(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/r?user_id={{user}}"


@pytest.fixture(scope="module")
def binary() -> Path:
    return loadgen.build()


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


def test_every_request_is_reported_in_order_with_the_body_fields(
    binary: Path, server: Server
) -> None:
    modes = ["ok", "fb", "fail", "badjson", "notimings"]
    users = [f"{modes[i % len(modes)]}-{i}" for i in range(50)]
    run = loadgen.run(server.template, users, rate=100, duration=0.5, binary=binary)

    assert len(run.samples) == 50
    for i, s in enumerate(run.samples):
        mode = modes[i % len(modes)]
        assert s.send_lag_ms >= 0
        assert s.latency_ms >= s.send_lag_ms
        if mode in ("ok", "fb"):
            assert s.ok, s
            assert s.status == 200
            assert s.stages == {"total": 1.25, "n": float(i)}  # the i-th user, echoed
            assert s.fallback is (mode == "fb")
        elif mode == "fail":  # a server error: counted, its body not parsed
            assert (s.status, s.ok, s.error, s.stages, s.fallback) == (500, False, None, {}, False)
        else:
            assert s.status == 200
            assert not s.ok
            assert s.error is not None
            assert ("not JSON" if mode == "badjson" else "no timingsMs") in s.error
    assert run.cpu_seconds > 0


def test_latency_runs_from_the_scheduled_time(binary: Path, server: Server) -> None:
    """One connection, a 50 ms server and a request every 10 ms: request k cannot finish before
    (k+1) x 50 ms, so from its due time (k x 10 ms) it takes at least 50 + 40k ms. Measured
    from the actual send (coordinated omission) every request would look like 50 ms."""
    users = [f"slow-{i}" for i in range(10)]
    run = loadgen.run(server.template, users, rate=100, duration=0.1, max_conns=1, binary=binary)

    assert [s.status for s in run.samples] == [200] * 10
    for k, s in enumerate(run.samples):
        assert s.latency_ms >= SLOW_S * 1000 + 40 * k, (k, s)
    assert len(server.peers) == 1  # one kept-alive connection for all ten


def test_a_refused_connection_is_an_error_without_status(binary: Path) -> None:
    template = f"http://127.0.0.1:{free_port()}/r?user_id={{user}}"
    run = loadgen.run(template, ["ok-1", "ok-2", "ok-3"], rate=30, duration=0.1, binary=binary)

    assert [s.status for s in run.samples] == [0, 0, 0]
    for s in run.samples:
        assert not s.ok
        assert s.error is not None
        assert "connection refused" in s.error


def test_a_request_past_its_timeout_is_an_error_without_status(
    binary: Path, server: Server
) -> None:
    run = loadgen.run(
        server.template, ["hang-1", "ok-2"], rate=10, duration=0.2, timeout_s=0.2, binary=binary
    )

    hung, fine = run.samples
    assert hung.status == 0
    assert hung.error is not None
    assert "timed out after 200ms (-timeout)" in hung.error
    assert hung.latency_ms >= 200
    assert fine.ok


@pytest.mark.parametrize("mode", ["close", "drop"])
def test_a_connection_the_server_closes_is_replaced(
    binary: Path, server: Server, mode: str
) -> None:
    """``close`` announces it; ``drop`` does not, so the next request on that connection fails
    unanswered and is sent again on a new one."""
    users = [f"{mode}-{i}" for i in range(4)]
    run = loadgen.run(server.template, users, rate=20, duration=0.2, max_conns=1, binary=binary)

    assert [s.ok for s in run.samples] == [True] * 4
    assert [s.stages["n"] for s in run.samples] == [0.0, 1.0, 2.0, 3.0]
    assert len(server.peers) == 4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url_template": "http://127.0.0.1:1/r?user_id=1"}, "no {user} placeholder"),
        ({"rate": 0}, "rate must be a positive"),
        ({"duration": -1.0}, "duration must be a positive"),
        ({"rate": 1.0, "duration": 0.5}, "less than one request"),
        ({"users": ["ok-1"]}, "users has 1 ids but the run sends 2 requests"),
    ],
)
def test_bad_arguments_are_refused_before_running(
    binary: Path, kwargs: dict[str, Any], message: str
) -> None:
    args: dict[str, Any] = {
        "url_template": "http://127.0.0.1:1/r?user_id={user}",
        "users": ["ok-1", "ok-2"],
        "rate": 20.0,
        "duration": 0.1,
        **kwargs,
    }
    with pytest.raises(ValueError, match=re.escape(message)):
        loadgen.run(binary=binary, **args)


def test_a_failing_generator_raises_with_its_message(binary: Path) -> None:
    with pytest.raises(RuntimeError, match=r"exited with 2: loadgen: -timeout must be positive"):
        loadgen.run(
            "http://127.0.0.1:1/r?user_id={user}", ["ok-1"], 10, 0.1, timeout_s=0, binary=binary
        )


@pytest.mark.parametrize(
    ("flags", "users", "message"),
    [
        (["-url-template=http://x/"], "1\n", '-url-template "http://x/" has no {user}'),
        (["-rate=0"], "1\n", "-rate must be a positive number"),
        (["-duration=nan"], "1\n", "-duration must be a positive number"),
        (["-max-conns=0"], "1\n", "-max-conns must be at least 1"),
        (["-rate=30"], "1\n2\n", "has 2 lines but the run sends 3 requests"),
        ([], "1 2\n", 'line 1: "1 2" is not a user id'),
        ([], "\n", 'line 1: "" is not a user id'),
        (["-users=/nonexistent/users"], "", "-users: open /nonexistent/users"),
        (["-url-template=http://[::1/{user}"], "1\n", '-url-template with user "1"'),
        (["-url-template=https://h/{user}"], "1\n", "only http://host[:port]/... URLs"),
        (["-url-template=http://h{user}/", "-rate=20"], "1\n2\n", "must not be in the host"),
        (["stray"], "1\n", "unexpected arguments"),
    ],
)
def test_the_generator_names_the_bad_flag_or_input(
    binary: Path, tmp_path: Path, flags: list[str], users: str, message: str
) -> None:
    users_file = tmp_path / "users"
    users_file.write_text(users)
    base = [
        "-url-template=http://127.0.0.1:1/r?user_id={user}",
        f"-users={users_file}",
        "-rate=10",
        "-duration=0.1",
    ]
    proc = subprocess.run([binary, *base, *flags], capture_output=True, text=True, check=False)

    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert proc.stdout == ""


def test_results_that_cannot_be_written_fail_the_run(binary: Path, tmp_path: Path) -> None:
    users_file = tmp_path / "users"
    users_file.write_text("1\n")
    template = f"http://127.0.0.1:{free_port()}/r?user_id={{user}}"
    args = [f"-url-template={template}", f"-users={users_file}", "-rate=10", "-duration=0.1"]
    with Path("/dev/full").open("wb") as full:
        proc = subprocess.run([binary, *args], stdout=full, stderr=subprocess.PIPE, check=False)

    assert proc.returncode == 1
    assert b"no space left on device" in proc.stderr


def test_output_that_is_not_every_request_in_order_is_refused() -> None:
    line = '{"i":%d,"status":200,"latency_ms":1.5,"lag_ms":0.1,"fallback":false,"timings":{}}'
    good = "\n".join(line % i for i in range(3))
    assert [s.latency_ms for s in loadgen.parse_output(good, 3)] == [1.5] * 3
    with pytest.raises(RuntimeError, match="reported 3 requests, expected 4"):
        loadgen.parse_output(good, 4)
    with pytest.raises(RuntimeError, match="output line 1 is request 2"):
        loadgen.parse_output("\n".join(line % i for i in (0, 2, 1)), 3)


def test_building_without_go_says_go_is_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECSYS_CACHE", str(tmp_path / "cache"))  # nothing built there yet
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="Go is needed to build the load generator"):
        loadgen.build()


def test_the_binary_is_built_once_per_source_digest(binary: Path) -> None:
    assert binary.parent.name == f"loadgen-{loadgen.source_digest()}"
    assert loadgen.build() == binary
