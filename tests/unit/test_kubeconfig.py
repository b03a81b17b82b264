"""Loading the operator's credentials: what is refused, and how, before any request is made;
the exec plugin is a real script run as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from lightkube import ConfigError

from recsys_operator.kubeconfig import load

REPO = Path(__file__).resolve().parents[2]


def kubeconfig(path: Path, user: dict[str, Any]) -> Path:
    path.write_text(
        json.dumps(
            {
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return path


def plugin(tmp_path: Path, body: str, **exec_fields: Any) -> Path:
    script = tmp_path / "plugin.py"
    script.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    script.chmod(0o755)
    spec = {"apiVersion": "client.authentication.k8s.io/v1", "command": str(script)}
    return kubeconfig(tmp_path / "config", {"exec": {**spec, **exec_fields}})


def credential(token: str, api: str = "client.authentication.k8s.io/v1") -> str:
    cred = {"apiVersion": api, "kind": "ExecCredential", "status": {"token": token}}
    return f"import json; print(json.dumps({cred!r}))"


@pytest.mark.parametrize(
    ("exec_fields", "message"),
    [
        ({"apiVersion": "client.authentication.k8s.io/v1alpha1"}, "is not supported"),
        ({"interactiveMode": "Always"}, "needs a terminal"),
    ],
)
def test_exec_plugins_an_operator_cannot_use_are_refused_at_load(
    tmp_path: Path, exec_fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load(str(plugin(tmp_path, credential("t"), **exec_fields)))


def test_auth_provider_users_are_refused_at_load(tmp_path: Path) -> None:
    path = kubeconfig(tmp_path / "config", {"auth-provider": {"name": "gcp"}})
    with pytest.raises(ConfigError, match="exec plugin"):
        load(str(path))


def test_a_missing_kubeconfig_and_a_missing_context_say_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no kubeconfig file"):
        load(str(tmp_path / "absent"))
    path = kubeconfig(tmp_path / "config", {"token": "t"})
    with pytest.raises(ConfigError, match="other"):
        load(str(path), context="other")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("import sys; sys.stderr.write('no SSO session'); sys.exit(3)", "exited 3: no SSO session"),
        ("print('hello')", "no JSON ExecCredential"),
        (credential("t", "client.authentication.k8s.io/v1beta1"), "the kubeconfig asks for"),
        (credential(""), "returned no token"),
    ],
    ids=["fails", "garbage", "other-version", "no-token"],
)
async def test_a_failing_plugin_is_an_error_naming_it(
    tmp_path: Path, body: str, message: str
) -> None:
    creds = load(str(plugin(tmp_path, body)))
    with pytest.raises(ConfigError, match=message):
        await creds.login()


async def test_a_plugin_that_is_not_installed_shows_the_install_hint(tmp_path: Path) -> None:
    path = kubeconfig(
        tmp_path / "config",
        {
            "exec": {
                "apiVersion": "client.authentication.k8s.io/v1beta1",
                "command": "recsys-no-such-plugin",
                "installHint": "install it with: brew install no-such-plugin",
            }
        },
    )
    with pytest.raises(ConfigError, match="brew install no-such-plugin"):
        await load(str(path)).login()


async def test_a_plugin_gets_its_env_and_args_and_no_terminal(tmp_path: Path) -> None:
    body = """
        import json, os, sys
        devnull = os.fstat(0).st_rdev == os.stat("/dev/null").st_rdev
        token = "-".join([os.environ["GREETING"], *sys.argv[1:], f"stdin-devnull={devnull}"])
        print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1",
                          "kind": "ExecCredential", "status": {"token": token}}))
    """
    path = plugin(tmp_path, body, args=["a", "b"], env=[{"name": "GREETING", "value": "hi"}])
    info = await load(str(path)).login()
    assert info.token == "hi-a-b-stdin-devnull=True"
    assert info.expiration is None


def test_the_operator_stops_at_once_with_one_line_on_a_bad_kubeconfig(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "KUBECONFIG": str(tmp_path / "absent"),
        "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("contract", "operator", "workloads")),
    }
    out = subprocess.run(
        [sys.executable, "-m", "recsys_operator", "--metrics-port", "0", "--health-port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == (
        f"recsys-operator: no kubeconfig file at {tmp_path / 'absent'}"
    )
