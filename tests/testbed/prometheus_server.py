"""A real Prometheus (built from its Go module by build_prometheus.sh) scraping local targets,
and the promtool and Prometheus Operator CRDs of the chart's monitoring tests.

It listens on the loopback only, keeps its TSDB in a temporary folder that ``stop`` removes, and
scrapes every target at ``scrape_interval`` (a second by default, so a test waits seconds, not
the minute of a production setup, for its traffic to show).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from recsys_operator.prometheus import prometheus_duration
from testbed.processes import Process, ProcessGroup, built_by, free_port, wait_until


def prometheus_binary() -> Path:
    return built_by("build_prometheus.sh")


def promtool_binary() -> Path:
    """promtool of the same Prometheus module and version (build_promtool.sh)."""
    return built_by("build_promtool.sh")


def prometheus_operator_crds() -> Path:
    """The folder of the Prometheus Operator's PodMonitor, ServiceMonitor and PrometheusRule
    CRDs (fetch_prometheus_operator_crds.sh)."""
    return built_by("fetch_prometheus_operator_crds.sh")


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


@dataclass(frozen=True)
class ScrapeJob:
    """A static scrape job: ``targets`` (``host:port``) under ``name`` (the ``job`` label), each
    series labelled with ``labels`` as Kubernetes service discovery and a monitor's relabeling
    would add ``namespace`` and the like; ``honor_labels`` keeps a scraped label that collides
    with one of those (the Prometheus Operator's ``honorLabels``)."""

    name: str
    targets: Sequence[str]
    labels: Mapping[str, str] | None = None
    honor_labels: bool = False


def scrape_config(
    targets: Sequence[str],
    scrape_interval: float,
    labels: Mapping[str, str] | None = None,
    *,
    jobs: Sequence[ScrapeJob] = (),
    rule_files: Sequence[Path] = (),
) -> str:
    """A job ``gateway`` over ``targets`` (when there are any) and ``jobs``, with ``rule_files``
    evaluated at the scrape interval. JSON is YAML, so no YAML writer is needed."""
    interval = prometheus_duration(scrape_interval)
    every = [*([ScrapeJob("gateway", targets, labels)] if targets else []), *jobs]
    return json.dumps(
        {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [
                {
                    "job_name": job.name,
                    "scrape_interval": interval,
                    "scrape_timeout": interval,
                    "honor_labels": job.honor_labels,
                    "static_configs": [
                        {"targets": list(job.targets), "labels": dict(job.labels or {})}
                    ],
                }
                for job in every
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
    *,
    jobs: Sequence[ScrapeJob] = (),
    rule_files: Sequence[Path] = (),
) -> PrometheusServer:
    binary = prometheus_binary()
    workdir = Path(tempfile.mkdtemp(prefix="recsys-prometheus-"))
    procs = ProcessGroup(workdir / "logs")
    config = workdir / "prometheus.yml"
    config.write_text(
        scrape_config(targets, scrape_interval, labels, jobs=jobs, rule_files=rule_files)
    )
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
