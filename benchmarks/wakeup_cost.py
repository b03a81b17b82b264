"""What one cross-process hand-off costs on this machine, in CPU: the unit the serving figures
are made of (a request crosses the load generator, the gateway, Redis and Triton's threads and
stubs, each crossing a wake-up of a sleeping thread).

Two processes bounce one byte over a socket pair ``--rounds`` times; every bounce wakes the
other side. CPU is both processes' user + system time (``os.wait4`` for the child), divided by
the number of one-way hand-offs. The reference beside it is the same loop in one process with
no wake-up (writing and reading its own socket pair), so the ratio isolates the wake-up.

    .venv/bin/python benchmarks/wakeup_cost.py --rounds 20000
"""

from __future__ import annotations

import argparse
import os
import socket
import time


def _bounce(sock: socket.socket, rounds: int) -> None:
    for _ in range(rounds):
        sock.recv(1)
        sock.send(b"x")


def cross_process(rounds: int, gap_s: float = 0.0) -> tuple[float, float]:
    """CPU seconds and wall seconds for ``2 * rounds`` one-way hand-offs between processes;
    with ``gap_s`` the parent sleeps between rounds, so both sides go idle as a server
    between requests does (each round then also pays the parent's timer wake-up)."""
    parent, child = socket.socketpair()
    own = os.times()
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # the child answers every byte, then leaves without cleanup handlers
        parent.close()
        _bounce(child, rounds)
        os._exit(0)
    child.close()
    for _ in range(rounds):
        if gap_s:
            time.sleep(gap_s)
        parent.send(b"x")
        parent.recv(1)
    _, _, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    mine = os.times()
    cpu = (mine.user - own.user) + (mine.system - own.system) + usage.ru_utime + usage.ru_stime
    return cpu, wall


def same_process(rounds: int) -> tuple[float, float]:
    """The same sends and receives with nobody to wake: the syscalls alone."""
    a, b = socket.socketpair()
    own = os.times()
    start = time.perf_counter()
    for _ in range(rounds):
        a.send(b"x")
        b.recv(1)
        b.send(b"x")
        a.recv(1)
    wall = time.perf_counter() - start
    mine = os.times()
    return (mine.user - own.user) + (mine.system - own.system), wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gap-ms", type=float, default=5.0, help="idle time between rounds")
    args = parser.parse_args()
    hops = 2 * args.rounds
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()}; {hops} one-way hand-offs")
    idle_rounds = max(args.rounds // 20, 100)
    for n in range(args.repeats):
        idle_cpu, _ = cross_process(idle_rounds, args.gap_ms / 1000)
        print(
            f"run {n + 1}: after {args.gap_ms:g} ms idle, a round (timer + 2 hand-offs) costs "
            f"{idle_cpu / idle_rounds * 1e6:.1f} µs CPU, "
            f"{idle_cpu / (3 * idle_rounds) * 1e6:.1f} µs per wake-up"
        )
        cross_cpu, cross_wall = cross_process(args.rounds)
        same_cpu, same_wall = same_process(args.rounds)
        print(
            f"run {n + 1}: across processes {cross_cpu / hops * 1e6:.1f} µs CPU and "
            f"{cross_wall / hops * 1e6:.1f} µs wall per hand-off; "
            f"same process (reference) {same_cpu / hops * 1e6:.1f} µs CPU and "
            f"{same_wall / hops * 1e6:.1f} µs wall; "
            f"ratio {cross_cpu / max(same_cpu, 1e-9):.1f}x"
        )


if __name__ == "__main__":
    main()
