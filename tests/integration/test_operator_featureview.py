"""The operator reconciles a FeatureView on the real control plane: CronJob, config, backfill,
status from the workload's termination message, Ready once data is live, Stale once it lags,
every failure path, restart and zero writes."""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.request
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from fixtures.kube import Testbed
from fixtures.operator import (
    OperatorProcess,
    condition,
    end_pod,
    eventually,
    finish_pod,
    get,
    materialize,
)
from recsys_contract.materialize import MaterializeSummary

pytestmark = pytest.mark.testbed

FV = """
apiVersion: recsys.dev/v1alpha1
kind: FeatureView
metadata: {name: users}
spec:
  entity: {name: user, joinKeys: [user_id]}
  source: {path: "s3://data/users/", timestampField: event_timestamp}
  features:
    - {name: age, dtype: Int64}
    - {name: genres, dtype: Array(String)}
  ttl: 24h
  onlineStore:
    redis:
      url: redis://redis.recsys.svc:6379/0
      passwordSecretRef: {name: redis-auth, key: password}
  materialization:
    cronJob: {schedule: "*/30 * * * *"}
"""


def fv(**materialization: Any) -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load(FV)
    obj["spec"]["materialization"].update(materialization)
    return obj


def apply(testbed: Testbed, ns: str, obj: dict[str, Any]) -> None:
    testbed.kubectl("apply", "--server-side", "-n", ns, "-f", "-", input=json.dumps(obj))


def reconciled(testbed: Testbed, ns: str, name: str = "users") -> dict[str, Any] | None:
    """The FeatureView once the operator has reported on its current generation."""
    obj = get(testbed, "featureview", name, ns)
    gen = (obj or {}).get("metadata", {}).get("generation")
    if obj and condition(obj, "Ready") and obj["status"].get("observedGeneration") == gen:
        return obj
    return None


def ready(testbed: Testbed, ns: str, name: str = "users") -> dict[str, Any] | None:
    obj = reconciled(testbed, ns, name)
    cond = condition(obj, "Ready")
    return obj if cond and cond["status"] == "True" else None


def test_cronjob_and_config_are_created_with_least_privilege(
    testbed: Testbed, namespace: str, operator: OperatorProcess
) -> None:
    apply(testbed, namespace, fv())
    obj = eventually(lambda: reconciled(testbed, namespace), 60, "status", operator=operator)
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]

    cron = get(testbed, "cronjob", "users-materialize", namespace)
    assert cron is not None
    assert cron["spec"]["schedule"] == "*/30 * * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert cron["metadata"]["ownerReferences"][0]["uid"] == obj["metadata"]["uid"]
    labels = cron["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "recsys-operator"
    assert labels["recsys.dev/feature-view"] == "users"
    job = cron["spec"]["jobTemplate"]["spec"]
    assert job["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [2]
    pod = job["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    container = pod["containers"][0]
    assert container["image"] == "registry.test/recsys-workloads:test"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["env"][-1]["valueFrom"]["secretKeyRef"] == {
        "name": "redis-auth",
        "key": "password",
    }

    cm = get(testbed, "configmap", "users-materialize", namespace)
    assert cm is not None
    config = json.loads(cm["data"]["config.json"])
    assert config["featureView"] == f"{namespace}.users"
    assert config["joinKey"] == "user_id"
    assert config["ttlSeconds"] == 86400
    assert config["features"] == [
        {"name": "age", "type": "int64"},
        {"name": "genres", "type": "string_list"},
    ]
    assert "password" not in cm["data"]["config.json"].lower()


#: A schedule that does not fire during a test: a scheduled Job newer than the one a test runs
#: would be the newest run the operator looks at.
ONCE_A_YEAR = {"schedule": "0 0 1 1 *"}


def test_ready_only_once_a_run_made_data_live(
    testbed: Testbed, namespace: str, operator: OperatorProcess
) -> None:
    apply(testbed, namespace, fv(cronJob=ONCE_A_YEAR))
    obj = eventually(lambda: reconciled(testbed, namespace), 60, "status", operator=operator)
    assert condition(obj, "Ready")["reason"] == "NotMaterialized"  # type: ignore[index]
    assert condition(obj, "Stale")["status"] == "Unknown"  # type: ignore[index]
    assert "staleness" not in obj["status"]
    watermark = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    materialize(testbed, namespace, watermark=watermark, version=4)
    obj = eventually(lambda: ready(testbed, namespace), 60, "Ready once live", operator=operator)
    assert condition(obj, "Ready")["reason"] == "Scheduled"  # type: ignore[index]
    stale = condition(obj, "Stale")
    assert (stale["status"], stale["reason"]) == ("False", "WithinLimit")  # type: ignore[index]
    assert obj["status"]["keyspaceVersion"] == 4
    # yearly: stale once the second New Year after the watermark is due
    assert obj["status"]["staleness"]["watermark"] == watermark
    assert 365 * 86400 < obj["status"]["staleness"]["limitSeconds"] <= 2 * 366 * 86400


def _metric(operator: OperatorProcess, name: str, namespace: str) -> float | None:
    """A sample of the operator's /metrics for the FeatureView ``users``, if exported."""
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics") as r:
        text = r.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == {"namespace": namespace, "name": "users"}:
                return float(sample.value)
    return None


def test_data_turns_stale_past_max_staleness_with_no_event_and_the_metric_shows_it(
    testbed: Testbed, namespace: str, operator: OperatorProcess
) -> None:
    # long enough for the run's result to reach status before the data turns stale
    limit = 20.0
    apply(testbed, namespace, fv(cronJob=ONCE_A_YEAR, maxStaleness=f"{limit:.0f}s"))
    eventually(lambda: reconciled(testbed, namespace), 60, "status", operator=operator)
    assert _metric(operator, "recsys_featureview_staleness_seconds", namespace) is None
    materialize(testbed, namespace)

    def fresh() -> dict[str, Any] | None:
        obj = ready(testbed, namespace)
        stale = condition(obj, "Stale")
        return obj if stale and stale["status"] == "False" else None

    obj = eventually(fresh, 60, "Ready and fresh", operator=operator)
    assert obj["status"]["staleness"]["limitSeconds"] == limit
    assert _metric(operator, "recsys_featureview_staleness_limit_seconds", namespace) == limit
    lag = _metric(operator, "recsys_featureview_staleness_seconds", namespace)
    assert lag is not None
    assert 0 <= lag < limit + 5

    # Nothing happens to the FeatureView or its children now: the operator's own requeue at
    # staleAfter is what finds it stale.
    def stale() -> dict[str, Any] | None:
        cond = condition(get(testbed, "featureview", "users", namespace), "Stale")
        return cond if cond and cond["status"] == "True" else None

    cond = eventually(stale, limit + 30, "Stale past maxStaleness", operator=operator)
    assert cond["reason"] == "PastLimit"
    assert "maxStaleness 20s" in cond["message"]
    lag = _metric(operator, "recsys_featureview_staleness_seconds", namespace)
    assert lag is not None
    assert lag >= limit
    time.sleep(1.5)
    later = _metric(operator, "recsys_featureview_staleness_seconds", namespace)
    assert later is not None
    assert later > lag, "the lag grows between reconciles (computed at each scrape)"

    def stale_event() -> bool:
        events = testbed.kubectl(
            "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=users",
            "-o", "json",
        ).stdout  # fmt: skip
        return '"reason": "Stale"' in events

    eventually(stale_event, 30, "a Stale Event", operator=operator)
    # Ready stays True: the data is served, only old.
    assert ready(testbed, namespace) is not None
    # A new run makes it fresh again.
    materialize(testbed, namespace, version=2)
    eventually(fresh, 60, "fresh again after a new run", operator=operator)


def test_spec_change_updates_the_cronjob(
    testbed: Testbed, namespace: str, operator: OperatorProcess
) -> None:
    apply(testbed, namespace, fv(cronJob=ONCE_A_YEAR))
    eventually(lambda: reconciled(testbed, namespace), 60, "status", operator=operator)
    materialize(testbed, namespace)
    eventually(lambda: ready(testbed, namespace), 60, "Ready", operator=operator)
    apply(testbed, namespace, fv(cronJob={"schedule": "0 * * * *", "suspend": True}))

    def updated() -> bool:
        cron = get(testbed, "cronjob", "users-materialize", namespace) or {}
        return cron.get("spec", {}).get("schedule") == "0 * * * *" and cron["spec"]["suspend"]

    eventually(updated, 60, "CronJob updated", operator=operator)
    obj = eventually(
        lambda: ready(testbed, namespace), 60, "Ready at generation 2", operator=operator
    )
    assert obj["status"]["observedGeneration"] == 2
    assert condition(obj, "Ready")["reason"] == "Suspended"  # type: ignore[index]


def test_removed_spec_fields_leave_the_cronjob(
    testbed: Testbed, namespace: str, operator: OperatorProcess
) -> None:
    """The reproduction from the foundations issue: resources set, then removed from the spec,
    stayed on the CronJob forever (the operator only checked that what it wants is there)."""
    resources = {"limits": {"memory": "3Gi"}, "requests": {"cpu": "500m", "memory": "1Gi"}}
    apply(testbed, namespace, fv(resources=resources))

    def container() -> dict[str, Any]:
        cron = get(testbed, "cronjob", "users-materialize", namespace) or {}
        spec = cron.get("spec", {}).get("jobTemplate", {}).get("spec", {})
        return spec.get("template", {}).get("spec", {}).get("containers", [{}])[0]

    eventually(
        lambda: container().get("resources", {}).get("limits", {}).get("memory") == "3Gi",
        60,
        "the CronJob has the limits",
        operator=operator,
    )
    apply(testbed, namespace, fv())  # the same manager, without materialization.resources
    eventually(
        lambda: not container().get("resources"),
        60,
        "the limits and requests are gone from the CronJob",
        operator=operator,
    )
    eventually(
        lambda: reconciled(testbed, namespace), 60, "status of generation 2", operator=operator
    )


def test_backfill_result_reaches_status_and_events(
    testbed: Testbed, namespace: str, operator: OperatorProcess
) -> None:
    apply(testbed, namespace, fv(backfill={"startTime": "2024-01-01T00:00:00Z"}))
    jobs = eventually(
        lambda: json.loads(testbed.kubectl("get", "jobs", "-n", namespace, "-o", "json").stdout)[
            "items"
        ],
        60,
        "backfill Job",
        operator=operator,
    )
    job = jobs[0]["metadata"]["name"]
    assert job.startswith("users-backfill-")
    finish_pod(
        testbed,
        namespace,
        job,
        exit_code=0,
        summary={
            "status": "Succeeded",
            **MaterializeSummary(
                feature_view=f"{namespace}.users",
                mode="full",
                mode_reason="mode: full requested",
                as_of="2024-05-01T00:00:00Z",
                watermark="2024-05-01T00:00:00Z",
                rows_read=1000,
                entities_written=943,
                read_seconds=0.5,
                write_seconds=1.0,
                rows_per_second=943,
                version=7,
                layers=[7],
                duration_seconds=1.5,
            ).to_wire(),
        },
    )

    def materialized() -> dict[str, Any] | None:
        obj = get(testbed, "featureview", "users", namespace)
        cond = condition(obj, "Materialized")
        return obj if cond and cond["status"] == "True" else None

    obj = eventually(materialized, 60, "Materialized", operator=operator)
    assert obj["status"]["lastBackfill"]["rows"] == 943
    assert obj["status"]["lastBackfill"]["watermark"] == "2024-05-01T00:00:00Z"
    assert obj["status"]["keyspaceVersion"] == 7
    # The backfill is the newest materialization: `kubectl get fv` shows its rows.
    assert obj["status"]["lastMaterialization"]["rows"] == 943
    columns = testbed.kubectl("get", "fv", "users", "-n", namespace).stdout
    assert "943" in columns
    events = testbed.kubectl(
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        "involvedObject.name=users",
        "-o",
        "json",
    ).stdout
    assert "wrote 943 entities" in events


def test_bad_input_fails_fast_and_says_why(
    testbed: Testbed, namespace: str, operator: OperatorProcess
) -> None:
    apply(testbed, namespace, fv(backfill={"startTime": "2024-01-01T00:00:00Z"}))
    job = eventually(
        lambda: json.loads(testbed.kubectl("get", "jobs", "-n", namespace, "-o", "json").stdout)[
            "items"
        ],
        60,
        "backfill Job",
        operator=operator,
    )[0]["metadata"]["name"]
    message = "source: column 'age' is missing from s3://data/users/; add it or remove the feature"
    finish_pod(
        testbed,
        namespace,
        job,
        exit_code=2,
        summary={"status": "Failed", "reason": "BadInput", "message": message},
    )

    def degraded() -> dict[str, Any] | None:
        cond = condition(get(testbed, "featureview", "users", namespace), "Degraded")
        return cond if cond and cond["status"] == "True" else None

    cond = eventually(degraded, 60, "Degraded", operator=operator)
    assert cond["reason"] == "BadInput"
    assert "column 'age' is missing" in cond["message"]
    # podFailurePolicy failed the Job at once: one pod, no retries of bad input.
    pods = json.loads(
        testbed.kubectl(
            "get", "pods", "-n", namespace, "-l", f"job-name={job}", "-o", "json"
        ).stdout
    )["items"]
    assert len(pods) == 1
    job_obj = get(testbed, "job", job, namespace)
    assert condition(job_obj, "Failed")["reason"] == "PodFailurePolicy"  # type: ignore[index]


def test_spec_the_workloads_cannot_run_is_reported_not_crashed(
    testbed: Testbed, namespace: str, operator: OperatorProcess
) -> None:
    bad = fv()
    bad["spec"]["features"].append({"name": "avatar", "dtype": "Bytes"})
    apply(testbed, namespace, bad)

    def invalid() -> dict[str, Any] | None:
        cond = condition(get(testbed, "featureview", "users", namespace), "Ready")
        return cond if cond and cond["reason"] == "InvalidSpec" else None

    cond = eventually(invalid, 60, "InvalidSpec", operator=operator)
    assert "spec.features[2].dtype" in cond["message"]
    assert get(testbed, "cronjob", "users-materialize", namespace) is None
    # The operator is alive and keeps serving other objects.
    other = fv()
    other["metadata"]["name"] = "items"
    apply(testbed, namespace, other)
    eventually(
        lambda: reconciled(testbed, namespace, "items"),
        60,
        "the other FeatureView's status",
        operator=operator,
    )


def test_deleted_child_is_recreated_and_owner_deletion_cascades(
    testbed: Testbed, namespace: str, operator: OperatorProcess
) -> None:
    apply(testbed, namespace, fv())
    eventually(lambda: reconciled(testbed, namespace), 60, "status", operator=operator)
    testbed.kubectl("delete", "cronjob", "users-materialize", "-n", namespace)
    eventually(
        lambda: get(testbed, "cronjob", "users-materialize", namespace),
        60,
        "CronJob recreated",
        operator=operator,
    )
    testbed.kubectl("delete", "featureview", "users", "-n", namespace)
    eventually(
        lambda: (
            get(testbed, "cronjob", "users-materialize", namespace) is None
            and get(testbed, "configmap", "users-materialize", namespace) is None
        ),
        60,
        "children garbage-collected",
        operator=operator,
    )


def _writes_by_operator(testbed: Testbed, namespace: str, since: float) -> list[dict[str, Any]]:
    writes = []
    for line in testbed.audit_log.read_text().splitlines():
        event = json.loads(line)
        agent = event.get("userAgent", "")
        if not (agent.startswith("recsys-operator") or agent.startswith("kopf")):
            continue
        received = dt.datetime.fromisoformat(event["requestReceivedTimestamp"]).timestamp()
        if received < since:
            continue
        if event.get("objectRef", {}).get("namespace") == namespace:
            writes.append(event)
    return writes


def test_restart_creates_nothing_twice_and_a_quiet_period_makes_no_writes(
    testbed: Testbed, namespace: str, operator: OperatorProcess
) -> None:
    # A schedule that does not fire during the test: a scheduled run would be a real change
    # (a Job, then a status write) inside the quiet period.
    backfill = {"startTime": "2024-01-01T00:00:00Z"}
    apply(testbed, namespace, fv(backfill=backfill, cronJob=ONCE_A_YEAR))
    eventually(lambda: reconciled(testbed, namespace), 60, "status", operator=operator)
    uids = {
        kind: get(testbed, kind, name, namespace)["metadata"]["uid"]  # type: ignore[index]
        for kind, name in (("cronjob", "users-materialize"), ("configmap", "users-materialize"))
    }
    operator.kill()
    operator.start()
    time.sleep(10)  # the restarted operator lists everything and reconciles it
    quiet_from = time.time()
    time.sleep(30)
    for (kind, name), uid in zip(
        (("cronjob", "users-materialize"), ("configmap", "users-materialize")),
        uids.values(),
        strict=True,
    ):
        assert get(testbed, kind, name, namespace)["metadata"]["uid"] == uid  # type: ignore[index]
    # Only the backfill Job counts: a scheduled run is the CronJob controller's creation.
    jobs = json.loads(testbed.kubectl(
        "get", "jobs", "-n", namespace, "-l", "app.kubernetes.io/component=backfill", "-o", "json"
    ).stdout)  # fmt: skip
    assert len(jobs["items"]) == 1, "the backfill Job was not created twice"
    time.sleep(2)  # the audit log is flushed in batches of at most 1 s
    assert _writes_by_operator(testbed, namespace, 0), "the audit filter sees operator writes"
    writes = _writes_by_operator(testbed, namespace, quiet_from)
    assert writes == [], [(w["verb"], w["objectRef"]) for w in writes]


def test_a_split_backfill_is_an_indexed_job_and_status_reports_the_whole_run(
    testbed: Testbed, namespace: str, operator: OperatorProcess
) -> None:
    refused = testbed.kubectl(
        "apply", "--server-side", "-n", namespace, "-f", "-", check=False,
        input=json.dumps(fv(parallelism=65)),
    )  # fmt: skip
    assert refused.returncode != 0
    assert "spec.materialization.parallelism" in refused.stderr, refused.stderr

    apply(testbed, namespace, fv(parallelism=2, backfill={"startTime": "2024-01-01T00:00:00Z"}))
    job = eventually(
        lambda: json.loads(testbed.kubectl("get", "jobs", "-n", namespace, "-o", "json").stdout)[
            "items"
        ],
        60,
        "backfill Job",
        operator=operator,
    )[0]
    name = job["metadata"]["name"]
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    env = {e["name"]: e for e in spec["template"]["spec"]["containers"][0]["env"]}
    field = env["RECSYS_RUN_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert field == "metadata.labels['batch.kubernetes.io/controller-uid']"

    def both_running() -> list[dict[str, Any]] | None:
        out = testbed.kubectl(
            "get", "pods", "-n", namespace, "-l", f"job-name={name}", "-o", "json"
        )
        pods = [p for p in json.loads(out.stdout)["items"] if p["status"].get("phase") == "Running"]
        return pods if len(pods) == 2 else None

    pods = eventually(both_running, 60, "two running pods", operator=operator)
    # the label the run id is read from is on every pod, the same value: the Job's UID
    uids = {p["metadata"]["labels"]["batch.kubernetes.io/controller-uid"] for p in pods}
    assert uids == {job["metadata"]["uid"]}
    indexes = sorted(
        p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] for p in pods
    )
    assert indexes == ["0", "1"]
    total = MaterializeSummary(
        feature_view=f"{namespace}.users", mode="full", mode_reason="mode: full requested",
        as_of="2024-05-01T00:00:00Z", watermark="2024-05-01T00:00:00Z", rows_read=2000,
        entities_written=1886, read_seconds=0.5, write_seconds=1.0, rows_per_second=1886,
        version=7, layers=[7], duration_seconds=1.5, shards=2,
    ).to_wire()  # fmt: skip
    worker = {"role": "worker", "featureView": f"{namespace}.users", "shard": 1, "shards": 2,
              "mode": "full", "rowsRead": 1000, "entitiesWritten": 943}  # fmt: skip
    # the switching shard ends first, the worker last: the status must still be the run's
    end_pod(testbed, namespace, pods[0]["metadata"]["name"], exit_code=0,
            summary={"status": "Succeeded", **total})  # fmt: skip
    time.sleep(1.1)  # a later finishedAt for the worker
    end_pod(testbed, namespace, pods[1]["metadata"]["name"], exit_code=0,
            summary={"status": "Succeeded", **worker})  # fmt: skip

    def materialized() -> dict[str, Any] | None:
        obj = get(testbed, "featureview", "users", namespace)
        cond = condition(obj, "Materialized")
        return obj if cond and cond["status"] == "True" else None

    obj = eventually(materialized, 60, "Materialized", operator=operator)
    assert obj["status"]["lastBackfill"]["rows"] == 1886
    assert obj["status"]["keyspaceVersion"] == 7
