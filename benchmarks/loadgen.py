"""The open-loop HTTP load generator (benchmarks/loadgen/, Go) seen from Python.

The benchmarks load the gateway from a separate Go process rather than from an asyncio loop in
their own: on a 2-core machine the generator's CPU is taken from the system under test, and the
Go one spends about 0.26 ms per request where aiohttp spent 0.8-0.9 (200 req/s, development VM).
Python still decides which user each request asks for (so runs are reproducible from a seed)
and gets every request's result back.

The binary is built on first use and cached by the digest of its sources, like the testbed's
control plane (tests/testbed/build.sh); Go must be on PATH.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).resolve().parent / "loadgen"
USER_PLACEHOLDER = "{user}"


@dataclass
class Sample:
    """One request. ``status`` is 0 when no response came (refused, reset, timed out);
    ``error`` is set then, and for a 200 whose body lacks what the gateway always sends."""

    status: int
    latency_ms: float
    fallback: bool
    stages: dict[str, float]
    send_lag_ms: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


@dataclass
class LoadRun:
    """A run's samples in request order, and the generator's own CPU: what it took from the
    machine it shares with the system under test."""

    samples: list[Sample]
    cpu_seconds: float


def cache_dir() -> Path:
    return Path(os.environ.get("RECSYS_CACHE") or Path.home() / ".cache" / "recsys-operator")


def source_digest() -> str:
    """Of go.mod and every .go file (names and contents): any edit means a new binary."""
    digest = hashlib.sha256()
    for path in [SOURCE / "go.mod", *sorted(SOURCE.glob("*.go"))]:
        data = path.read_bytes()
        digest.update(f"{path.name}\0{len(data)}\0".encode() + data)
    return digest.hexdigest()[:12]


def build() -> Path:
    """The binary for the current sources, built once per digest (concurrent callers wait for
    the first build under a file lock instead of compiling twice)."""
    out = cache_dir() / "bin" / f"loadgen-{source_digest()}"
    binary = out / "loadgen"
    if binary.exists():
        return binary
    go = shutil.which("go")
    if go is None:
        raise RuntimeError(
            "Go is needed to build the load generator (benchmarks/loadgen): install Go 1.26 or "
            "newer and put `go` on PATH"
        )
    out.mkdir(parents=True, exist_ok=True)
    with (out / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if binary.exists():
            return binary
        partial = out / "loadgen.partial"
        env = {**os.environ, "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
        proc = subprocess.run(
            [go, "build", "-trimpath", "-o", str(partial), "."],
            cwd=SOURCE,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"go build of {SOURCE} failed:\n{proc.stderr}")
        partial.replace(binary)  # atomic: a reader never sees half a binary
    return binary


def requests_in(rate: float, duration: float) -> int:
    """How many requests a run sends; the same floor(rate * duration) as the Go side."""
    return int(rate * duration)


def check_args(url_template: str, users: Sequence[int | str], rate: float, duration: float) -> int:
    """Number of requests of a valid run; a ValueError naming the argument otherwise."""
    if USER_PLACEHOLDER not in url_template:
        raise ValueError(
            f"url_template {url_template!r} has no {USER_PLACEHOLDER} placeholder: "
            "put it where the user id goes"
        )
    if not rate > 0:
        raise ValueError(f"rate must be a positive number of requests per second, got {rate}")
    if not duration > 0:
        raise ValueError(f"duration must be a positive number of seconds, got {duration}")
    n = requests_in(rate, duration)
    if n < 1:
        raise ValueError(f"rate {rate} times duration {duration} is less than one request")
    if len(users) < n:
        raise ValueError(
            f"users has {len(users)} ids but the run sends {n} requests (rate x duration): "
            "give one user per request"
        )
    return n


def parse_line(line: str) -> tuple[int, Sample]:
    rec: dict[str, Any] = json.loads(line)
    return rec["i"], Sample(
        status=rec["status"],
        latency_ms=rec["latency_ms"],
        fallback=rec["fallback"],
        stages=rec["timings"],
        send_lag_ms=rec["lag_ms"],
        error=rec.get("error"),
    )


def parse_output(stdout: str, n: int) -> list[Sample]:
    """The generator's JSON lines, checked to be exactly requests 0..n-1 in order."""
    samples = []
    for expected, line in enumerate(stdout.splitlines()):
        i, sample = parse_line(line)
        if i != expected:
            raise RuntimeError(f"load generator output line {expected} is request {i}")
        samples.append(sample)
    if len(samples) != n:
        raise RuntimeError(f"load generator reported {len(samples)} requests, expected {n}")
    return samples


def run(
    url_template: str,
    users: Sequence[int | str],
    rate: float,
    duration: float,
    *,
    timeout_s: float = 2.0,
    max_conns: int = 1024,
    binary: Path | None = None,
) -> LoadRun:
    """Request ``i`` asks for ``users[i]`` at ``i / rate`` seconds into the run; blocks until
    every request has answered or timed out."""
    n = check_args(url_template, users, rate, duration)
    exe = binary or build()
    with tempfile.TemporaryDirectory(prefix="loadgen-") as tmp:
        users_file = Path(tmp) / "users"
        users_file.write_text("".join(f"{u}\n" for u in users[:n]))
        stderr_file = Path(tmp) / "stderr"
        with stderr_file.open("wb") as stderr:
            proc = subprocess.Popen(
                [
                    str(exe),
                    f"-url-template={url_template}",
                    f"-users={users_file}",
                    f"-rate={float(rate)!r}",
                    f"-duration={float(duration)!r}",
                    f"-timeout={timeout_s * 1000:.3f}ms",
                    f"-max-conns={max_conns}",
                ],
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
            assert proc.stdout is not None
            try:
                with proc.stdout:
                    stdout = proc.stdout.read().decode()
            except BaseException:  # interrupted: leave no generator running on its own
                proc.kill()
                proc.wait()
                raise
            # wait4 rather than proc.wait(): it gives this child's own CPU, exactly
            _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            # less the runtime's one "SCHED" line (see keepSysmonAwake in wakeups_linux.go)
            lines = stderr_file.read_text().splitlines()
            message = "\n".join(line for line in lines if not line.startswith("SCHED "))
            raise RuntimeError(f"load generator exited with {proc.returncode}: {message}")
    return LoadRun(parse_output(stdout, n), usage.ru_utime + usage.ru_stime)
