"""The chart's monitoring objects: PodMonitors, a PrometheusRule and a Grafana dashboard.

They are checked by the real tools the objects are for, not by reading them back:

- the PodMonitors' selectors and ports against the Deployments the operator's planner builds
  for a gateway and a Triton (and the chart's own for the operator);
- ``promtool check rules`` on the rendered rules and on the dashboard's queries, and
  ``promtool test rules`` (tests/integration/chart_alerts_test.yaml) on alerts firing and not;
- the apiserver, with the Prometheus Operator's own CRDs installed, taking every object without
  pruning a field;
- a real Prometheus scraping a real operator (with a FeatureView whose data is stale) and a real
  gateway (some users answered 503, every answer a fallback) with the rendered rules loaded:
  every metric an expression names is one the processes export (Prometheus' own parser finds
  the names), every rule evaluates, and the stale-FeatureView, 5xx, fallback and Triton-down
  alerts go pending while the operator-down and gateway-down ones stay quiet.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import redis
import yaml
from serving_support import RECOMMENDER, build_artifacts, gateway_client, gateway_config, routing
from test_chart import CHART, Helm, kinds
from test_operator_featureview import ONCE_A_YEAR, apply, fv

from fixtures.kube import Testbed
from fixtures.operator import OperatorProcess, eventually, install_crds, materialize
from recsys_contract.keyspace import GatewayKeys
from recsys_operator.api.recommender import Recommender
from recsys_operator.planning import serving
from recsys_operator.planning.rollout import Routing
from recsys_workloads.gateway.config import parse_routing
from recsys_workloads.gateway.routing import choose_variant
from testbed.processes import free_port
from testbed.prometheus_server import (
    PrometheusServer,
    ScrapeJob,
    prometheus_operator_crds,
    promtool_binary,
    start_prometheus,
)
from testbed.redis_server import RedisServer

pytestmark = pytest.mark.testbed

HERE = Path(__file__).resolve().parent
ALERTS_TEST = HERE / "chart_alerts_test.yaml"
#: ``Helm.template`` renders release ``rel`` into namespace ``ops``.
OPERATOR_JOB = "ops/rel-recsys-operator"
GATEWAY_JOB = f"{OPERATOR_JOB}-gateway"
TRITON_JOB = f"{OPERATOR_JOB}-triton"
MONITORING_KINDS = ("PodMonitor", "ServiceMonitor", "PrometheusRule")
API_VERSIONS = [
    a for k in MONITORING_KINDS for a in ("--api-versions", f"monitoring.coreos.com/v1/{k}")
]
ENABLED: dict[str, Any] = {
    "monitoring": {
        "podMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "grafanaDashboard": {"enabled": True},
    }
}
#: What a Grafana variable stands for when the dashboard's queries are checked.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$namespace": ".*", "$recommender": ".*"}


@pytest.fixture
def helm(testbed: Testbed, tmp_path: Path) -> Helm:
    """test_chart's ``helm`` fixture, declared here because an imported fixture reads to ruff
    as an unused import that each test then redefines."""
    return Helm(testbed, tmp_path)


def with_values(**over: Any) -> dict[str, Any]:
    """ENABLED with ``over`` merged into ``monitoring`` (one level deep per part)."""
    monitoring = {k: dict(v) for k, v in ENABLED["monitoring"].items()}
    for part, values in over.items():
        monitoring.setdefault(part, {}).update(values)
    return {"monitoring": monitoring}


def rule_spec(docs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    (rule,) = kinds(docs)["PrometheusRule"]
    return dict(rule["spec"])


def alerts(spec: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in spec["groups"] for r in g["rules"]}


def dashboard(docs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    (config_map,) = [d for d in kinds(docs)["ConfigMap"] if "recsys.json" in d["data"]]
    return dict(json.loads(config_map["data"]["recsys.json"]))


def dashboard_queries(board: Mapping[str, Any]) -> dict[str, str]:
    """Each panel target's query, by panel title and refId, and each variable's selector, with
    the variables filled in."""
    out = {}
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            out[f"{panel['title']} {target['refId']}"] = expr
    # a variable's label_values(<selector>, <label>): the selector is PromQL too
    for variable in board["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict) and query["query"].startswith("label_values("):
            selector = query["query"].removeprefix("label_values(").rsplit(",", 1)[0]
            for name, value in GRAFANA_VARIABLES.items():
                selector = selector.replace(name, value)
            out[f"variable {variable['name']}"] = selector
    return out


def expressions(docs: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Every PromQL expression the chart ships: the alerts' and the dashboard's."""
    exprs = {f"alert {name}": rule["expr"] for name, rule in alerts(rule_spec(docs)).items()}
    exprs.update({f"panel {k}": v for k, v in dashboard_queries(dashboard(docs)).items()})
    return exprs


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(promtool_binary()), *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


# --- rendering ------------------------------------------------------------------------------


def test_monitoring_is_off_by_default(helm: Helm) -> None:
    by_kind = kinds(helm.render({}, *API_VERSIONS))
    assert not set(by_kind) & {*MONITORING_KINDS, "ConfigMap"}


@pytest.mark.parametrize(
    ("values", "kind", "setting"),
    [
        (with_values(podMonitor={"enabled": True}), "PodMonitor", "monitoring.podMonitor.enabled"),
        (with_values(), "PrometheusRule", "monitoring.prometheusRule.enabled"),
    ],
    ids=["podmonitor", "prometheusrule"],
)
def test_each_kind_must_be_served(
    helm: Helm, values: dict[str, Any], kind: str, setting: str
) -> None:
    others = [a for a in API_VERSIONS if a != "--api-versions" and not a.endswith(f"/{kind}")]
    extra = [a for v in others for a in ("--api-versions", v)]
    out = helm.template(values, *extra, check=False)
    assert out.returncode != 0
    assert (
        f"{setting} is true but this cluster does not serve monitoring.coreos.com/v1 {kind}"
        in out.stderr
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {**with_values(), "metrics": {"serviceMonitor": {"enabled": True}}},
            "monitoring.podMonitor.operator and metrics.serviceMonitor.enabled are both true",
        ),
        (
            # null removes a default key in Helm (an empty map would merge with the default)
            with_values(grafanaDashboard={"labels": {"grafana_dashboard": None}}),
            "monitoring.grafanaDashboard.labels is empty",
        ),
        (
            with_values(prometheusRule={"disabled": {"RecsysGatewayLatencyHihg": True}}),
            "RecsysGatewayLatencyHihg",
        ),
        (
            with_values(prometheusRule={"gateway": {"errorRatio": 5}}),
            "errorRatio",
        ),
    ],
    ids=["scraped-twice", "no-dashboard-label", "unknown-alert", "ratio-over-one"],
)
def test_bad_monitoring_values_are_refused_by_name(
    helm: Helm, values: dict[str, Any], message: str
) -> None:
    out = helm.template(values, *API_VERSIONS, check=False)
    assert out.returncode != 0
    assert message in out.stderr


def _recommender() -> Recommender:
    return Recommender.model_validate(
        {
            "apiVersion": "recsys.dev/v1alpha1",
            "kind": "Recommender",
            "metadata": {"name": "movies", "namespace": "team-a", "uid": "u", "generation": 1},
            "spec": {
                "interactions": {"path": "s3://d/i/"},
                "stores": {
                    "redis": {"url": "redis://r:6379/0"},
                    "artifacts": {"storageUri": "s3://m/"},
                },
            },
        }
    )


def _pod_template(objects: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    return deployment["spec"]["template"]  # type: ignore[no-any-return]


def _selects(monitor: Mapping[str, Any], template: Mapping[str, Any]) -> None:
    """The monitor selects the pod and names one of its ports, and each label its relabelings
    read is one the pod has."""
    labels = template["metadata"]["labels"]
    wanted = monitor["spec"]["selector"]["matchLabels"]
    assert wanted.items() <= labels.items(), (wanted, labels)
    ports = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in ports
    meta = {
        "__meta_kubernetes_pod_label_" + "".join(ch if ch.isalnum() else "_" for ch in k)
        for k in labels
    }
    for relabel in endpoint["relabelings"]:
        assert set(relabel.get("sourceLabels", [])) <= meta, relabel


@pytest.mark.parametrize("watch", [[], ["team-a", "team-b"]], ids=["all-namespaces", "namespaced"])
def test_pod_monitors_select_the_pods_the_operator_creates(helm: Helm, watch: list[str]) -> None:
    docs = helm.render({**with_values(), "watchNamespaces": watch}, *API_VERSIONS)
    monitors = {m["metadata"]["name"]: m for m in kinds(docs)["PodMonitor"]}
    assert set(monitors) == {
        "rel-recsys-operator",
        "rel-recsys-operator-gateway",
        "rel-recsys-operator-triton",
    }
    rec = _recommender()
    owner = {
        "apiVersion": "recsys.dev/v1alpha1",
        "kind": "Recommender",
        "metadata": {"name": "movies", "uid": "u"},
    }
    table = serving.routing_table(rec, Routing("v1", None, 0, None), {"v1": "s3://i/v1"})
    gateway = serving.gateway_objects(rec, owner, table, "img", {})
    triton = serving.triton_objects(rec, owner, "v1", "s3://m/v1", "img", "img")
    (deployment,) = kinds(docs)["Deployment"]
    for name, template in [
        ("rel-recsys-operator", deployment["spec"]["template"]),
        ("rel-recsys-operator-gateway", _pod_template(gateway)),
        ("rel-recsys-operator-triton", _pod_template(triton)),
    ]:
        _selects(monitors[name], template)
    # the other's pods are not selected: each port name means something else there
    gw, tr = monitors["rel-recsys-operator-gateway"], monitors["rel-recsys-operator-triton"]
    assert (
        not gw["spec"]["selector"]["matchLabels"].items()
        <= _pod_template(triton)["metadata"]["labels"].items()
    )
    assert (
        not tr["spec"]["selector"]["matchLabels"].items()
        <= _pod_template(gateway)["metadata"]["labels"].items()
    )
    for name in ("rel-recsys-operator-gateway", "rel-recsys-operator-triton"):
        scope = monitors[name]["spec"]["namespaceSelector"]
        assert scope == ({"matchNames": watch} if watch else {"any": True})
    assert monitors["rel-recsys-operator"]["spec"]["namespaceSelector"] == {"matchNames": ["ops"]}
    jobs = {
        name: next(
            r["replacement"]
            for r in m["spec"]["podMetricsEndpoints"][0]["relabelings"]
            if r["targetLabel"] == "job"
        )
        for name, m in monitors.items()
    }
    assert jobs == {
        "rel-recsys-operator": OPERATOR_JOB,
        "rel-recsys-operator-gateway": GATEWAY_JOB,
        "rel-recsys-operator-triton": TRITON_JOB,
    }
    assert monitors["rel-recsys-operator"]["spec"]["podMetricsEndpoints"][0]["honorLabels"] is True


def test_service_monitor_gives_the_operator_the_same_job(helm: Helm) -> None:
    values = {
        **with_values(podMonitor={"operator": False}),
        "metrics": {"serviceMonitor": {"enabled": True}},
    }
    by_kind = kinds(helm.render(values, *API_VERSIONS))
    (monitor,) = by_kind["ServiceMonitor"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["honorLabels"] is True
    assert {"action": "replace", "targetLabel": "job", "replacement": OPERATOR_JOB} in endpoint[
        "relabelings"
    ]
    assert {m["metadata"]["name"] for m in by_kind["PodMonitor"]} == {
        "rel-recsys-operator-gateway",
        "rel-recsys-operator-triton",
    }


def test_every_alert_can_be_disabled_and_the_schema_knows_them_all(helm: Helm) -> None:
    rendered = set(alerts(rule_spec(helm.render(with_values(), *API_VERSIONS))))
    schema = json.loads((CHART / "values.schema.json").read_text())
    known = schema["properties"]["monitoring"]["properties"]["prometheusRule"]["properties"]
    assert rendered == set(known["disabled"]["propertyNames"]["enum"])
    off = with_values(prometheusRule={"disabled": {"RecsysGatewayLatencyHigh": True}})
    assert set(alerts(rule_spec(helm.render(off, *API_VERSIONS)))) == rendered - {
        "RecsysGatewayLatencyHigh"
    }
    # a paused operator (replicas 0) is not an outage
    paused = {**with_values(), "replicas": 0}
    assert "RecsysOperatorDown" not in alerts(rule_spec(helm.render(paused, *API_VERSIONS)))


def test_alert_labels_thresholds_and_namespaces(helm: Helm) -> None:
    values = with_values(
        prometheusRule={
            "alertLabels": {"team": "recsys"},
            "gateway": {"errorRatio": 0.01, "fallbackRatio": 0.5, "latencyP99Seconds": 0.1},
        }
    )
    rules = alerts(rule_spec(helm.render(values, *API_VERSIONS)))
    assert all(r["labels"]["team"] == "recsys" for r in rules.values())
    assert {r["labels"]["severity"] for r in rules.values()} <= {"critical", "warning", "info"}
    assert rules["RecsysGatewayErrorRateHigh"]["expr"].endswith("> 0.01")
    assert rules["RecsysGatewayFallbackRateHigh"]["expr"].endswith("> 0.5")
    assert rules["RecsysGatewayLatencyHigh"]["expr"].endswith("> 0.1")
    for name, rule in rules.items():
        job = {"Gateway": GATEWAY_JOB, "Triton": TRITON_JOB}.get(
            next((p for p in ("Gateway", "Triton") if p in name), ""), OPERATOR_JOB
        )
        assert f'job="{job}"' in rule["expr"], (name, rule["expr"])


def test_dashboard_config_map_for_the_grafana_sidecar(helm: Helm) -> None:
    values = with_values(
        grafanaDashboard={"annotations": {"grafana_folder": "Recsys"}, "namespace": "grafana"}
    )
    docs = helm.render(values, *API_VERSIONS)
    (config_map,) = [d for d in kinds(docs)["ConfigMap"] if "recsys.json" in d["data"]]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Recsys"}
    assert config_map["metadata"]["namespace"] == "grafana"
    # taken as it is: Grafana's {{...}} legends are not Helm's
    assert dashboard(docs) == json.loads((CHART / "dashboards" / "recsys.json").read_text())
    board = dashboard(docs)
    assert board["uid"] == "recsys-operator"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


# --- promtool -------------------------------------------------------------------------------


def test_rules_and_dashboard_queries_pass_promtool_check(helm: Helm, tmp_path: Path) -> None:
    docs = helm.render(with_values(), *API_VERSIONS)
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule_spec(docs)))
    out = promtool("check", "rules", str(rules))
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(alerts(rule_spec(docs)))} rules found" in out.stdout
    # the dashboard's queries, as recording rules: promtool parses each one
    queries = dashboard_queries(dashboard(docs))
    recorded = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"recsys:dashboard:{i}", "expr": q}
                    for i, q in enumerate(queries.values())
                ],
            }
        ]
    }
    panels = tmp_path / "panels.yaml"
    panels.write_text(yaml.safe_dump(recorded))
    out = promtool("check", "rules", str(panels))
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_broken_rule_fails_promtool_check(tmp_path: Path) -> None:
    """The check above can fail: promtool refuses an expression that does not parse."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "g",
                        "rules": [{"alert": "Broken", "expr": "sum by (kind (rate(x[5m]))"}],
                    }
                ]
            }
        )
    )
    out = promtool("check", "rules", str(rules))
    assert out.returncode != 0
    assert "parse error" in out.stdout + out.stderr


def test_alerts_fire_and_stay_quiet_in_promtool_unit_tests(helm: Helm, tmp_path: Path) -> None:
    """chart_alerts_test.yaml against the rules as the chart renders them by default."""
    (tmp_path / "rules.yaml").write_text(
        yaml.safe_dump(rule_spec(helm.render(with_values(), *API_VERSIONS)))
    )
    shutil.copy(ALERTS_TEST, tmp_path / ALERTS_TEST.name)
    out = promtool("test", "rules", ALERTS_TEST.name, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr


# --- the apiserver with the Prometheus Operator's CRDs --------------------------------------


_crds_installed: set[str] = set()


def install_prometheus_operator_crds(testbed: Testbed) -> None:
    key = str(testbed.kubeconfig)
    if key in _crds_installed:
        return
    folder = prometheus_operator_crds()
    testbed.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(folder))
    testbed.kubectl("wait", "--for=condition=Established", "--timeout=60s", "-f", str(folder))

    def served() -> bool:
        out = testbed.kubectl(
            "api-resources", "--api-group=monitoring.coreos.com", "-o", "name", check=False
        )
        return all(k in out.stdout for k in ("podmonitors", "servicemonitors", "prometheusrules"))

    eventually(served, 60, "the monitoring.coreos.com kinds served")
    _crds_installed.add(key)


@pytest.mark.parametrize(
    "values",
    [
        with_values(),
        {
            **with_values(podMonitor={"operator": False}),
            "watchNamespaces": ["default"],
            "metrics": {"serviceMonitor": {"enabled": True}},
        },
    ],
    ids=["podmonitors", "servicemonitor-namespaced"],
)
def test_install_is_validated_by_the_prometheus_operator_crds(
    testbed: Testbed, helm: Helm, namespace: str, values: dict[str, Any]
) -> None:
    """helm finds the kinds served (no --api-versions) and the apiserver stores every object
    as rendered: a field the CRD's schema does not know would be pruned, and show here."""
    install_crds(testbed)
    install_prometheus_operator_crds(testbed)
    release = f"mon-{uuid.uuid4().hex[:5]}"
    with helm.installed(release, namespace, values):
        manifest = helm("get", "manifest", release, "--namespace", namespace).stdout
        rendered = [d for d in yaml.safe_load_all(manifest) if d]
        monitoring = [d for d in rendered if d["apiVersion"] == "monitoring.coreos.com/v1"]
        by_service = "serviceMonitor" in values.get("metrics", {})
        expected = {
            "PodMonitor": 2 if by_service else 3,
            "PrometheusRule": 1,
            "ServiceMonitor": 1 if by_service else 0,
        }
        got = {k: sum(d["kind"] == k for d in monitoring) for k in expected}
        assert got == expected
        for doc in monitoring:
            name = doc["metadata"]["name"]
            stored = json.loads(
                testbed.kubectl(
                    "get", doc["kind"].lower(), name, "-n", namespace, "-o", "json"
                ).stdout
            )
            assert stored["spec"] == doc["spec"], f"{doc['kind']} {name} was pruned"
        assert (
            testbed.kubectl(
                "get",
                "configmap",
                f"{release}-recsys-operator-dashboard",
                "-n",
                namespace,
                check=False,
            ).returncode
            == 0
        )


# --- a real Prometheus over a real operator and gateway -------------------------------------


NAMESPACE, NAME = RECOMMENDER.split(".")
USERS = range(1, 31)
#: users whose requests fail (Redis answers WRONGTYPE for their seen-set): a 5xx ratio of
#: about 20 % on each variant, far over the default 5 %
POISONED_PER_VARIANT = 3
WAIT_S = 60.0


@dataclass
class World:
    prometheus: PrometheusServer
    operator: OperatorProcess
    feature_view_namespace: str
    gateway_metrics: str
    rendered: list[dict[str, Any]]

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.prometheus.address}{path}?{query}", timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def operator_metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.operator.metrics_port}/metrics") as r:
            return str(r.read().decode())


def exported_names(exposition: str) -> set[str]:
    """The series names a /metrics page declares (its ``# TYPE`` lines, so also families that
    have no sample yet, such as an error counter before the first error) and those it has."""
    names: set[str] = set()
    suffixes = {
        "counter": ("", "_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
    }
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            base = name.removesuffix("_total") if kind == "counter" else name
            names.update(base + s for s in suffixes.get(kind, ("",)))
        elif line and not line.startswith("#"):
            names.add(line.split("{", 1)[0].split(" ", 1)[0])
    return names


def selector_names(world: World, expr: str) -> set[str]:
    """The metric names ``expr``'s selectors name, as Prometheus' own parser finds them."""
    tree = world.api("/api/v1/parse_query", query=expr)
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            # the API flattens a range's selector into its matrixSelector node
            if node.get("type") in ("vectorSelector", "matrixSelector"):
                name = node.get("name") or next(
                    (m["value"] for m in node.get("matchers", []) if m["name"] == "__name__"), ""
                )
                found.add(name)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(tree)
    return found


def unknown_metrics(
    world: World, exprs: Mapping[str, str], exported: set[str]
) -> dict[str, set[str]]:
    """Per expression, the names it selects that nothing exports (``up`` is Prometheus' own)."""
    out = {}
    for where, expr in exprs.items():
        missing = selector_names(world, expr) - exported - {"up"}
        if missing:
            out[where] = missing
    return out


@pytest.fixture(scope="module")
def redis_db(redis_server: RedisServer) -> str:
    url = redis_server.url_for_db(0)
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url


@pytest.fixture(scope="module")
def stale_operator(
    testbed: Testbed, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[OperatorProcess, str]]:
    """The real operator in a namespace of its own, with a FeatureView whose live data is two
    hours old against a one-hour maxStaleness."""
    install_crds(testbed)
    ns = f"monitoring-{uuid.uuid4().hex[:6]}"
    testbed.kubectl("create", "namespace", ns)
    proc = OperatorProcess(
        ns, testbed.kubeconfig, tmp_path_factory.mktemp("op") / "operator.log", free_port()
    )
    proc.start()
    try:
        apply(testbed, ns, fv(cronJob=ONCE_A_YEAR, maxStaleness="1h"))
        old = (dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
        eventually(
            lambda: (
                testbed.kubectl(
                    "get", "cronjob", "users-materialize", "-n", ns, check=False
                ).returncode
                == 0
            ),
            60,
            "the materialization CronJob",
            operator=proc,
        )
        materialize(testbed, ns, watermark=old)
        yield proc, ns
    finally:
        proc.stop()
        testbed.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(
    testbed: Testbed,
    tmp_path_factory: pytest.TempPathFactory,
    redis_db: str,
    stale_operator: tuple[OperatorProcess, str],
) -> AsyncIterator[World]:
    operator, fv_namespace = stale_operator
    workdir = tmp_path_factory.mktemp("monitoring")
    rendered = Helm(testbed, workdir).render(with_values(), *API_VERSIONS)
    rules = workdir / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule_spec(rendered)))

    art = build_artifacts(workdir / "serving", hnsw=False)
    nowhere = f"127.0.0.1:{free_port()}"  # no Triton: every answer is the fallback list
    table = routing(art.v1, nowhere, art.v2, 50)
    parsed = parse_routing(table)
    by_variant: dict[str, list[int]] = {"stable": [], "canary": []}
    for user in USERS:
        by_variant[choose_variant(parsed, user)].append(user)
    keys = GatewayKeys.of(RECOMMENDER)
    store = redis.Redis.from_url(redis_db)
    for users in by_variant.values():
        for user in users[:POISONED_PER_VARIANT]:
            store.set(keys.seen(user), "not a sorted set")
    store.close()

    cfg = gateway_config(art, nowhere, redis_db, routing=table)
    async with gateway_client(cfg) as (_gateway, base, session):
        for _ in range(600):
            async with session.get(f"{base}/readyz") as resp:
                body = await resp.json()
                if resp.status == 200 and not body.get("loading") and len(body["indexes"]) == 2:
                    break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"the gateway never loaded both indexes: {body}")

        async def one_round() -> None:
            for user in USERS:
                async with session.get(f"{base}/v1/recommendations?user_id={user}&k=5") as r:
                    await r.read()

        await one_round()  # every series exists before the first scrape
        jobs = [
            ScrapeJob(
                OPERATOR_JOB,
                [f"127.0.0.1:{operator.metrics_port}"],
                {"namespace": "ops", "pod": "rel-recsys-operator-0"},
                honor_labels=True,
            ),
            ScrapeJob(
                GATEWAY_JOB,
                [base.removeprefix("http://")],
                {"namespace": NAMESPACE, "recommender": NAME, "pod": "movies-gateway-0"},
            ),
            # a Triton that does not answer
            ScrapeJob(
                TRITON_JOB,
                [nowhere],
                {
                    "namespace": NAMESPACE,
                    "recommender": NAME,
                    "model_version": art.v1.name,
                    "pod": "movies-t-0",
                },
            ),
        ]
        prometheus = await asyncio.to_thread(
            start_prometheus, [], 1.0, 30, jobs=jobs, rule_files=[rules]
        )
        # traffic the whole time the tests look, so every rate has an increase in its window;
        # bounded: it stops with the fixture, at the latest after WAIT_S of test time
        stop = asyncio.Event()

        async def traffic() -> None:
            deadline = asyncio.get_running_loop().time() + 3 * WAIT_S
            while not stop.is_set() and asyncio.get_running_loop().time() < deadline:
                await one_round()
                await asyncio.sleep(0.5)

        sender = asyncio.create_task(traffic())
        try:
            async with session.get(f"{base}/metrics") as r:
                gateway_metrics = await r.text()
            yield World(prometheus, operator, fv_namespace, gateway_metrics, rendered)
        finally:
            # cancelled, not awaited to the end of its round: a request stuck behind a loaded
            # machine must not hold the teardown until the test timeout
            stop.set()
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            prometheus.stop()


async def _until(what: str, check: Callable[[], Any], world: World) -> Any:
    """Poll ``check`` (blocking, so in a thread) until it is truthy, for at most WAIT_S; fail
    with the alerts Prometheus has and the operator's log tail."""
    deadline = time.monotonic() + WAIT_S
    while True:
        got = await asyncio.to_thread(check)
        if got:
            return got
        if time.monotonic() > deadline:
            active = world.api("/api/v1/alerts")["alerts"]
            raise AssertionError(
                f"not {what} within {WAIT_S:.0f} s\nactive alerts: {active}\n"
                f"operator log:\n{world.operator.tail()}"
            )
        await asyncio.sleep(0.5)


@pytest.mark.redis
@pytest.mark.asyncio(loop_scope="module")
async def test_every_expression_names_a_metric_the_processes_export(world: World) -> None:
    exported = exported_names(world.operator_metrics()) | exported_names(world.gateway_metrics)
    exprs = expressions(world.rendered)
    assert len(exprs) > 20
    missing = await asyncio.to_thread(unknown_metrics, world, exprs, exported)
    assert not missing, f"metrics nothing exports: {missing}"
    # and the check can fail: one letter off is found
    typo = {
        "alert Typo": "rate(recsys_gateway_request_total[5m]) > 0",
        "panel Typo": 'recsys_featureview_stalenes_seconds{namespace=~".*"}',
    }
    assert await asyncio.to_thread(unknown_metrics, world, typo, exported) == {
        "alert Typo": {"recsys_gateway_request_total"},
        "panel Typo": {"recsys_featureview_stalenes_seconds"},
    }


@pytest.mark.redis
@pytest.mark.asyncio(loop_scope="module")
async def test_every_rule_evaluates_in_prometheus(world: World) -> None:
    names = set(alerts(rule_spec(world.rendered)))

    def evaluated() -> list[dict[str, Any]] | None:
        rules = [r for g in world.api("/api/v1/rules")["groups"] for r in g["rules"]]
        done = all(r.get("lastEvaluation", "").startswith("2") for r in rules)
        return rules if done and {r["name"] for r in rules} == names else None

    rules = await _until("every rule evaluated", evaluated, world)
    bad = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not bad


@pytest.mark.redis
@pytest.mark.asyncio(loop_scope="module")
async def test_alerts_go_pending_on_real_series(world: World) -> None:
    gateway = (("namespace", NAMESPACE), ("recommender", NAME))
    expected = {
        (
            "RecsysFeatureViewStale",
            (("name", "users"), ("namespace", world.feature_view_namespace)),
        ),
        *(
            (alert, (*gateway, ("variant", variant)))
            for alert in ("RecsysGatewayErrorRateHigh", "RecsysGatewayFallbackRateHigh")
            for variant in ("stable", "canary")
        ),
    }

    def active() -> dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, Any]]:
        out = {}
        for alert in world.api("/api/v1/alerts")["alerts"]:
            labels = dict(alert["labels"])
            name = labels.pop("alertname")
            labels.pop("severity")
            keep = ("name", "namespace", "recommender", "variant")
            key = tuple(sorted((k, v) for k, v in labels.items() if k in keep))
            out[(name, key)] = alert
        return out

    def all_there() -> dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, Any]] | None:
        got = active()
        names = {n for n, _ in got}
        return got if expected <= set(got) and "RecsysTritonDown" in names else None

    got = await _until("the expected alerts active", all_there, world)
    for key in expected:
        assert got[key]["state"] == "pending", got[key]  # each has a `for:` still to run
    stale = got[next(k for k in expected if k[0] == "RecsysFeatureViewStale")]
    assert stale["annotations"]["summary"] == (
        f"FeatureView {world.feature_view_namespace}/users is stale."
    )
    for key, alert in got.items():
        if key[0] == "RecsysGatewayErrorRateHigh":
            # 3 users of each variant's share of the 30 answered 503
            assert 0.05 < float(alert["value"]) < 0.5, alert
        if key[0] == "RecsysGatewayFallbackRateHigh":
            assert float(alert["value"]) == pytest.approx(1.0), alert
    quiet = {"RecsysOperatorDown", "RecsysGatewayDown", "RecsysGatewayRedisDown"}
    assert not quiet & {n for n, _ in got}, sorted(got)
