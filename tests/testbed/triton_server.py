"""The real ``tritonserver`` binary that the nvidia-pytriton wheel ships, run on the CPU.

What it needs here (facts from the testbed notes, checked on this machine): the python
backend's stub for the running Python copied next to the backend library, the wheel's bundled
shared libraries and libpython on the library path, and explicit ports. It logs NVML/DCGM
errors without a GPU and then serves normally. The stub runs model code with this
environment's Python, so models import torch and faiss from the same virtual environment.
"""

from __future__ import annotations

import http.client
import os
import shutil
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

from testbed.processes import ComponentFailed, Process, ProcessGroup, free_port, wait_until

PYTHONPATH_VARIABLE = "RECSYS_TRITON_PYTHONPATH"

#: The first lines of every python-backend model.py that runs on this testbed's server.
MODEL_PRELUDE = f"""\
import os as _os, sys as _sys
_sys.path[:0] = [p for p in _os.environ.get("{PYTHONPATH_VARIABLE}", "").split(_os.pathsep)
                 if p and p not in _sys.path]
"""


@dataclass
class TritonServer:
    http_port: int
    grpc_port: int
    metrics_port: int
    process: Process
    procs: ProcessGroup
    workdir: Path
    address: str = "127.0.0.1"

    @property
    def http_url(self) -> str:
        return f"{self.address}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.address}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.address}:{self.metrics_port}/metrics"

    def stop(self) -> None:
        self.procs.stop_all()
        shutil.rmtree(self.workdir, ignore_errors=True)


def pytriton_root() -> Path:
    try:
        import pytriton
    except ImportError as exc:
        raise ComponentFailed(
            "nvidia-pytriton is not installed: `make deps` installs the serving extra"
        ) from exc
    return Path(pytriton.__file__).resolve().parent


def backend_directory(workdir: Path) -> Path:
    """A copy of the python backend with the stub for this Python version beside it."""
    root = pytriton_root() / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise ComponentFailed(f"nvidia-pytriton ships no python backend stub for Python {version}")
    backends = workdir / "backends"
    shutil.copytree(root / "backends", backends)
    shutil.copy2(stub, backends / "python" / stub.name)
    return backends


def server_environment() -> dict[str, str]:
    libs = pytriton_root().parent / "nvidia_pytriton.libs"
    paths = [str(libs), str(sysconfig.get_config_var("LIBDIR"))]
    if os.environ.get("LD_LIBRARY_PATH"):
        paths.append(os.environ["LD_LIBRARY_PATH"])
    # The stub embeds the base interpreter and ignores PYTHONPATH, so it does not see this
    # virtual environment. Model code that must run here starts with MODEL_PRELUDE, which puts
    # these paths on sys.path; the recsys-triton image's tritonserver sets the same variable to
    # the image's virtual environment (images/triton/Containerfile).
    python_path = [p for p in sys.path if p and Path(p).is_dir()]
    return {"LD_LIBRARY_PATH": ":".join(paths), PYTHONPATH_VARIABLE: os.pathsep.join(python_path)}


def _ready(address: str, port: int) -> bool:
    conn = http.client.HTTPConnection(address, port, timeout=2)
    try:
        conn.request("GET", "/v2/health/ready")
        return conn.getresponse().status == 200
    finally:
        conn.close()


def start_triton(
    model_repository: Path,
    extra_args: tuple[str, ...] = (),
    timeout: float = 120,
    address: str = "127.0.0.1",
    http_port: int | None = None,
) -> TritonServer:
    """A tritonserver on ``address`` (a loopback address); ``http_port`` fixed when given (a
    Service's port on its own address), free ports otherwise."""
    workdir = Path(tempfile.mkdtemp(prefix="recsys-triton-"))
    procs = ProcessGroup(workdir / "logs")
    http_port = http_port or free_port()
    grpc_port, metrics_port = free_port(), free_port()
    try:
        backends = backend_directory(workdir)
        proc = procs.start(
            "tritonserver",
            [
                str(pytriton_root() / "tritonserver" / "bin" / "tritonserver"),
                f"--model-repository={model_repository}",
                f"--backend-directory={backends}",
                f"--http-port={http_port}",
                f"--grpc-port={grpc_port}",
                f"--metrics-port={metrics_port}",
                f"--http-address={address}",
                f"--grpc-address={address}",
                "--allow-sagemaker=false",
                "--allow-vertex-ai=false",
                "--log-verbose=0",
                *extra_args,
            ],
            env=server_environment(),
        )
        wait_until(proc, lambda: _ready(address, http_port), timeout, "ready")
    except BaseException:
        procs.stop_all()
        raise
    return TritonServer(http_port, grpc_port, metrics_port, proc, procs, workdir, address)
