"""What Argo CD would show as the health of a recsys object, computed by Argo CD itself.

The chart's ``health.lua`` scripts are run by ``argocd-health``, a wrapper around Argo CD's
``util/lua`` package, so a test sees the interpreter, sandbox (no string library, unless a
customization asks for open libraries) and status validation of a real controller. The
wrapper is built once by ``build.sh`` and cached; this module only asks build.sh for its path.
"""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
#: Argo CD's resource_customizations layout: <group>/<Kind>/health.lua.
CUSTOMIZATIONS = REPO / "charts" / "recsys-operator" / "argocd" / "resource_customizations"
GROUP = "recsys.dev"
KINDS = ("Recommender", "FeatureView", "ModelVersion")


@functools.cache
def binary() -> Path:
    """The cached argocd-health, built first if this checkout's inputs are new."""
    out = subprocess.run(
        ["bash", str(HERE / "build.sh")], check=True, stdout=subprocess.PIPE, text=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


def script(kind: str) -> Path:
    """The health.lua that Argo CD would use for ``kind`` of recsys.dev."""
    if kind not in KINDS:
        raise ValueError(f"no health check for kind {kind!r}: one of {', '.join(KINDS)}")
    return CUSTOMIZATIONS / GROUP / kind / "health.lua"


def argocd_health(kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    """Argo CD's (status, message) for ``obj``, e.g. ``("Suspended", "Rollout paused ...")``.

    ``obj`` is the object as the API server returns it (``to_dict()`` of a lightkube object,
    or ``kubectl get -o json``). A script error raises CalledProcessError with Argo CD's
    message in ``stderr``, as a controller would report the resource's health as failing.
    """
    result = subprocess.run(
        [str(binary()), str(script(kind)), "-"],
        input=json.dumps(obj),
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if result.returncode != 0:
        raise subprocess.CalledProcessError(
            result.returncode, result.args, result.stdout, result.stderr
        )
    health = json.loads(result.stdout)
    return str(health["status"]), str(health.get("message", ""))


def run_health_tests(kind: str) -> subprocess.CompletedProcess[str]:
    """Run ``kind``'s health_test.yaml as Argo CD's own test does (exit 1 on a mismatch)."""
    return subprocess.run(
        [str(binary()), "test", str(script(kind).parent)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
