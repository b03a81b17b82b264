"""A real Prometheus (built from its Go module by build_prometheus.sh) scraping local targets.

It listens on the loopback only, keeps its TSDB in a temporary folder that ``stop`` removes, and
scrapes every target at ``scrape_interval`` (a second by default, so a test waits seconds, not
the minute of a production setup, for its traffic to show).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from recsys_operator.prometheus import prometheus_duration
from testbed.processes import Process, ProcessGroup, free_port, wait_until

HERE = Path(__file__).resolve().parent


def prometheus_binary() -> Path:
    """Run build_prometheus.sh (a no-op once the pinned version is cached) for the binary."""
    out = subprocess.run(
        ["bash", str(HERE / "build_prometheus.sh")], check=True, stdout=subprocess.PIPE, text=True
    ).stdout
    return Path(out.strip().splitlines()[-1])


@dataclass
class PrometheusServer:
    port: int
    process: Process
    procs: ProcessGroup
    workdir: Path

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.procs.stop_all()
        shutil.rmtree(self.workdir, ignore_errors=True)


def scrape_config(
    targets: Sequence[str], scrape_interval: float, labels: Mapping[str, str] | None = None
) -> str:
    """One static job over ``targets`` (``host:port``), each series labelled with ``labels``
    as Kubernetes service discovery would add ``namespace`` and the like. JSON is YAML, so no
    YAML writer is needed."""
    interval = prometheus_duration(scrape_interval)
    return json.dumps(
        {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": [
                {
                    "job_name": "gateway",
                    "scrape_interval": interval,
                    "scrape_timeout": interval,
                    "static_configs": [{"targets": list(targets), "labels": dict(labels or {})}],
                }
            ],
        },
        indent=2,
    )


def _ready(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as resp:
        return int(resp.status) == 200


def start_prometheus(
    targets: Sequence[str],
    scrape_interval: float = 1.0,
    timeout: float = 30,
    labels: Mapping[str, str] | None = None,
) -> PrometheusServer:
    binary = prometheus_binary()
    workdir = Path(tempfile.mkdtemp(prefix="recsys-prometheus-"))
    procs = ProcessGroup(workdir / "logs")
    config = workdir / "prometheus.yml"
    config.write_text(scrape_config(targets, scrape_interval, labels))
    port = free_port()
    try:
        proc = procs.start(
            "prometheus",
            [
                str(binary),
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
        )
        wait_until(proc, lambda: _ready(port), timeout, "ready")
    except BaseException:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return PrometheusServer(port, proc, procs, workdir)
