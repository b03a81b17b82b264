"""The log join's CronJob and what training reads of it, planned without a cluster: present,
absent and changed with the spec, one row per case."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from api_objects import model_version, recommender

from recsys_contract.logjoin import LogJoinConfig
from recsys_contract.train import Lineage, LoggedLineage
from recsys_operator.api.recommender import Recommender
from recsys_operator.planning import logjoin as planner
from recsys_operator.planning.modelversion import lineage_status
from recsys_operator.planning.training import FeatureSources, train_config

OWNER = {"apiVersion": "recsys.dev/v1alpha1", "kind": "Recommender",
         "metadata": {"name": "movies", "uid": "u-1"}}  # fmt: skip
SECRET = {"name": "redis", "key": "password"}


def rec(logged: dict[str, Any] | None = None, **spec: Any) -> Recommender:
    training = {"loggedData": logged} if logged is not None else {}
    return recommender(training=training, **spec)


def config_of(objects: list[dict[str, Any]]) -> LogJoinConfig:
    return LogJoinConfig.model_validate(json.loads(objects[0]["data"]["config.json"]))


@pytest.mark.parametrize(
    ("case", "r", "schedule", "wait", "retain", "tz"),
    [
        ("on by default", rec(), "*/15 * * * *", 1800.0, 86400.0, None),
        ("its own schedule and time zone",
         rec({"schedule": "5 * * * *", "timeZone": "Europe/Paris"}),
         "5 * * * *", 1800.0, 86400.0, "Europe/Paris"),
        ("the wait follows the rollout's attribution window",
         rec(serving={"rollout": {"analysis": {"attributionWindow": "2h"}}}),
         "*/15 * * * *", 7200.0, 86400.0, None),
        ("its own attribution window wins", rec({"attributionWindow": "10m"},
         serving={"rollout": {"analysis": {"attributionWindow": "2h"}}}),
         "*/15 * * * *", 600.0, 86400.0, None),
        ("retention", rec({"retention": "72h"}), "*/15 * * * *", 1800.0, 259200.0, None),
    ],
)  # fmt: skip
def test_the_cronjob_follows_the_spec(
    case: str, r: Recommender, schedule: str, wait: float, retain: float, tz: str | None
) -> None:
    objects = planner.logjoin_objects(r, OWNER, "img")
    assert [o["kind"] for o in objects] == ["ConfigMap", "CronJob"], case
    cfg = config_of(objects)
    assert cfg.recommender == "ns.movies"
    assert cfg.output_uri == "s3://m/logged"
    assert (cfg.wait_seconds, cfg.retain_seconds) == (wait, retain), case
    spec = objects[1]["spec"]
    assert (spec["schedule"], spec.get("timeZone"), spec["concurrencyPolicy"]) == (
        schedule, tz, "Forbid")  # fmt: skip
    assert objects[0]["metadata"]["name"] == objects[1]["metadata"]["name"] == "movies-logjoin"


@pytest.mark.parametrize(
    ("case", "r"),
    [
        ("disabled", rec({"enabled": False})),
        ("disabled with the rest set", rec({"enabled": False, "schedule": "@hourly"})),
    ],
)
def test_disabled_means_no_cronjob(case: str, r: Recommender) -> None:
    assert planner.logjoin_objects(r, OWNER, "img") == [], case


def test_the_pod_is_least_privilege_and_gets_its_secrets() -> None:
    r = recommender(
        stores={"redis": {"url": "redis://r:6379/0", "passwordSecretRef": SECRET,
                          "keyPrefix": "team-a:"},
                "artifacts": {"storageUri": "s3://m/", "secretRef": {"name": "s3"}}},
        training={"image": "train:1"},
    )  # fmt: skip
    objects = planner.logjoin_objects(r, OWNER, "img")
    assert config_of(objects).online_store.key_prefix == "team-a:"
    assert config_of(objects).online_store.redis_url == "redis://r:6379/0"
    job = objects[1]["spec"]["jobTemplate"]["spec"]
    pod = job["template"]["spec"]
    (main,) = pod["containers"]
    assert main["image"] == "train:1"
    assert main["command"] == ["python", "-m", "recsys_workloads.logjoin"]
    assert {"name": "REDIS_PASSWORD", "valueFrom": {"secretKeyRef": SECRET}} in main["env"]
    assert main["envFrom"] == [{"secretRef": {"name": "s3"}}]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert job["podFailurePolicy"]["rules"][0]["action"] == "FailJob"
    labels = objects[1]["spec"]["jobTemplate"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "logjoin"
    assert objects[1]["metadata"]["ownerReferences"][0]["uid"] == "u-1"


def test_a_changed_spec_changes_the_objects() -> None:
    before = planner.logjoin_objects(rec(), OWNER, "img")
    assert planner.logjoin_objects(rec(), OWNER, "img") == before  # deterministic: no churn
    after = planner.logjoin_objects(rec({"schedule": "0 * * * *", "retention": "1h"}), OWNER, "img")
    assert after[1]["spec"]["schedule"] == "0 * * * *"
    assert config_of(after).retain_seconds == 3600.0
    assert after != before


CREATED = "2026-11-23T12:00:00Z"


@pytest.mark.parametrize(
    ("case", "r", "uri", "since", "until"),
    [
        ("on: rows joined before the version was created", rec(), "s3://m/logged", None,
         dt.datetime(2026, 11, 23, 12, tzinfo=dt.UTC)),
        ("a lookback bounds the start", rec({"lookback": "168h"}), "s3://m/logged",
         dt.datetime(2026, 11, 16, 12, tzinfo=dt.UTC),
         dt.datetime(2026, 11, 23, 12, tzinfo=dt.UTC)),
        ("off: batch interactions only", rec({"enabled": False}), None, None, None),
    ],
)  # fmt: skip
def test_training_reads_the_logged_rows(
    case: str, r: Recommender, uri: str | None, since: dt.datetime | None, until: dt.datetime | None
) -> None:
    mv = model_version("movies-v2")
    mv = mv.model_copy(
        update={"metadata": mv.metadata.model_copy(update={"creation_timestamp": CREATED})}
    )
    data = train_config(r, mv, FeatureSources()).data
    assert (data.logged_uri, data.logged_since, data.logged_until) == (uri, since, until), case
    # the config the Job reads round-trips, so a retry reads the same range
    wire = train_config(r, mv, FeatureSources()).to_wire()["data"]
    assert wire.get("loggedUntil") == ("2026-11-23T12:00:00Z" if until else None)


def test_lineage_status_keeps_the_newest_partitions() -> None:
    days = [f"date=2026-{m:02d}-{d:02d}" for m in range(1, 7) for d in range(1, 29)]
    lineage = Lineage(
        interactions_uri="s3://d/i/",
        interactions=10,
        logged=LoggedLineage(uri="s3://m/logged", partitions=days, files=200, rows=5),
    )
    st = lineage_status(lineage)
    assert st["logged"]["partitionCount"] == len(days)
    assert st["logged"]["partitions"] == days[-100:]
    assert st["interactionsUri"] == "s3://d/i/"
