"""A real S3-compatible object store: SeaweedFS's ``weed mini`` (built from its Go module by
build_seaweedfs.sh), on free loopback ports, with one authenticated identity.

``weed mini`` is SeaweedFS's single-process setup (master, volume server, filer, admin and
the S3 gateway in one process). Every listener is pinned to one address (127.0.0.1 unless the
caller names another, e.g. the real node's bridge gateway, where its pods reach it) and a port
picked here
(two sessions on one machine never share one), the parts a test does not need (WebDAV, the
admin UI and its legacy port, the Iceberg and Lance catalogs) are off, and so is the
telemetry that would otherwise be sent out. Requests must be signed with the identity's keys
(``-s3.config``), and a bucket is never created on upload (``-s3.autoCreateBucket=false``),
so a missing bucket fails the way it does on AWS.

Workloads reach it exactly as a pod does from the ``artifact-store`` Secret of
examples/recommender.yaml: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and
``AWS_ENDPOINT_URL`` in the environment (``env``).
"""

from __future__ import annotations

import json
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.processes import Process, ProcessGroup, built_by, free_port, wait_until

#: The region botocore signs for; SeaweedFS accepts any, but it must be the same on each call.
REGION = "us-east-1"


def seaweedfs_binary() -> Path:
    return built_by("build_seaweedfs.sh")


@dataclass
class S3Server:
    address: str
    port: int
    access_key: str
    secret_key: str
    process: Process
    procs: ProcessGroup
    workdir: Path

    @property
    def endpoint(self) -> str:
        return f"http://{self.address}:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """The environment a pod gets from the artifact-store Secret (envFrom)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": REGION,
        }

    def client(self) -> Any:
        """A plain botocore S3 client with this server's identity (for setup and checks)."""
        import botocore.config
        import botocore.session

        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=botocore.config.Config(
                retries={"max_attempts": 1}, connect_timeout=2, read_timeout=10
            ),
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def stop(self) -> None:
        self.procs.stop_all()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _answers_signed(server: S3Server) -> bool:
    """Ready when a signed ListBuckets succeeds: the gateway is up *and* has loaded the
    identities (an unsigned probe would pass before the credentials are in force)."""
    try:
        server.client().list_buckets()
    except Exception:
        return False
    return True


def start_s3(
    buckets: tuple[str, ...] = (), timeout: float = 60.0, address: str = "127.0.0.1"
) -> S3Server:
    """Start ``weed mini`` on ``address`` with a fresh identity and data folder, and create
    ``buckets``."""
    binary = seaweedfs_binary()
    workdir = Path(tempfile.mkdtemp(prefix="recsys-s3-"))
    data = workdir / "data"
    data.mkdir()
    access_key, secret_key = "testbed" + secrets.token_hex(6), secrets.token_urlsafe(24)
    config = workdir / "s3.json"
    config.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "testbed",
                        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    ports = {
        name: free_port()
        for name in (
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port",
            "s3.port.grpc",
            "admin.port",  # the admin server runs (for its maintenance worker) even without UI
            "admin.port.grpc",
        )
    }
    argv = [
        str(binary),
        "mini",
        f"-ip={address}",
        f"-ip.bind={address}",
        f"-dir={data}",
        *(f"-{name}={port}" for name, port in ports.items()),
        "-s3=true",
        f"-s3.config={config}",
        "-s3.autoCreateBucket=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.localSocket={workdir}/s3.sock",
        f"-filer.localSocket={workdir}/filer.sock",
        "-webdav=false",
        "-admin.ui=false",
        "-admin.port.legacy=0",
        "-master.telemetry=false",
        "-master.volumeSizeLimitMB=64",
    ]
    procs = ProcessGroup(workdir)
    process = procs.start("seaweedfs", argv, cwd=workdir)
    server = S3Server(address, ports["s3.port"], access_key, secret_key, process, procs, workdir)
    try:
        wait_until(process, lambda: _answers_signed(server), timeout, "answering signed S3 calls")
        for bucket in buckets:
            server.create_bucket(bucket)
    except BaseException:
        server.stop()
        raise
    return server
