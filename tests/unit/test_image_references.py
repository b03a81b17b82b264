"""The image references agree everywhere: what images/build.sh tags (read from the chart) is
what the operator uses when nothing overrides it, and the variables override it key by key."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from recsys_operator import images

REPO = Path(__file__).resolve().parents[2]


def test_build_script_tags_are_the_operator_references() -> None:
    out = subprocess.run(
        ["bash", str(REPO / "images" / "build.sh"), "tags"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    tags = dict(line.split("=", 1) for line in out.split())
    assert tags == {name: images.reference(name) for name in tags}
    assert set(tags) == {"operator", "workloads", "trainer", "triton"}
    assert {name for name, _ in images.IMAGES.values()} <= set(tags)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        (
            {},
            {
                "workloads": "workloads",
                "trainer": "trainer",
                "gateway": "workloads",
                "triton": "triton",
            },
        ),
        (
            {"RECSYS_TRITON_IMAGE": "nvcr.io/nvidia/tritonserver:25.01-py3"},
            {
                "workloads": "workloads",
                "trainer": "trainer",
                "gateway": "workloads",
                "triton": "=nvcr.io/nvidia/tritonserver:25.01-py3",
            },
        ),
        (
            {"RECSYS_WORKLOADS_IMAGE": "", "RECSYS_GATEWAY_IMAGE": "reg/gw:1"},
            {
                "workloads": "workloads",
                "trainer": "trainer",
                "gateway": "=reg/gw:1",
                "triton": "triton",
            },
        ),
    ],
    ids=["built-in", "one-set", "empty-is-unset"],
)
def test_environment_overrides_each_key(environ: dict[str, str], expected: dict[str, str]) -> None:
    """``expected``: an image name (its built-in reference) or ``=reference``."""
    want = {
        key: value[1:] if value.startswith("=") else images.reference(value)
        for key, value in expected.items()
    }
    assert images.default_images(environ) == want
