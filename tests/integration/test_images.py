"""The container images: ``images/build.sh`` builds them (or finds them up to date by their
inputs hash) and they run the way the chart and the operator run them, as uid 65532 on a
read-only root filesystem whose only writable path is /tmp (the pods' emptyDir).

Real podman, real images: the operator image runs its entry point and fails on a missing
cluster the way it must; the workloads image converts MovieLens-100k with its real entry point
into /tmp and cannot import torch (training lives in recsys-trainer); both carry the OCI labels
the build script sets from the chart's appVersion and the tree's last commit.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from recsys_operator import images
from testbed import oci_export

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


#: A python-backend model that imports what every generated model.py imports (the serving
#: code, torch) through the same prelude (recsys_workloads.serving.repository.PRELUDE).
PROBE_CONFIG = """\
backend: "python"
max_batch_size: 0
input [ { name: "X", data_type: TYPE_FP32, dims: [ 2 ] } ]
output [ { name: "Y", data_type: TYPE_FP32, dims: [ 2 ] } ]
"""
PROBE_MODEL = """\
import torch
import recsys_workloads.serving.triton_python  # noqa: F401
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            x = torch.from_numpy(pb_utils.get_input_tensor_by_name(r, "X").as_numpy())
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("Y", (x * 2).numpy())]))
        return out
"""
#: Inside the container: start tritonserver as the operator's pod does, wait until ready, infer.
PROBE_CLIENT = """\
import http.client, json, subprocess, sys, time
server = subprocess.Popen(
    ["tritonserver", "--model-repository=/models", "--http-port=18000", "--grpc-port=18001",
     "--metrics-port=18002"], stdout=open("/tmp/triton.log", "w"), stderr=subprocess.STDOUT)
for _ in range(180):
    try:
        conn = http.client.HTTPConnection("127.0.0.1", 18000, timeout=2)
        conn.request("GET", "/v2/health/ready")
        if conn.getresponse().status == 200:
            break
    except OSError:
        pass
    if server.poll() is not None:
        sys.exit("exited:\\n" + open("/tmp/triton.log").read()[-3000:])
    time.sleep(1)
else:
    sys.exit("never ready:\\n" + open("/tmp/triton.log").read()[-3000:])
body = {"inputs": [{"name": "X", "shape": [2], "datatype": "FP32", "data": [1.5, 2.0]}]}
conn = http.client.HTTPConnection("127.0.0.1", 18000, timeout=30)
conn.request("POST", "/v2/models/probe/infer", json.dumps(body))
reply = conn.getresponse().read()
server.terminate()
print(json.loads(reply)["outputs"][0]["data"] if b"outputs" in reply else reply)
"""


def test_trainer_and_triton_images_serve_a_python_model(tmp_path: Path) -> None:
    """The torch images: the trainer runs the training entry point, and Triton's image loads a
    python-backend model that imports torch and the serving code, from a repository mounted
    read-only (the pod's emptyDir, filled by the init container), and answers an inference."""
    from recsys_workloads.serving.repository import PRELUDE

    out = subprocess.run(
        ["bash", str(REPO / "images" / "build.sh"), "triton"],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    trainer = run(images.reference("trainer"), "-m", "recsys_workloads.train", "--help",
                  entrypoint=["python"])  # fmt: skip
    assert trainer.returncode == 0, trainer.stderr[-2000:]
    assert trainer.stdout.startswith("usage:")
    model = tmp_path / "probe"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(PROBE_CONFIG)
    (model / "1" / "model.py").write_text(PRELUDE + PROBE_MODEL)
    for path in (tmp_path, model, model / "1"):
        path.chmod(0o755)  # pytest makes tmp_path 0700; the server runs as 65532
    served = subprocess.run(
        [*RUN, "-v", f"{tmp_path}:/models:ro", images.reference("triton"), "python", "-c",
         PROBE_CLIENT],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert served.returncode == 0, served.stdout[-2000:] + served.stderr[-2000:]
    assert served.stdout.split("\n")[-2] == "[3.0, 4.0]", served.stdout[-2000:]


def test_the_real_nodes_import_reassembles_layers_exactly_and_sends_only_missing_ones(
    built: dict[str, str],
) -> None:
    """The real node's containerd gets images from podman's storage, layer by layer
    (testbed.oci_export): every layer must come out byte for byte as podman committed it."""
    ref = built["operator"]
    info = inspect(ref)
    root = Path(
        subprocess.run(
            ["podman", "info", "--format", "{{.Store.GraphRoot}}"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    )  # fmt: skip
    image = oci_export.stored_image(root, ref, str(info["Id"]))
    rootfs = info["RootFS"]
    assert isinstance(rootfs, dict)
    assert [layer.diff_id for layer in image.layers] == rootfs["Layers"]
    for layer in image.layers:
        digest = hashlib.sha256()
        size = 0
        for chunk in oci_export.layer_chunks(layer):
            digest.update(chunk)
            size += len(chunk)
        assert ("sha256:" + digest.hexdigest(), size) == (layer.diff_id, layer.size)
    # containerd already holding all but the top layer is sent the top layer alone
    out = io.BytesIO()
    present = {layer.diff_id for layer in image.layers[:-1]}
    assert oci_export.write_layout(out, [image], present) == [image.layers[-1].diff_id]
    out.seek(0)
    with tarfile.open(fileobj=out) as tar:
        names = set(tar.getnames())
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
    blobs = {name.removeprefix("blobs/sha256/") for name in names if name.startswith("blobs/")}
    top = image.layers[-1].diff_id.removeprefix("sha256:")
    assert blobs == {top, str(info["Id"]), image.manifest_digest.removeprefix("sha256:")}
    assert index["manifests"][0]["annotations"]["io.containerd.image.name"] == ref
