"""The operator's client and kopf login on the real apiserver, in this process: paginated
lists, a 401 answered with fresh credentials (exec plugin, rotated service-account token),
and kopf's ConnectionInfo from the same loaded configuration for each kind of kubeconfig."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import kopf
import pytest
from kubeconfig_support import (
    ExecPluginScript,
    flattened,
    reader_token,
    server_host_port,
    service_account_dir,
    utcnow,
    with_user,
    write,
)
from prometheus_client import REGISTRY

from fixtures.kube import Testbed
from recsys_operator.kube import ApiError, KubeClient
from recsys_operator.kubeconfig import Credentials, load

pytestmark = pytest.mark.testbed


def requests(verb: str, kind: str) -> float:
    value = REGISTRY.get_sample_value(
        "recsys_operator_api_requests_total", {"verb": verb, "kind": kind}
    )
    return value or 0.0


@pytest.fixture
async def admin(testbed: Testbed) -> AsyncIterator[KubeClient]:
    kube = KubeClient(load(str(testbed.kubeconfig)))
    yield kube
    await kube.close()


async def test_a_list_reads_every_page_and_counts_each(
    testbed: Testbed, namespace: str, admin: KubeClient
) -> None:
    maps = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"page-{i}", "labels": {"page-test": "yes" if i < 7 else "no"}},
        }
        for i in range(8)
    ]
    listed = {"apiVersion": "v1", "kind": "List", "items": maps}
    testbed.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(listed))
    before = requests("get", "ConfigMap")
    items, version = await admin.list_with_version(
        "v1", "ConfigMap", namespace, {"page-test": "yes"}, page_size=2
    )
    assert sorted(i["metadata"]["name"] for i in items) == [f"page-{i}" for i in range(7)]
    assert requests("get", "ConfigMap") - before == 4  # 2 + 2 + 2 + 1
    assert all(i["kind"] == "ConfigMap" and i["apiVersion"] == "v1" for i in items)
    assert int(version) > 0
    # The default page holds them all: one request.
    before = requests("get", "ConfigMap")
    assert len(await admin.list("v1", "ConfigMap", namespace, {"page-test": "yes"})) == 7
    assert requests("get", "ConfigMap") - before == 1


async def test_an_exec_token_refused_is_replaced_once(
    testbed: Testbed, namespace: str, tmp_path: Path
) -> None:
    token = reader_token(testbed, namespace)
    plugin = ExecPluginScript.write(tmp_path / "p", ["not-a-token", token], lifetime=3600)
    kube = KubeClient(load(str(with_user(testbed, plugin.user(), tmp_path / "exec.kubeconfig"))))
    try:
        before = requests("get", "ConfigMap")
        assert await kube.list("v1", "ConfigMap", namespace) is not None
        assert len(plugin.runs()) == 2, "the 401 made the plugin run again, once"
        assert requests("get", "ConfigMap") - before == 1, "the retry is part of one request"
        await kube.list("v1", "ConfigMap", namespace)
        assert len(plugin.runs()) == 2, "a valid token is kept"
        info = plugin.exec_info()
        assert info["kind"] == "ExecCredential"
        assert info["spec"]["interactive"] is False
        assert info["spec"]["cluster"]["server"] == kube.server
    finally:
        await kube.close()


async def test_an_exec_token_refused_twice_is_an_error_not_a_loop(
    testbed: Testbed, namespace: str, tmp_path: Path
) -> None:
    plugin = ExecPluginScript.write(tmp_path / "p", ["not-a-token"], lifetime=3600)
    kube = KubeClient(load(str(with_user(testbed, plugin.user(), tmp_path / "exec.kubeconfig"))))
    try:
        with pytest.raises(ApiError) as err:
            await kube.list("v1", "ConfigMap", namespace)
        assert err.value.status == 401
        assert err.value.retryable, "credentials, not the object: a reconcile backs off"
        assert len(plugin.runs()) == 2
    finally:
        await kube.close()


async def test_an_expired_exec_token_is_fetched_again_for_kopf_and_the_client(
    testbed: Testbed, namespace: str, tmp_path: Path
) -> None:
    token = reader_token(testbed, namespace)
    plugin = ExecPluginScript.write(tmp_path / "p", [token], lifetime=5)
    creds = load(str(with_user(testbed, plugin.user(), tmp_path / "exec.kubeconfig")))
    first = await creds.login()
    assert first.token == token
    assert first.expiration is not None
    assert 0 < (first.expiration - utcnow()).total_seconds() <= 5
    kube = KubeClient(creds)
    try:
        await kube.list("v1", "ConfigMap", namespace)
        await kube.list("v1", "ConfigMap", namespace)
        assert len(plugin.runs()) == 1, "the client shares the token kopf got while valid"
        await asyncio.sleep((first.expiration - utcnow()).total_seconds() + 0.1)
        await kube.list("v1", "ConfigMap", namespace)
        assert len(plugin.runs()) == 2, "expired: the client ran the plugin"
        second = await creds.login()
        assert len(plugin.runs()) == 2, "kopf takes the newer token the client fetched"
        assert second.expiration is not None
        assert second.expiration > first.expiration
        # kopf asks again after a 401: the token it holds is not handed back.
        await creds.login()
        assert len(plugin.runs()) == 3
    finally:
        await kube.close()


async def kopf_can_read(info: kopf.ConnectionInfo, namespace: str, expect: int = 200) -> None:
    """A request made as kopf makes its own (kopf's APIContext): its TLS context, headers."""
    connector = aiohttp.TCPConnector(ssl=info.as_ssl_context())
    async with (
        aiohttp.ClientSession(connector=connector, headers=info.as_http_headers()) as session,
        session.get(f"{info.server}/api/v1/namespaces/{namespace}/configmaps") as resp,
    ):
        assert resp.status == expect, await resp.text()


@pytest.mark.parametrize("kind", ["files", "inline", "token", "exec"])
async def test_kopf_and_the_client_authenticate_alike(
    testbed: Testbed, namespace: str, tmp_path: Path, kind: str
) -> None:
    if kind == "files":
        path = testbed.kubeconfig
    elif kind == "inline":
        config = flattened(testbed)
        user = config["users"][0]["user"]
        assert "client-key-data" in user or "token" in user
        path = write(tmp_path / "inline.kubeconfig", config)
    elif kind == "token":
        path = with_user(testbed, {"token": reader_token(testbed, namespace)}, tmp_path / "k")
    else:
        token = reader_token(testbed, namespace)
        plugin = ExecPluginScript.write(tmp_path / "p", [token], lifetime=600)
        path = with_user(testbed, plugin.user(), tmp_path / "exec.kubeconfig")
    creds = load(str(path))
    await kopf_can_read(await creds.login(), namespace)
    kube = KubeClient(creds)
    try:
        assert isinstance(await kube.list("v1", "ConfigMap", namespace), list)
    finally:
        await kube.close()


async def test_in_cluster_a_rotated_token_is_read_again(
    testbed: Testbed, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host, port = server_host_port(testbed)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
    account = service_account_dir(testbed, "expired-token", namespace, tmp_path / "sa")
    creds: Credentials = load("", service_account=account)
    assert creds.source == "in-cluster"
    assert creds.config.namespace == namespace
    kube = KubeClient(creds)
    try:
        with pytest.raises(ApiError) as err:
            await kube.list("v1", "ConfigMap", namespace)
        assert err.value.status == 401
        await kopf_can_read(await creds.login(), namespace, expect=401)
        # The kubelet writes a new token into the mounted file.
        (account / "token").write_text(reader_token(testbed, namespace))
        await kube.list("v1", "ConfigMap", namespace)  # the 401 made the client read it again
        await kopf_can_read(await creds.login(), namespace)  # kopf's next login reads it
    finally:
        await kube.close()


async def test_a_kubeconfig_path_list_is_merged_with_paths_relative_to_each_file(
    testbed: Testbed, namespace: str, tmp_path: Path
) -> None:
    config = flattened(testbed)
    cluster, user = config["clusters"][0], config["users"][0]
    if "client-key-data" not in user["user"]:
        # The local testbed always issues its admin a client certificate (tests/testbed/pki.py);
        # only an existing cluster (RECSYS_TEST_KUBECONFIG) may log in without one.
        assert os.environ.get("RECSYS_TEST_KUBECONFIG"), "the testbed's admin has no client cert"
        pytest.skip("this cluster's kubeconfig (RECSYS_TEST_KUBECONFIG) has no client certificate")
    first, second = tmp_path / "clusters", tmp_path / "users"
    first.mkdir()
    second.mkdir()
    (first / "ca.crt").write_bytes(
        base64.b64decode(cluster["cluster"].pop("certificate-authority-data"))
    )
    cluster["cluster"]["certificate-authority"] = "ca.crt"
    for field, name in (("client-certificate", "user.crt"), ("client-key", "user.key")):
        (second / name).write_bytes(base64.b64decode(user["user"].pop(f"{field}-data")))
        user["user"][field] = name
    write(first / "config", {**config, "users": []})
    # The second file's own context of the same name loses: the first file's wins.
    shadowed = {"name": config["contexts"][0]["name"], "context": {"cluster": "nowhere"}}
    write(second / "config", {"clusters": [], "contexts": [shadowed], "users": [user]})
    creds = load(f"{first / 'config'}{os.pathsep}{tmp_path / 'missing'}{os.pathsep}"
                 f"{second / 'config'}")  # fmt: skip
    await kopf_can_read(await creds.login(), namespace)
    kube = KubeClient(creds)
    try:
        assert isinstance(await kube.list("v1", "ConfigMap", namespace), list)
    finally:
        await kube.close()
