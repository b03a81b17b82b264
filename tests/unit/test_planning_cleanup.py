"""What a Recommender being deleted cleans, and in which order, decided without a cluster."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest
from api_objects import recommender

from recsys_contract.cleanup import CleanupConfig, CleanupSummary
from recsys_operator.api.recommender import Recommender
from recsys_operator.planning import cleanup
from recsys_operator.planning.cleanup import AfterWriters, after_writers
from recsys_operator.planning.jobstatus import JobOutcome
from recsys_workloads import cleanup as workload

OWNER = {"apiVersion": "recsys.dev/v1alpha1", "kind": "Recommender",
         "metadata": {"name": "movies", "uid": "u-1"}}  # fmt: skip
NOW = dt.datetime(2026, 12, 2, 12, 0, 0, tzinfo=dt.UTC)


def rec(policy: str | None = None, uri: str = "s3://m/movies") -> Recommender:
    artifacts: dict[str, Any] = {"storageUri": uri}
    if policy:
        artifacts["retentionPolicy"] = policy
    return recommender(stores={"redis": {"url": "redis://r:6379/0"}, "artifacts": artifacts})


def outcome(state: str, finished_ago: float = 0.0) -> JobOutcome:
    done = (NOW - dt.timedelta(seconds=finished_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    if state == "running":
        return JobOutcome("movies-cleanup", False, False, "Running", "running")
    ok = state == "succeeded"
    return JobOutcome("movies-cleanup", True, ok, "Succeeded" if ok else "BadInput",
                      "completed" if ok else "Job movies-cleanup: access denied",
                      completion_time=done)  # fmt: skip


@pytest.mark.parametrize(
    ("case", "r", "job", "exists", "want"),
    [
        ("Retain (the default): the keyspace, then released", rec(), None, False,
         AfterWriters(delete_keyspace=True, release=True)),
        ("Retain after a Job of Delete: the Job goes too", rec("Retain"), outcome("failed"), True,
         AfterWriters(delete_keyspace=True, remove_job=True, release=True)),
        ("Delete: the keyspace, then the cleanup Job", rec("Delete"), None, False,
         AfterWriters(delete_keyspace=True, start_job=True, requeue_after=2.0)),
        ("Delete, the Job running: wait", rec("Delete"), outcome("running"), True,
         AfterWriters(requeue_after=2.0)),
        ("Delete, the Job's pod not read yet: wait", rec("Delete"), None, True,
         AfterWriters(requeue_after=2.0)),
        ("Delete, the Job done: it goes, then released", rec("Delete"), outcome("succeeded"),
         True, AfterWriters(remove_job=True, release=True)),
        ("Delete, the Job failed just now: say why, keep it a while", rec("Delete"),
         outcome("failed", 15), True,
         AfterWriters(requeue_after=45.0, failed="Job movies-cleanup: access denied")),
        ("Delete, the Job failed a while ago: start again", rec("Delete"),
         outcome("failed", 61), True, AfterWriters(remove_job=True, requeue_after=2.0)),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)  # fmt: skip
def test_after_the_writers(
    case: str, r: Recommender, job: JobOutcome | None, exists: bool, want: AfterWriters
) -> None:
    assert after_writers(r, job, exists, NOW) == want


def test_the_cleanup_job_removes_what_the_workloads_write_and_has_no_owner() -> None:
    config_map, job = cleanup.cleanup_objects(rec("Delete", "pvc://models/movies"), OWNER, "img")
    for obj in (config_map, job):
        assert "ownerReferences" not in obj["metadata"]
        assert obj["metadata"]["labels"]["recsys.dev/recommender"] == "movies"
        assert cleanup.is_cleanup(obj)
    cfg = CleanupConfig.model_validate(json.loads(config_map["data"]["config.json"]))
    assert cfg.uris == ["pvc://models/movies/models", "pvc://models/movies/indexes",
                        "pvc://models/movies/logged"]  # fmt: skip
    pod = job["spec"]["template"]["spec"]
    (main,) = pod["containers"]
    assert main["command"] == ["python", "-m", "recsys_workloads.cleanup"]
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    # the claim is mounted read-write: the Job deletes below it
    (mount,) = [m for m in main["volumeMounts"] if m["mountPath"] == "/mnt/pvc/models"]
    assert not mount.get("readOnly")


def test_the_workload_removes_each_directory_once_and_skips_what_is_gone(tmp_path: Path) -> None:
    base = tmp_path / "store"
    for rel in ("models/v1/model.pt", "indexes/v1/index.faiss", "keep/notes.txt"):
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_text("x")
    uris = [(base / d).as_uri() for d in ("models", "indexes", "logged")]
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"uris": uris}))
    log = tmp_path / "termination-log"
    assert workload.main(["--config", str(config), "--termination-log", str(log)]) == 0
    summary = CleanupSummary.read(json.loads(log.read_text()))
    assert summary is not None
    assert (summary.removed, summary.absent) == (uris[:2], uris[2:])
    assert sorted(p.name for p in base.iterdir()) == ["keep"]
    # a retried run finds nothing left to do, and says so
    assert workload.main(["--config", str(config), "--termination-log", str(log)]) == 0
    again = CleanupSummary.read(json.loads(log.read_text()))
    assert again is not None
    assert (again.removed, again.absent) == ([], uris)


def test_a_config_without_directories_is_bad_input(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"uris": []}))
    log = tmp_path / "termination-log"
    assert workload.main(["--config", str(config), "--termination-log", str(log)]) == 2
    assert "uris" in json.loads(log.read_text())["message"]
