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
