"""The testbed's process handling: a component that dies shows its log, and stop() reaps it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from testbed.processes import ComponentFailed, ProcessGroup, wait_until


def test_a_component_that_exits_fails_with_its_log_tail(tmp_path: Path) -> None:
    group = ProcessGroup(tmp_path)
    proc = group.start(
        "broken",
        [sys.executable, "-c", "print('bad flag --frobnicate', flush=True); raise SystemExit(3)"],
    )
    with pytest.raises(ComponentFailed) as err:
        wait_until(proc, lambda: False, timeout=30)
    assert "broken" in str(err.value)
    assert "exited with code 3" in str(err.value)
    assert "bad flag --frobnicate" in str(err.value)


def test_a_component_that_never_gets_ready_times_out_and_stop_reaps_it(tmp_path: Path) -> None:
    group = ProcessGroup(tmp_path)
    proc = group.start("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"])
    with pytest.raises(ComponentFailed, match="was not ready within 1 s"):
        wait_until(proc, lambda: False, timeout=1)
    group.stop_all()
    assert not proc.alive()
    assert group.processes == []


def test_restart_starts_the_same_command_again_in_its_place(tmp_path: Path) -> None:
    group = ProcessGroup(tmp_path)
    argv = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(600)"]
    first = group.start("first", argv)
    server = group.start("server", argv, env={"RECSYS_MARK": "1"})
    last = group.start("last", argv)
    wait_until(server, lambda: "up" in server.log.read_text(), timeout=30)
    again = group.restart(server)
    try:
        assert not server.alive()
        assert again.alive()
        assert again.pid != server.pid
        assert (again.argv, again.env) == (tuple(argv), {"RECSYS_MARK": "1"})
        assert group.processes == [first, again, last]  # stopped in the same order
        wait_until(again, lambda: again.log.read_text().count("up") == 2, timeout=30)
    finally:
        group.stop_all()
