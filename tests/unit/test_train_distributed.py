"""Data-parallel training under the real torchrun launcher (gloo on the CPU, two workers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from offline_frames import tiny_tables, train_config, write_config, write_tables


def test_torchrun_with_two_workers_trains_and_only_rank_zero_publishes(tmp_path: Path) -> None:
    data = write_tables(tmp_path / "data", tiny_tables())
    cfg = train_config(data, str(tmp_path / "artifact"), training={"epochs": 3, "batchSize": 32})
    config = write_config(tmp_path / "cfg.json", cfg)
    term = tmp_path / "termination"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            "-m",
            "recsys_workloads.train",
            "--config",
            str(config),
            "--termination-log",
            str(term),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(term.read_text())
    assert summary["status"] == "Succeeded"
    assert "digest" in summary  # rank 0's summary, not a worker's
    metrics = json.loads((tmp_path / "artifact/metrics.json").read_text())
    training = metrics["training"]
    assert training["worldSize"] == 2
    # each worker took half of every epoch: together they saw all training interactions
    n_train = metrics["split"]["trainInteractions"]
    assert training["history"][0]["steps"] == -(-(n_train // 2) // 32)
    assert metrics["retrieval"]["twoTower"]["recall@10"] > 0.3
    assert json.loads((tmp_path / "artifact/checkpoints/latest.json").read_text())["epoch"] == 3
