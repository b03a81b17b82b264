"""``pvc://CLAIM/path``: a PersistentVolumeClaim's files, read and written through fsspec.

The operator mounts each claim a workload's config names at ``/mnt/pvc/CLAIM``
(``recsys_contract.formats.PVC_MOUNT_ROOT``), and this filesystem maps the URI onto that
folder. The mapping lives here, in the workloads, rather than in the operator rewriting URIs
to ``file://``: a URI then keeps the one spelling the user wrote in every config, termination
message and status field (a ModelVersion's ``artifactUri`` is read back by later Jobs, the
gateway and warm starts), and every fsspec call of every workload (artifact store, parquet
readers and writers, datasets) handles it without a branch of its own.

``RECSYS_PVC_ROOT`` moves the root for a process that is not in a pod (the testbed runs some
workloads as local processes, with a folder per claim below a temporary directory).
"""

from __future__ import annotations

import os
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from recsys_contract.formats import PVC_MOUNT_ROOT, PVC_SCHEME, pvc_local_path

PVC_ROOT_ENV = "RECSYS_PVC_ROOT"


def pvc_root() -> str:
    return os.environ.get(PVC_ROOT_ENV) or PVC_MOUNT_ROOT


class PvcFileSystem(LocalFileSystem):  # type: ignore[misc]
    """The local filesystem below the claim's mount; paths it hands out are local paths."""

    protocol = ("pvc",)

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, str) and path.startswith(PVC_SCHEME):
            path = pvc_local_path(path, pvc_root())
        return super()._strip_protocol(path)
