"""``kubectl recsys`` as a user runs it, a process of its own against the real apiserver: the
annotations and the spec field it sets (read back), the status it prints from what the status
subresource holds, and one line on stderr with exit code 1 for each failure a user can meet.

The plugin runs as ``python -m recsys_operator.cli`` from this checkout (installing the console
script would repoint the shared environment); the first test holds pyproject's console script to
that same ``main``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubeconfig_support import flattened, with_user, write

from fixtures.kube import Testbed
from fixtures.operator import install_crds
from recsys_operator import cli

REPO = Path(__file__).resolve().parents[2]
STEPS = [{"setWeight": 10}, {"pause": {"duration": "30s"}}, {"setWeight": 50}, {"pause": {}}]
NAME = "movies"


def run_cli(
    *argv: str, kubeconfig: Path | None = None, env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "recsys_operator.cli", *argv]
        + (["--kubeconfig", str(kubeconfig)] if kubeconfig else []),
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This checkout's code; no kubeconfig but the one a test names."""
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env["PYTHONPATH"] = os.pathsep.join(
        str(REPO / p) for p in ("contract", "operator", "workloads")
    )
    env["HOME"] = str(REPO / "tests" / "no-home")  # no ~/.kube/config to fall back on
    return {**env, **(extra or {})}


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def get(testbed: Testbed, namespace: str, *flags: str) -> dict[str, Any]:
    out = testbed.kubectl("get", "rec", NAME, "-n", namespace, "-o", "json", *flags).stdout
    obj: dict[str, Any] = json.loads(out)
    return obj


@pytest.fixture
def rec(testbed: Testbed, namespace: str) -> str:
    """A Recommender ``movies`` with four canary steps and an annotation of the user's own."""
    install_crds(testbed)
    manifest = {
        "apiVersion": "recsys.dev/v1alpha1",
        "kind": "Recommender",
        "metadata": {"name": NAME, "annotations": {"team": "search"}},
        "spec": {
            "interactions": {"path": "s3://d/i/"},
            "serving": {"rollout": {"steps": STEPS}},
            "stores": {
                "redis": {"url": "redis://r:6379/0"},
                "artifacts": {"storageUri": "s3://m/"},
            },
        },
    }
    testbed.kubectl(
        "apply", "--server-side", "-n", namespace, "-f", "-", input=json.dumps(manifest)
    )
    return NAME


def test_the_console_script_is_this_main() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["kubectl-recsys"] == "recsys_operator.cli:main"
    assert project["scripts"]["recsys-operator"] == "recsys_operator.__main__:main"
    proc = run_cli("--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: {cli.PROG} ")
    for command in cli.COMMANDS:
        assert command in proc.stdout


# (argv, annotation, token pattern)
ANNOTATION_ROWS = [
    (["promote"], "recsys.dev/promote", r"[0-9]{13}"),
    (["promote", "--full"], "recsys.dev/promote", r"full-[0-9]{13}"),
    (["abort"], "recsys.dev/abort", r"[0-9]{13}"),
    (["retrain"], "recsys.dev/retrain", r"[0-9]{13}"),
]


@pytest.mark.testbed
@pytest.mark.parametrize(
    ("argv", "key", "pattern"), ANNOTATION_ROWS, ids=["-".join(r[0]) for r in ANNOTATION_ROWS]
)
def test_an_annotation_gets_a_new_token_each_time(
    testbed: Testbed, namespace: str, rec: str, argv: list[str], key: str, pattern: str
) -> None:
    tokens = []
    for _ in range(2):
        proc = run_cli(argv[0], rec, "-n", namespace, *argv[1:], kubeconfig=testbed.kubeconfig)
        assert proc.returncode == 0, proc.stderr
        [line] = proc.stdout.splitlines()
        match = re.fullmatch(rf"recommender/{rec}: set {key}=({pattern}); the operator .+", line)
        assert match, line
        annotations = get(testbed, namespace)["metadata"]["annotations"]
        assert annotations[key] == match[1]
        assert annotations["team"] == "search"  # a merge patch: the user's own stay
        tokens.append(match[1])
        time.sleep(0.002)
    assert tokens[0] != tokens[1]


@pytest.mark.testbed
def test_pause_and_resume_flip_the_spec_field(testbed: Testbed, namespace: str, rec: str) -> None:
    def paused() -> Any:
        return get(testbed, namespace)["spec"]["serving"]["rollout"]["paused"]

    def run(command: str) -> str:
        proc = run_cli(command, rec, "-n", namespace, kubeconfig=testbed.kubeconfig)
        assert proc.returncode == 0, proc.stderr
        [line] = proc.stdout.splitlines()
        return line

    assert paused() is False  # the API's default
    assert run("pause").startswith(f"recommender/{rec}: set spec.serving.rollout.paused=true; ")
    assert paused() is True
    obj = get(testbed, namespace, "--show-managed-fields")
    managers = {f["manager"] for f in obj["metadata"]["managedFields"]}
    assert cli.FIELD_MANAGER in managers
    assert run("pause") == (
        f"recommender/{rec}: already paused (spec.serving.rollout.paused=true); nothing changed"
    )
    assert get(testbed, namespace)["metadata"]["generation"] == obj["metadata"]["generation"]
    assert run("resume").startswith(f"recommender/{rec}: set spec.serving.rollout.paused=false; ")
    assert paused() is False
    assert get(testbed, namespace)["spec"]["serving"]["rollout"]["steps"] == STEPS


#: Written through the status subresource in the schema the rollout engine writes. The CRD of
#: this commit keeps only some of it (phase, currentStepIndex, failedChecks, startTime, message,
#: the conditions); the rest is pruned until the CRD has the new status fields, so the test reads
#: back what was stored and holds the output to that, and to the fields that survive either way.
STATUS: dict[str, Any] = {
    "observedGeneration": 1,
    "conditions": [
        {"type": "Ready", "status": "True", "reason": "Serving", "message": "movies-v7 serves",
         "observedGeneration": 1, "lastTransitionTime": "2026-11-23T12:00:00Z"},
        {"type": "Progressing", "status": "True", "reason": "Canary", "message": "step 2 of 4",
         "observedGeneration": 1, "lastTransitionTime": "2026-11-23T12:00:00Z"},
    ],
    "rollout": {
        "phase": "Paused", "pauseReason": "PauseStep", "stable": "movies-v7",
        "canary": "movies-v8", "canaryWeight": 10, "currentStepIndex": 1, "failedChecks": 2,
        "startTime": "2026-11-23T12:00:00Z", "message": "holding 10% for 30s",
        "analysis": [{"time": "2026-11-23T12:01:00Z", "verdict": "Passed", "metrics": [
            {"name": "request-success-rate", "canary": 99.5, "stable": 99.9, "min": 99,
             "verdict": "Passed"}]}],
    },
}  # fmt: skip


def write_status(testbed: Testbed, namespace: str, status: dict[str, Any]) -> dict[str, Any]:
    testbed.kubectl(
        "patch", "rec", NAME, "-n", namespace, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": status}),
    )  # fmt: skip
    return get(testbed, namespace)


@pytest.mark.testbed
def test_status_prints_what_the_status_holds(
    testbed: Testbed, namespace: str, rec: str, tmp_path: Path
) -> None:
    stored = write_status(testbed, namespace, STATUS)
    # The context's namespace is the default, and $KUBECONFIG the kubeconfig.
    config = flattened(testbed)
    config["contexts"][0]["context"]["namespace"] = namespace
    kubeconfig = write(tmp_path / "kubeconfig", config)
    proc = run_cli("status", rec, env={"KUBECONFIG": str(kubeconfig)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == cli.render_status(rec, namespace, stored["spec"], stored["status"])
    header = proc.stdout.split("\n\n")[0].splitlines()
    got = {label: value.strip() for label, _, value in (line.partition(":") for line in header)}
    assert got["Namespace"] == namespace
    assert got["Phase"].startswith("Paused")
    assert got["Step"] == "2/4 pause 30s"
    assert got["Failed checks"] == "2 (failureLimit 3)"
    assert got["Message"] == "holding 10% for 30s"
    assert "  Ready        True    Serving  movies-v7 serves" in proc.stdout.splitlines()
    if "stable" in stored["status"]["rollout"]:  # the CRD with the new status fields
        assert got["Canary"] == "movies-v8 (weight 10%)"
        assert "request-success-rate" in proc.stdout

    proc = run_cli("status", rec, "-n", namespace, "-o", "json", kubeconfig=testbed.kubeconfig)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == stored["status"]["rollout"]


@pytest.mark.testbed
def test_watch_prints_each_change_until_its_timeout(
    testbed: Testbed, namespace: str, rec: str
) -> None:
    write_status(testbed, namespace, STATUS)
    argv = [sys.executable, "-m", "recsys_operator.cli", "status", rec, "-n", namespace]
    argv += ["--kubeconfig", str(testbed.kubeconfig), "--watch", "--timeout", "6s"]
    start = time.monotonic()
    with subprocess.Popen(
        argv, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        first = [proc.stdout.readline()]
        while first[-1] != "\n":  # up to the blank line before the conditions
            first.append(proc.stdout.readline())
        assert "Step:            2/4 pause 30s\n" in first
        moved = {**STATUS["rollout"], "currentStepIndex": 2, "message": "at 50%"}
        write_status(testbed, namespace, {"rollout": moved})
        out, err = proc.communicate(timeout=30)
    assert time.monotonic() - start >= 6
    assert "Step:            3/4 setWeight 50\n" in out
    assert "Message:         at 50%\n" in out
    assert proc.returncode == 1
    assert err.startswith("error: timed out after 6s waiting for the rollout to become Healthy")
    assert len(err.splitlines()) == 1


@pytest.mark.testbed
def test_a_missing_recommender_is_one_line(testbed: Testbed, namespace: str) -> None:
    install_crds(testbed)
    for command in ("status", "promote", "abort", "pause", "resume", "retrain"):
        proc = run_cli(command, "nope", "-n", namespace, kubeconfig=testbed.kubeconfig)
        assert one_error_line(proc) == f'error: no Recommender "nope" in namespace "{namespace}"'


@pytest.mark.testbed
def test_no_permission_is_one_line(
    testbed: Testbed, namespace: str, rec: str, tmp_path: Path
) -> None:
    account = "viewer"
    testbed.kubectl("create", "serviceaccount", account, "-n", namespace)
    testbed.kubectl(
        "create", "role", account, "--verb=get", "--resource=recommenders.recsys.dev",
        "-n", namespace,
    )  # fmt: skip
    testbed.kubectl(
        "create", "rolebinding", account, f"--role={account}",
        f"--serviceaccount={namespace}:{account}", "-n", namespace,
    )  # fmt: skip
    token = testbed.kubectl("create", "token", account, "-n", namespace).stdout.strip()
    kubeconfig = with_user(testbed, {"token": token}, tmp_path / "viewer")
    proc = run_cli("status", rec, "-n", namespace, kubeconfig=kubeconfig)
    assert proc.returncode == 0, proc.stderr  # reading is allowed
    line = one_error_line(run_cli("promote", rec, "-n", namespace, kubeconfig=kubeconfig))
    assert line.startswith("error: not allowed: ")
    assert f'"system:serviceaccount:{namespace}:{account}" cannot patch resource' in line
    assert "recsys.dev/promote" not in get(testbed, namespace)["metadata"]["annotations"]


def _unreachable(testbed: Testbed, path: Path) -> Path:
    config = flattened(testbed)
    config["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:1"
    return write(path, config)


# (id, kubeconfig file content (None: no file), extra argv, the line's start)
KUBECONFIG_ROWS: list[tuple[str, str | None, list[str], str]] = [
    ("no-file", None, [], "error: kubeconfig: no kubeconfig file at "),
    ("not-yaml", "clusters: [\n", [], "error: kubeconfig: cannot load {path}: ParserError: "),
    ("no-context", yaml.safe_dump({"apiVersion": "v1", "kind": "Config"}), [],
     "error: kubeconfig: "),
    ("unknown-context", "testbed", ["--context", "elsewhere"], "error: kubeconfig: "),
    ("unreachable-server", "unreachable", [],
     "error: cannot reach the API server at https://127.0.0.1:1: "),
]  # fmt: skip


@pytest.mark.testbed
@pytest.mark.parametrize(
    ("content", "extra", "start"),
    [r[1:] for r in KUBECONFIG_ROWS],
    ids=[r[0] for r in KUBECONFIG_ROWS],
)
def test_a_bad_kubeconfig_is_one_line(
    testbed: Testbed, tmp_path: Path, content: str | None, extra: list[str], start: str
) -> None:
    path = tmp_path / "kubeconfig"
    if content == "testbed":
        write(path, flattened(testbed))
    elif content == "unreachable":
        _unreachable(testbed, path)
    elif content is not None:
        path.write_text(content)
    line = one_error_line(run_cli("promote", NAME, "-n", "default", *extra, kubeconfig=path))
    assert line.startswith(start.format(path=path)), line
