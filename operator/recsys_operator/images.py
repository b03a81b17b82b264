"""The images the operator puts into the workloads it creates when a spec names none.

They are exactly the references that ``make images`` (images/build.sh) tags and that the Helm
chart defaults to: ``<REGISTRY>/recsys-<name>:<version>``. The version is this distribution's
(pyproject.toml's, which tests keep equal to the chart's appVersion) and REGISTRY is the
directory of the chart's ``image.repository``; tests/unit/test_image_references.py checks all
three agree. The chart always passes its resolved references through the ``RECSYS_*_IMAGE``
variables, so these built-in values matter when the operator runs outside the chart.

Which image runs what: training and Triton's repository builder import torch and get the
``trainer`` key (``recsys-trainer``: recsys-workloads plus torch); every other batch Job
(materialize, history, index, drift, log join) and the gateway need no torch and get
``recsys-workloads``, a tenth of its size.
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Mapping

REGISTRY = "ghcr.io/recsys-dev"
VERSION = importlib.metadata.version("recsys-operator")

#: The operator's image keys (``Context.images``), the image each defaults to, and the
#: environment variable that overrides it.
IMAGES = {
    "workloads": ("workloads", "RECSYS_WORKLOADS_IMAGE"),
    "trainer": ("trainer", "RECSYS_TRAINER_IMAGE"),
    "gateway": ("workloads", "RECSYS_GATEWAY_IMAGE"),
    "triton": ("triton", "RECSYS_TRITON_IMAGE"),
}


def reference(name: str) -> str:
    """The reference ``make images`` tags the image ``recsys-<name>`` with."""
    return f"{REGISTRY}/recsys-{name}:{VERSION}"


def default_images(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Each key's image: its environment variable when set and not empty, else the built-in."""
    return {key: environ.get(var) or reference(name) for key, (name, var) in IMAGES.items()}
