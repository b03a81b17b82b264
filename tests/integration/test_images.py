"""The container images: ``images/build.sh`` builds them (or finds them up to date by their
inputs hash) and they run the way the chart and the operator run them, as uid 65532 on a
read-only root filesystem whose only writable path is /tmp (the pods' emptyDir).

Real podman, real images: the operator image runs its entry point and fails on a missing
cluster the way it must; the workloads image converts MovieLens-100k with its real entry point
into /tmp and cannot import torch (training lives in recsys-trainer); both carry the OCI labels
the build script sets from the chart's appVersion and the tree's last commit.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from recsys_operator import images

pytestmark = [pytest.mark.slow, pytest.mark.images]

REPO = Path(__file__).resolve().parents[2]
#: What this machine's podman needs (see images/build.sh), then a pod's constraints: uid 65532,
#: read-only root, no tmpfs of podman's own; /tmp plays the emptyDir; no network.
RUN = (
    "podman", "run", "--rm", "--runtime", "runc",
    "--ulimit", "nofile=20000:20000", "--ulimit", "nproc=9000:9000",
    "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,size=512m",
    "--user", "65532:65532", "--network", "none",
)  # fmt: skip


@pytest.fixture(scope="module")
def built() -> dict[str, str]:
    if shutil.which("podman") is None and shutil.which("apt-get") is None:
        pytest.fail("podman is missing and cannot be installed: `make images` needs it")
    out = subprocess.run(
        ["bash", str(REPO / "images" / "build.sh"), "operator", "workloads"],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return {name: images.reference(name) for name in ("operator", "workloads")}


def run(image: str, *args: str, entrypoint: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    flags = ["--entrypoint", json.dumps(list(entrypoint))] if entrypoint else []
    return subprocess.run([*RUN, *flags, image, *args], capture_output=True, text=True, timeout=300)


def inspect(image: str) -> dict[str, object]:
    out = subprocess.run(
        ["podman", "image", "inspect", image], capture_output=True, text=True, check=True
    )
    (info,) = json.loads(out.stdout)
    return info  # type: ignore[no-any-return]


def build_script(*args: str) -> str:
    return subprocess.run(
        ["bash", str(REPO / "images" / "build.sh"), *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.parametrize("name", ["operator", "workloads"])
def test_labels_name_source_version_and_revision(built: dict[str, str], name: str) -> None:
    info = inspect(built[name])
    labels = info["Labels"]
    assert isinstance(labels, dict)
    assert labels["org.opencontainers.image.source"] == (
        "https://github.com/recsys-dev/recsys-operator"
    )
    assert labels["org.opencontainers.image.version"] == images.VERSION
    assert labels["org.opencontainers.image.title"] == f"recsys-{name}"
    # the last commit that changed what the image is built from, "-dirty" if the tree differs
    paths = build_script("inputs", name).split()
    revision = git("log", "-1", "--format=%H", "--", *paths)
    if git("status", "--porcelain", "--", *paths):
        revision += "-dirty"
    assert labels["org.opencontainers.image.revision"] == revision
    assert labels["dev.recsys.inputs"] == build_script("hash", name).strip()
    config = info["Config"]
    assert isinstance(config, dict)
    assert config["User"] == "65532:65532"


def test_operator_image_runs_its_entry_point_read_only(built: dict[str, str]) -> None:
    image = built["operator"]
    helped = run(image, "--help")
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith("usage: recsys-operator")
    # no cluster in reach: the real start-up path loads credentials and says why it cannot
    started = run(image)
    assert started.returncode == 1, started.stdout + started.stderr
    assert "recsys-operator: " in started.stderr
    probe = run(
        image,
        "-c",
        "import os, recsys_operator.images as i; print(os.getuid(), os.getgid(), i.VERSION);"
        "open('/tmp/ok', 'w').write('x');"
        "import pathlib; pathlib.Path('/opt/venv/x').write_text('x')",
        entrypoint=["python"],
    )
    assert probe.stdout.split() == ["65532", "65532", images.VERSION]
    assert "Read-only file system" in probe.stderr, probe.stderr


def test_workloads_image_runs_a_real_entry_point(built: dict[str, str]) -> None:
    image = built["workloads"]
    rows = (
        "import pyarrow.parquet as pq;"
        "print(pq.read_metadata('/tmp/ml/interactions.parquet').num_rows)"
    )
    script = (
        "set -e; python -m recsys_workloads.datasets movielens --out /tmp/ml;"
        f'python -c "{rows}"; python -c "import faiss, redis, s3fs, uvloop"'
    )
    out = run(image, "-c", script, entrypoint=["sh"])
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert json.loads(lines[0])["interactions"] == "/tmp/ml/interactions.parquet"
    assert lines[1] == "100000"
    no_torch = run(image, "-c", "import torch", entrypoint=["python"])
    assert no_torch.returncode == 1
    assert "No module named 'torch'" in no_torch.stderr
