"""End to end: `make demo`'s loop closes — real control plane, operator, Redis, torch, FAISS.

The FeatureViews' backfills materialize MovieLens-100k into Redis, the first ModelVersion
trains on the CPU, passes its gate, gets its index, and serves: the Triton Deployment's init
container builds the model repository, the real tritonserver loads it, and the gateway, run
with the operator's config, answers a recommendation from the models; the demo exits 0 only
then.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.testbed
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_demo_closes_the_loop(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "demo" / "run_demo.py"), "--exit", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=1400,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "movies-v1 is stable; the loop has closed" in out
    assert "kwok plays the node, so no container runs" in out  # it says what runs where
    assert '"phase": "Ready"' in out
    # The trained artifact and its index were written where the Recommender said.
    assert (tmp_path / "artifacts" / "models" / "movies-v1").is_dir()
    assert (tmp_path / "artifacts" / "indexes" / "movies-v1").is_dir()
    # Each backfill wrote every MovieLens user and item to Redis (read from its status, so an
    # hourly run that found nothing new cannot hide it).
    assert "movie-users: the backfill wrote 943 entities" in out
    assert "movie-items: the backfill wrote 1682 entities" in out
    # A recommendation served by the models (no fallback) of the version the operator promoted.
    served = json.loads(re.search(r"==> GET \S+\n(\{.*?\n\})\n", out, re.S).group(1))  # type: ignore[union-attr]
    assert served["modelVersion"] == "movies-v1"
    assert served["variant"] == "stable"
    assert served["fallback"] is None
    assert len(served["items"]) == 5
    assert len({i["itemId"] for i in served["items"]}) == 5
    scores = [i["score"] for i in served["items"]]
    assert scores == sorted(scores, reverse=True)
    # user 1's history was seeded from the interactions (the newest 200 items, the Job's
    # default cap): none of those is served again
    rated = pq.read_table(tmp_path / "data" / "interactions.parquet").to_pylist()
    mine = sorted((r for r in rated if r["user_id"] == 1), key=lambda r: r["event_timestamp"])
    cutoff = mine[-200]["event_timestamp"]  # ties at the cap may go either way: left out
    newest = {r["item_id"] for r in mine if r["event_timestamp"] > cutoff}
    assert len(newest) > 100
    assert not newest & {i["itemId"] for i in served["items"]}
    assert "users' histories seeded" in out
    # the repository the init container built from the artifact, as Triton loaded it
    assert (
        tmp_path
        / "serving"
        / "movies-triton-movies-v1"
        / "models"
        / "movies-v1.ranker"
        / "config.pbtxt"
    ).is_file()
