"""Starting, watching and stopping the testbed's server processes.

Every server is a child we started ourselves, tracked by pid, with its output in a log file, so
that teardown can stop exactly what it started and a failure can show the log's last lines.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


class ComponentFailed(RuntimeError):
    """A server exited or never became ready; the message carries its log tail."""


def free_port() -> int:
    """A port free on the loopback right now (the OS picks it; races are unlikely in tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    #: How it was started, so that it can be started again the same way.
    argv: tuple[str, ...] = ()
    env: Mapping[str, str] | None = None
    cwd: Path | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def failure(self, why: str) -> ComponentFailed:
        return ComponentFailed(
            f"{self.name} (pid {self.pid}) {why}; last lines of {self.log}:\n{log_tail(self.log)}"
        )

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM its process group, then SIGKILL what is left after ``grace`` seconds."""
        if not self.alive():
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)
            try:
                self.popen.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


@dataclass
class ProcessGroup:
    """The servers one testbed started, stopped in reverse order of starting."""

    log_dir: Path
    processes: list[Process] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Process:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,  # its own process group: stop() reaches its children too
            )
        proc = Process(name, popen, log, tuple(argv), env, cwd)
        self.processes.append(proc)
        return proc

    def restart(self, proc: Process) -> Process:
        """Stop ``proc`` and start it again with the same command, in its place in the stop
        order (a server restarted on its port, as an upgrade or a crash loop would)."""
        proc.stop()
        at = self.processes.index(proc)
        self.processes.remove(proc)
        again = self.start(proc.name, proc.argv, proc.env, proc.cwd)
        self.processes.remove(again)
        self.processes.insert(at, again)
        return again

    def stop_all(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()


def wait_until(
    proc: Process,
    ready: Callable[[], bool],
    timeout: float,
    what: str = "ready",
    interval: float = 0.2,
) -> None:
    """Poll ``ready`` until it holds; fail early, with the log tail, if the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise proc.failure(f"exited with code {proc.popen.returncode} before it was {what}")
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(interval)
    raise proc.failure(f"was not {what} within {timeout:.0f} s")


def built_by(script: str) -> Path:
    """Run a build script of tests/testbed (a no-op once its pin is cached) for the path it
    prints last: where the binary it builds lives."""
    out = subprocess.run(
        ["bash", str(Path(__file__).resolve().parent / script)],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    return Path(out.strip().splitlines()[-1])


def run_until_interrupted(processes: Sequence[Process], stop: Callable[[], None]) -> int:
    """Keep ``processes`` (a testbed started by hand with ``up``) until SIGINT or SIGTERM, or
    until one of them exits (said on stderr, exit status 1); ``stop`` them either way."""
    interrupted = False

    def _interrupt(*_: object) -> None:
        nonlocal interrupted
        interrupted = True

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    dead: list[Process] = []
    try:
        while not interrupted and not dead:
            time.sleep(0.5)
            dead = [p for p in processes if not p.alive()]
        for p in dead:
            print(p.failure("exited"), file=sys.stderr)
    finally:
        stop()
    return 1 if dead else 0
