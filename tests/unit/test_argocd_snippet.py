"""The argocd-cm patch users apply (and its copy in the chart's README) is what the tests run:
it is generated from the health.lua files, and this fails when it was not regenerated."""

from __future__ import annotations

import pytest
import yaml
from argocd.health import GROUP, KINDS, script
from argocd.snippet import PATCH, README, fenced, readme_block, render

STALE = "stale: run `cd tests && python -m argocd.snippet`"


def test_patch_file_is_generated_from_the_scripts() -> None:
    assert PATCH.read_text() == render(), f"{PATCH.name} is {STALE}"


def test_readme_inlines_the_patch() -> None:
    assert readme_block(README.read_text()) == fenced(render()), f"the README's copy is {STALE}"


@pytest.mark.parametrize("kind", KINDS)
def test_patch_carries_each_script_byte_for_byte(kind: str) -> None:
    data = yaml.safe_load(render())["data"]
    assert data[f"resource.customizations.health.{GROUP}_{kind}"] == script(kind).read_text()
    assert len(data) == len(KINDS)
