"""End to end: `make demo DEMO_ARGS="--scenario rollout|rollback"` do what the README says.

A retrained version of the same quality is promoted through every canary step, and a model
trained on other tastes is aborted by the click-through-rate check, both under simulated
traffic with no failed request; the demo exits 0 only then.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_scenario(name: str, workdir: Path) -> str:
    result = subprocess.run(
        [sys.executable, str(REPO / "demo" / "run_demo.py"), "--scenario", name, "--exit",
         "--workdir", str(workdir), "--timeout", "600"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def failed_requests(out: str) -> int:
    found = re.search(r"==> traffic: \d+ responses, (\d+) failed", out)
    assert found, out[-2000:]
    return int(found.group(1))


@pytest.mark.testbed
@pytest.mark.slow
@pytest.mark.timeout(1000)
def test_the_rollout_scenario_promotes_the_retrained_version(tmp_path: Path) -> None:
    out = run_scenario("rollout", tmp_path)
    assert "shop-v2 promoted after" in out
    # every step was shown as the operator took it, with the analysis table
    assert "Paused (PauseStep): step 1: pause 15s at 25%" in out
    assert "Paused (PauseStep): step 3: pause 15s at 60%" in out
    # the analysis ran on every step; an equally good canary passes the CTR check, or runs
    # out of steps before the always-valid interval decides (Inconclusive holds nothing)
    assert re.search(r"click-through-rate +[\d.]+ +[\d.]+ +>= 90 +(Passed|Inconclusive)", out)
    assert not re.search(r"click-through-rate +[\d.]+ +[\d.]+ +>= 90 +Failed", out), out[-3000:]
    assert failed_requests(out) == 0


@pytest.mark.testbed
@pytest.mark.slow
@pytest.mark.timeout(1000)
def test_the_rollback_scenario_aborts_the_model_users_click_less(tmp_path: Path) -> None:
    out = run_scenario("rollback", tmp_path)
    assert "shop-v2 aborted after" in out
    assert re.search(r"click-through-rate +[\d.]+ +[\d.]+ +>= 90 +Failed", out), out[-3000:]
    assert "all traffic on shop-v1" in out
    assert failed_requests(out) == 0
