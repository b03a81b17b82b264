"""The precompute CronJob and Job, planned without a cluster: present, absent, and changed
with the spec and the stable version, one row per case."""

from __future__ import annotations

import json
from typing import Any

import pytest
from api_objects import recommender

from recsys_contract import gateway as wire
from recsys_contract.precompute import Audience, PrecomputeConfig
from recsys_contract.repository import RepositoryConfig
from recsys_operator.api.recommender import Recommender
from recsys_operator.planning import precompute as planner
from recsys_operator.planning.rollout import Routing
from recsys_operator.planning.serving import (
    gateway_config,
    repository_config,
    routing_table,
    triton_objects,
)

OWNER = {"apiVersion": "recsys.dev/v1alpha1", "kind": "Recommender",
         "metadata": {"name": "movies", "uid": "u-1"}}  # fmt: skip
SECRET = {"name": "redis", "key": "password"}
HEAD = {"schedule": "@hourly", "audience": {"mostActive": 1000}}


def rec(precompute: dict[str, Any] | None = None, **spec: Any) -> Recommender:
    serving = {"precompute": precompute} if precompute is not None else {}
    return recommender(serving=serving, **spec)


def table(stable: str = "movies-v1", canary: str | None = None) -> wire.RoutingTable:
    def variant(v: str) -> wire.Variant:
        return wire.Variant(model_version=v, triton=f"{v}:8000", index=f"s3://m/indexes/{v}")

    return wire.RoutingTable(
        stable=variant(stable),
        canary=variant(canary) if canary else None,
        canary_weight=20 if canary else 0,
    )


def config_of(config_map: dict[str, Any]) -> PrecomputeConfig:
    return PrecomputeConfig.model_validate(json.loads(config_map["data"]["config.json"]))


def plan(r: Recommender, t: wire.RoutingTable | None = None) -> planner.PrecomputePlan:
    out = planner.precompute_plan(r, OWNER, "img", t or table(), {})
    assert out is not None
    return out


@pytest.mark.parametrize(
    ("case", "audience", "want"),
    [
        ("a count", {"mostActive": 1000},
         Audience(most_active=1000, window_seconds=86400.0)),
        ("a share", {"mostActive": "5%"},
         Audience(most_active_percent=5, window_seconds=86400.0)),
        ("every active user", {"mostActive": "100%", "window": "1h"},
         Audience(most_active_percent=100, window_seconds=3600.0)),
        ("its own window", {"mostActive": 10, "window": "30m"},
         Audience(most_active=10, window_seconds=1800.0)),
        ("all users", {"all": True}, Audience(all=True)),
    ],
)  # fmt: skip
def test_the_audience_reaches_the_job(case: str, audience: dict[str, Any], want: Audience) -> None:
    cfg = config_of(plan(rec({**HEAD, "audience": audience})).config_map)
    assert cfg.audience == want, case


@pytest.mark.parametrize(
    ("case", "r", "schedule", "tz", "suspend", "top_n", "max_age"),
    [
        ("defaults", rec(HEAD), "@hourly", None, False, 100, "24h"),
        ("its own schedule and time zone",
         rec({**HEAD, "schedule": "5 * * * *", "timeZone": "Europe/Paris"}),
         "5 * * * *", "Europe/Paris", False, 100, "24h"),
        ("suspended", rec({**HEAD, "suspend": True}), "@hourly", None, True, 100, "24h"),
        ("topN and maxAge", rec({**HEAD, "topN": 40, "maxAge": "2h"}),
         "@hourly", None, False, 40, "2h"),
    ],
)  # fmt: skip
def test_the_cronjob_follows_the_spec(
    case: str,
    r: Recommender,
    schedule: str,
    tz: str | None,
    suspend: bool,
    top_n: int,
    max_age: str,
) -> None:
    p = plan(r)
    spec = p.cron_job["spec"]
    assert (spec["schedule"], spec.get("timeZone"), spec["suspend"]) == (schedule, tz, suspend)
    assert spec["concurrencyPolicy"] == "Forbid", case
    cfg = config_of(p.config_map)
    assert cfg.top_n == top_n, case
    assert cfg.gateway.precomputed == wire.Precomputed(max_age=max_age), case
    # the gateway is told the same maxAge the lists are written with
    assert gateway_config(r, table(), {}).precomputed == cfg.gateway.precomputed
    assert p.config_map["metadata"]["name"] == p.cron_job["metadata"]["name"] == "movies-precompute"


@pytest.mark.parametrize(
    ("case", "r"),
    [("unset", rec()), ("unset with the rest of serving set", rec(None, ranking={"topK": 10}))],
)
def test_unset_means_no_objects_and_no_lists_read(case: str, r: Recommender) -> None:
    assert planner.precompute_plan(r, OWNER, "img", table(), {}) is None, case
    assert planner.precompute_config(r, table(), {}) is None, case
    assert gateway_config(r, table(), {}).precomputed is None, case


@pytest.mark.parametrize(
    ("case", "t", "stable"),
    [
        ("the stable alone", table("movies-v1"), "movies-v1"),
        ("a canary is never pre-computed", table("movies-v1", "movies-v2"), "movies-v1"),
        ("a promotion moves the lists to the new stable", table("movies-v2"), "movies-v2"),
    ],
)
def test_the_lists_are_the_stable_versions(case: str, t: wire.RoutingTable, stable: str) -> None:
    p = plan(rec(HEAD), t)
    cfg = config_of(p.config_map)
    assert cfg.gateway.routing.stable.model_version == stable, case
    assert cfg.gateway.routing.canary is None, case
    (main,) = p.cron_job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert {"name": planner.MODEL_VERSION_ENV, "value": stable} in main["env"], case
    assert p.now.job["metadata"]["name"] == f"movies-precompute-{stable}", case
    assert p.now.job["metadata"]["labels"]["recsys.dev/model-version"] == stable
    assert p.now.config_map["metadata"]["name"] == p.now.job["metadata"]["name"]
    assert config_of(p.now.config_map) == cfg, case


def test_a_promotion_changes_the_cronjob_and_nothing_else_does() -> None:
    before = plan(rec(HEAD), table("movies-v1"))
    assert plan(rec(HEAD), table("movies-v1")) == before  # deterministic: no churn
    # a canary's weight is no reason to touch the CronJob
    assert plan(rec(HEAD), table("movies-v1", "movies-v2")) == before
    after = plan(rec(HEAD), table("movies-v2"))
    assert after.cron_job != before.cron_job
    assert after.config_map != before.config_map
    assert after.now.job["metadata"]["name"] != before.now.job["metadata"]["name"]


@pytest.mark.parametrize(
    ("case", "r", "jobs", "stable", "removed"),
    [
        ("the stable's Job stays", rec(HEAD), ["movies-precompute-movies-v1"], "movies-v1", []),
        ("a previous stable's Job goes", rec(HEAD),
         ["movies-precompute-movies-v1", "movies-precompute-movies-v2"], "movies-v2",
         ["movies-precompute-movies-v1"]),
        ("every Job goes with the field", rec(), ["movies-precompute-movies-v1"], "movies-v1",
         ["movies-precompute-movies-v1"]),
        ("every Job goes without a stable version", rec(HEAD),
         ["movies-precompute-movies-v1"], None, ["movies-precompute-movies-v1"]),
        ("to Batch: the Hybrid Job goes (its pod has no Triton)",
         recommender(serving={"precompute": {**HEAD, "mode": "Batch"},
                              "rollout": {"steps": []}}),
         ["movies-precompute-movies-v1", "movies-precompute-batch-movies-v1"], "movies-v1",
         ["movies-precompute-movies-v1"]),
        ("to Hybrid: the Batch Job goes", rec(HEAD),
         ["movies-precompute-movies-v1", "movies-precompute-batch-movies-v1"], "movies-v1",
         ["movies-precompute-batch-movies-v1"]),
    ],
)  # fmt: skip
def test_stale_jobs(
    case: str, r: Recommender, jobs: list[str], stable: str | None, removed: list[str]
) -> None:
    assert planner.stale_jobs(r, jobs, stable) == removed, case


def test_the_pod_is_least_privilege_and_gets_its_secrets() -> None:
    r = recommender(
        stores={"redis": {"url": "redis://r:6379/0", "passwordSecretRef": SECRET,
                          "keyPrefix": "team-a:"},
                "artifacts": {"storageUri": "s3://m/", "secretRef": {"name": "s3"}}},
        training={"image": "train:1"},
        serving={"precompute": HEAD},
    )  # fmt: skip
    p = plan(r)
    cfg = config_of(p.config_map)
    assert cfg.gateway.key_prefix == "team-a:"
    assert cfg.gateway.redis_url == "redis://r:6379/0"
    for job in (p.cron_job["spec"]["jobTemplate"]["spec"], p.now.job["spec"]):
        pod = job["template"]["spec"]
        (main,) = pod["containers"]
        assert main["image"] == "train:1"
        assert main["command"] == ["python", "-m", "recsys_workloads.precompute"]
        assert {"name": "REDIS_PASSWORD", "valueFrom": {"secretKeyRef": SECRET}} in main["env"]
        assert main["envFrom"] == [{"secretRef": {"name": "s3"}}]
        assert pod["automountServiceAccountToken"] is False
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert main["securityContext"]["readOnlyRootFilesystem"] is True
        assert main["securityContext"]["allowPrivilegeEscalation"] is False
        assert main["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        assert job["podFailurePolicy"]["rules"][0]["action"] == "FailJob"
    assert p.cron_job["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert p.now.job["metadata"]["ownerReferences"][0]["uid"] == "u-1"


# --- Batch mode: no Triton Deployment; each precompute pod runs its own -------------------

BATCH = {**HEAD, "mode": "Batch"}
BATCH_IMAGES = planner.BatchImages("s3://m/movies-v1", "triton:1", "trainer:1")


def batch_rec(**serving: Any) -> Recommender:
    return recommender(serving={"precompute": BATCH, "rollout": {"steps": []}, **serving})


def batch_plan(r: Recommender, t: wire.RoutingTable | None = None) -> planner.PrecomputePlan:
    out = planner.precompute_plan(r, OWNER, "img", t or table(), {}, BATCH_IMAGES)
    assert out is not None
    return out


def pods(p: planner.PrecomputePlan) -> list[dict[str, Any]]:
    return [
        p.cron_job["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        p.now.job["spec"]["template"]["spec"],
    ]


@pytest.mark.parametrize(
    ("case", "r", "serving_objects", "gateway_triton", "init_containers"),
    [
        ("Hybrid: a Triton per version, the gateway calls it, the Job uses it",
         rec(HEAD), ["ConfigMap", "Deployment", "Service"], "movies-triton-movies-v1", []),
        ("Hybrid named: the same", rec({**HEAD, "mode": "Hybrid"}),
         ["ConfigMap", "Deployment", "Service"], "movies-triton-movies-v1", []),
        ("Batch: no Triton objects, no address, the pod brings its own",
         batch_rec(), [], None, ["repository", "triton"]),
        ("Batch with a GPU: still none of them", batch_rec(triton={"resources": {"limits":
         {"nvidia.com/gpu": 1}}}), [], None, ["repository", "triton"]),
    ],
)  # fmt: skip
def test_batch_mode_runs_triton_only_inside_the_precompute_pods(
    case: str,
    r: Recommender,
    serving_objects: list[str],
    gateway_triton: str | None,
    init_containers: list[str],
) -> None:
    objs = triton_objects(r, OWNER, "movies-v1", "s3://m/movies-v1", "triton:1", "trainer:1")
    assert [o["kind"] for o in objs] == serving_objects, case
    t = routing_table(r, Routing("movies-v1", None, 0), {"movies-v1": "s3://m/i/movies-v1"})
    gw = gateway_config(r, t, {})
    triton = gw.routing.stable.triton
    assert (triton.split(".")[0] if triton else None) == gateway_triton, case
    assert gw.precomputed is not None, case  # stored lists are read in both modes
    p = planner.precompute_plan(r, OWNER, "img", t, {}, BATCH_IMAGES)
    assert p is not None
    job_triton = config_of(p.config_map).gateway.routing.stable.triton
    assert job_triton == (planner.LOCAL_TRITON if gateway_triton is None else triton), case
    for pod in pods(p):
        assert [c["name"] for c in pod.get("initContainers", [])] == init_containers, case
        assert [c["name"] for c in pod["containers"]] == ["main"], case
    batch = "batch-" if gateway_triton is None else ""
    assert p.now.job["metadata"]["name"] == f"movies-precompute-{batch}movies-v1", case


def test_the_batch_pod_builds_the_repository_and_runs_triton_as_a_native_sidecar() -> None:
    r = batch_rec(
        triton={"image": "my-triton:2", "maxBatchSize": 32,
                "resources": {"limits": {"nvidia.com/gpu": 1}},
                "nodeSelector": {"gpu": "a100"},
                "tolerations": [{"key": "gpu", "operator": "Exists"}]},
    )  # fmt: skip
    p = batch_plan(r)
    for pod, config_map in zip(pods(p), (p.config_map, p.now.config_map), strict=True):
        builder, triton = pod["initContainers"]
        (main,) = pod["containers"]
        # the repository builder reads its own file of the pod's ConfigMap
        assert builder["image"] == "trainer:1"
        assert builder["command"] == ["python", "-m", "recsys_workloads.serving.repository"]
        assert builder["args"] == ["--config", "/etc/recsys/repository.json"]
        repo = RepositoryConfig.model_validate(
            json.loads(config_map["data"][planner.REPOSITORY_CONFIG_FILE])
        )
        assert repo == repository_config(r, "s3://m/movies-v1")
        assert (repo.device, repo.max_batch_size) == ("cuda", 32)
        assert "restartPolicy" not in builder  # runs to completion before Triton starts
        # Triton: a sidecar (ends with the main container, so the Job completes), whose
        # startup probe holds the precompute container until the models are loaded
        assert triton["restartPolicy"] == "Always"
        assert triton["image"] == "my-triton:2"
        assert triton["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8000}
        assert triton["resources"] == {"limits": {"nvidia.com/gpu": 1}}
        assert {"name": "models", "mountPath": "/models", "readOnly": True} in triton[
            "volumeMounts"
        ]
        assert {"name": "models", "emptyDir": {}} in pod["volumes"]
        assert pod["nodeSelector"] == {"gpu": "a100"}
        assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists"}]
        assert pod["restartPolicy"] == "Never"
        # the same least privilege as every pod, for every container
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for c in (builder, triton, main):
            assert c["securityContext"]["readOnlyRootFilesystem"] is True, c["name"]
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, c["name"]
            assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}, c["name"]
        assert main["image"] == "img"
    assert config_of(p.config_map).gateway.routing.stable.triton == "127.0.0.1:8000"


def test_batch_mode_needs_what_the_pods_triton_runs_from() -> None:
    with pytest.raises(ValueError, match="Batch mode"):
        planner.precompute_plan(batch_rec(), OWNER, "img", table(), {})


def test_a_gateway_config_without_triton_must_read_stored_lists() -> None:
    t = wire.RoutingTable(stable=wire.Variant(model_version="movies-v1", index="s3://i"))
    with pytest.raises(ValueError, match="set precomputed"):
        wire.GatewayConfig(recommender="ns.movies", routing=t, redis_url="redis://r:6379/0")
    with pytest.raises(ValueError, match="the Job computes the lists on it"):
        PrecomputeConfig(
            gateway=wire.GatewayConfig(
                recommender="ns.movies",
                routing=t,
                redis_url="redis://r:6379/0",
                precomputed=wire.Precomputed(),
            ),
            audience=Audience(all=True),
        )
