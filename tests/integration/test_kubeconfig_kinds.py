"""The operator process starts and reconciles with each kind of kubeconfig a user brings:
inline data (``kubectl config view --raw --flatten``), a ServiceAccount token alone, and an exec
credential plugin, whose short-lived token is fetched again after it expires and replaced when
the apiserver refuses it. kopf's watches (which deliver the events) and the operator's client
(which writes the children and status) must both authenticate for a FeatureView to get its
status.

The ServiceAccount has exactly the chart's RBAC (the ClusterRole): one release for the module.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubeconfig_support import ExecPluginScript, flattened, utcnow, with_user, write
from test_chart import Helm, token_kubeconfig
from test_operator_featureview import apply, fv, reconciled

from fixtures.kube import Testbed
from fixtures.operator import OperatorProcess, eventually, get, install_crds
from testbed.processes import free_port

pytestmark = pytest.mark.testbed

#: The exec plugin's token lifetime: short, so the test sees it expire.
LIFETIME = 8.0


@pytest.fixture(scope="module")
def account(
    testbed: Testbed, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """(namespace, name) of the ServiceAccount a chart release made, with its ClusterRole."""
    install_crds(testbed)
    namespace = f"kubeconfig-kinds-{uuid.uuid4().hex[:6]}"
    testbed.kubectl("create", "namespace", namespace)
    release = f"kk-{uuid.uuid4().hex[:6]}"
    helm = Helm(testbed, tmp_path_factory.mktemp("helm"))
    try:
        # No operator pod: the operator under test runs here, as that ServiceAccount.
        with helm.installed(release, namespace, {"watchNamespaces": [], "replicas": 0}):
            yield namespace, f"{release}-recsys-operator"
    finally:
        testbed.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def account_token(testbed: Testbed, account: tuple[str, str]) -> str:
    namespace, name = account
    return testbed.kubectl("create", "token", name, "-n", namespace, "--duration=1h").stdout.strip()


@contextlib.contextmanager
def operator_with(kubeconfig: Path, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    proc = OperatorProcess(namespace, kubeconfig, tmp_path / "operator.log", free_port())
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def reconciles(testbed: Testbed, namespace: str, operator: OperatorProcess, name: str) -> None:
    obj = fv()
    obj["metadata"]["name"] = name
    apply(testbed, namespace, obj)
    done = eventually(
        lambda: reconciled(testbed, namespace, name),
        90,
        f"FeatureView {name}'s status",
        operator=operator,
    )
    assert done["status"]["observedGeneration"] == done["metadata"]["generation"]
    assert get(testbed, "cronjob", f"{name}-materialize", namespace) is not None
    assert operator.popen is not None
    assert operator.popen.poll() is None, operator.tail()


def test_a_flattened_kubeconfig_with_inline_data(
    testbed: Testbed, crds: None, namespace: str, tmp_path: Path
) -> None:
    config = flattened(testbed)
    cluster, user = config["clusters"][0]["cluster"], config["users"][0]["user"]
    assert "certificate-authority-data" in cluster
    assert "certificate-authority" not in cluster
    if testbed.control_plane is not None:  # the testbed's admin is a client certificate
        assert {"client-certificate-data", "client-key-data"} <= set(user)
    kubeconfig = write(tmp_path / "flat.kubeconfig", config)
    with operator_with(kubeconfig, namespace, tmp_path) as operator:
        reconciles(testbed, namespace, operator, "users")


def test_a_token_only_kubeconfig(
    testbed: Testbed, crds: None, namespace: str, tmp_path: Path, account: tuple[str, str]
) -> None:
    kubeconfig = token_kubeconfig(testbed, *account, tmp_path / "sa.kubeconfig")
    with operator_with(kubeconfig, namespace, tmp_path) as operator:
        reconciles(testbed, namespace, operator, "users")


def test_an_exec_plugin_token_is_fetched_again_after_it_expires(
    testbed: Testbed, crds: None, namespace: str, tmp_path: Path, account: tuple[str, str]
) -> None:
    plugin = ExecPluginScript.write(
        tmp_path / "plugin", [account_token(testbed, account)], lifetime=LIFETIME
    )
    kubeconfig = with_user(testbed, plugin.user(), tmp_path / "exec.kubeconfig")
    with operator_with(kubeconfig, namespace, tmp_path) as operator:
        reconciles(testbed, namespace, operator, "users")
        first = plugin.runs()[0]
        # The token's expirationTimestamp is in whole seconds: it ends within LIFETIME.
        time.sleep(
            max(0.0, (first + dt.timedelta(seconds=LIFETIME + 1) - utcnow()).total_seconds())
        )
        reconciles(testbed, namespace, operator, "items")
        runs = plugin.runs()
        assert len(runs) >= 2, "the expired token was fetched again"
        assert runs[1] - runs[0] >= dt.timedelta(seconds=LIFETIME - 1.5), (
            "the plugin ran again while its token was valid",
            runs,
        )
        assert len(runs) <= 2 + (utcnow() - first).total_seconds() / (LIFETIME - 1.5)


def test_an_exec_plugin_token_the_apiserver_refuses_is_replaced(
    testbed: Testbed, crds: None, namespace: str, tmp_path: Path, account: tuple[str, str]
) -> None:
    """The first token is refused (401) by kopf's first watch or the client's first request,
    whichever comes first; both must then go on with the plugin's next token."""
    plugin = ExecPluginScript.write(
        tmp_path / "plugin", ["not-a-token", account_token(testbed, account)], lifetime=3600
    )
    kubeconfig = with_user(testbed, plugin.user(), tmp_path / "exec.kubeconfig")
    with operator_with(kubeconfig, namespace, tmp_path) as operator:
        reconciles(testbed, namespace, operator, "users")
        assert len(plugin.runs()) == 2, "one run for the refused token, one for its successor"
