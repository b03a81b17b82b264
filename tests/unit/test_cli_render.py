"""What ``kubectl recsys status`` prints, from built statuses: one row per rollout state (every
phase and pause reason, with and without a canary, with and without analysis, names as long
as Kubernetes allows), read back field by field and column by column."""

from __future__ import annotations

import json
from typing import Any

import pytest
from api_objects import recommender

from recsys_operator import cli
from recsys_operator.kube import ApiError

STEPS = [{"setWeight": 10}, {"pause": {"duration": "30s"}}, {"setWeight": 50}, {"pause": {}}]
LONG = "movies-" + "v" * 240 + "-2026"  # 251 characters, a valid object name
STARTED = "2026-11-23T12:00:00Z"


def spec(**rollout: Any) -> dict[str, Any]:
    """A spec as the apiserver stores it (defaults filled in), with ``rollout`` on top."""
    serving = {"rollout": {"steps": STEPS, **rollout}}
    return recommender(serving=serving).spec.to_k8s()


def fields(text: str) -> dict[str, str]:
    """The ``Label: value`` block at the top."""
    block = text.split("\n\n")[0]
    out = {}
    for line in block.splitlines():
        label, _, value = line.partition(":")
        out[label] = value.strip()
    return out


def section(text: str, title: str) -> list[str]:
    """The lines of the part that starts with ``title``."""
    for part in text.split("\n\n"):
        if part.startswith(title):
            return part.rstrip("\n").splitlines()
    raise AssertionError(f"no {title!r} part in:\n{text}")


def cells(lines: list[str]) -> list[list[str]]:
    """A table read by the header's column offsets, so a misaligned row reads wrong."""
    header = lines[0]
    names = header.split()
    starts = [header.index(f" {n}") + 1 if i else header.index(n) for i, n in enumerate(names)]
    out = []
    for line in lines[1:]:
        line = line.ljust(starts[-1])  # an empty last cell is not padded
        bounds = [*starts[1:], None]
        row = [line[a:b].strip() for a, b in zip(starts, bounds, strict=True)]
        for a in starts[1:]:  # a column starts after the padding, never inside a cell
            assert line[a - 1] == " ", line
        out.append(row)
    return [names, *out]


def cond(type_: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {
        "type": type_, "status": status, "reason": reason, "message": message,
        "observedGeneration": 1, "lastTransitionTime": STARTED,
    }  # fmt: skip


ANALYSIS: list[dict[str, Any]] = [
    {"time": "2026-11-23T12:01:00Z", "verdict": "Inconclusive", "metrics": []},
    {
        "time": "2026-11-23T12:02:00Z",
        "verdict": "Failed",
        "metrics": [
            {"name": "request-success-rate", "canary": 98.5, "stable": 99.9, "min": 99,
             "max": None, "verdict": "Failed", "message": "98.5 < 99"},
            {"name": "request-duration", "canary": 41.0, "stable": 39.25, "max": 50,
             "verdict": "Passed"},
            {"name": "click-through-rate", "canary": None, "stable": 3.0, "min": 95, "max": 120,
             "verdict": "Inconclusive", "message": "too few impressions"},
        ],
    },
]  # fmt: skip

# (id, status.rollout, spec.serving.rollout extras, fields expected, labels that must be absent)
ROWS: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, str], set[str]]] = [
    (
        "progressing-at-a-weight",
        {"phase": "Progressing", "stable": "movies-v7", "canary": "movies-v8",
         "canaryWeight": 10, "currentStepIndex": 0, "failedChecks": 1,
         "stepStartedAt": STARTED},
        {},
        {"Phase": "Progressing", "Stable": "movies-v7", "Canary": "movies-v8 (weight 10%)",
         "Step": f"1/4 setWeight 10 (since {STARTED})", "Failed checks": "1 (failureLimit 3)"},
        {"Previous stable", "Aborted version", "Paused"},
    ),
    (
        "paused-by-a-timed-step",
        {"phase": "Paused", "pauseReason": "PauseStep", "stable": "movies-v7",
         "canary": "movies-v8", "canaryWeight": 10, "currentStepIndex": 1, "failedChecks": 0},
        {"analysis": {"failureLimit": 5}},
        {"Phase": "Paused (PauseStep)", "Step": "2/4 pause 30s",
         "Failed checks": "0 (failureLimit 5)"},
        {"Paused"},
    ),
    (
        "paused-until-promoted",
        {"phase": "Paused", "pauseReason": "AwaitingPromote", "stable": "movies-v7",
         "canary": "movies-v8", "canaryWeight": 50, "currentStepIndex": 3},
        {},
        {"Phase": "Paused (AwaitingPromote)", "Canary": "movies-v8 (weight 50%)",
         "Step": "4/4 pause (until promoted)", "Failed checks": "0 (failureLimit 3)"},
        set(),
    ),
    (
        "paused-by-the-user",
        {"phase": "Paused", "pauseReason": "UserPaused", "stable": "movies-v7",
         "canary": "movies-v8", "canaryWeight": 10, "currentStepIndex": 0},
        {"paused": True},
        {"Phase": "Paused (UserPaused)", "Step": "1/4 setWeight 10"},
        {"Paused"},  # the phase says it already
    ),
    (
        "paused-in-spec-not-yet-seen",
        {"phase": "Progressing", "stable": "movies-v7", "canary": "movies-v8",
         "canaryWeight": 10, "currentStepIndex": 0},
        {"paused": True},
        {"Phase": "Progressing",
         "Paused": "yes (spec.serving.rollout.paused, until resumed)"},
        set(),
    ),
    (
        "promoting-after-the-last-step",
        {"phase": "Promoting", "stable": "movies-v7", "canary": "movies-v8",
         "canaryWeight": 50, "currentStepIndex": 4, "message": "waiting for 2 of 3 gateways"},
        {},
        {"Phase": "Promoting", "Step": "4/4 done", "Message": "waiting for 2 of 3 gateways"},
        set(),
    ),
    (
        "healthy-with-a-rollback-window",
        {"phase": "Healthy", "stable": "movies-v8", "canaryWeight": 0, "currentStepIndex": 4,
         "previousStable": "movies-v7", "previousStableUntil": "2026-11-23T13:00:00Z",
         "startTime": STARTED},
        {},
        {"Phase": "Healthy", "Stable": "movies-v8", "Canary": "none",
         "Previous stable": "movies-v7, kept for rollback until 2026-11-23T13:00:00Z",
         "Rollout started": STARTED},
        {"Step", "Failed checks", "Paused"},
    ),
    (
        "healthy-first-version",
        {"phase": "Healthy", "stable": "movies-v1"},
        {},
        {"Phase": "Healthy", "Stable": "movies-v1", "Canary": "none"},
        {"Step", "Failed checks", "Previous stable", "Aborted version"},
    ),
    (
        "aborted",
        {"phase": "Aborted", "stable": "movies-v7", "abortedVersion": "movies-v8",
         "canaryWeight": 0, "failedChecks": 3, "message": "request-success-rate 98.5 < 99"},
        {},
        {"Phase": "Aborted", "Canary": "none", "Aborted version": "movies-v8",
         "Failed checks": "3 (failureLimit 3)", "Message": "request-success-rate 98.5 < 99"},
        {"Step"},
    ),
    (
        "no-steps",
        {"phase": "Progressing", "stable": "movies-v7", "canary": "movies-v8",
         "canaryWeight": 0, "currentStepIndex": 0},
        {"steps": []},
        {"Step": "none (a new version replaces the stable one at once)"},
        set(),
    ),
    (
        "nothing-reported-yet",
        {},
        {},
        {"Phase": "unknown (the operator has reported no rollout yet)", "Stable": "none yet",
         "Canary": "none"},
        {"Step", "Failed checks"},
    ),
    (
        "long-names",
        {"phase": "Progressing", "stable": LONG, "canary": LONG + "x", "canaryWeight": 25,
         "currentStepIndex": 2, "previousStable": LONG + "y"},
        {},
        {"Stable": LONG, "Canary": f"{LONG}x (weight 25%)", "Step": "3/4 setWeight 50",
         "Previous stable": f"{LONG}y"},
        set(),
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("rollout", "extra", "expected", "absent"),
    [r[1:] for r in ROWS],
    ids=[r[0] for r in ROWS],
)
def test_fields(
    rollout: dict[str, Any], extra: dict[str, Any], expected: dict[str, str], absent: set[str]
) -> None:
    text = cli.render_status("movies", "team-a", spec(**extra), {"rollout": rollout})
    got = fields(text)
    assert got["Name"] == "movies"
    assert got["Namespace"] == "team-a"
    assert {k: got.get(k) for k in expected} == expected
    assert not absent & got.keys()
    # Values start in one column, however long the labels.
    block = text.split("\n\n")[0].splitlines()
    assert len({len(line) - len(line[line.index(":") + 1 :].lstrip()) for line in block}) == 1


def test_no_status_at_all() -> None:
    text = cli.render_status("movies", "default", spec(), {})
    assert fields(text)["Phase"].startswith("unknown")
    assert section(text, "Conditions") == ["Conditions: none reported yet"]
    assert section(text, "Last analysis") == ["Last analysis: none yet"]


def test_a_spec_without_rollout_reads_the_api_defaults() -> None:
    rollout = {"phase": "Paused", "pauseReason": "PauseStep", "canary": "c", "currentStepIndex": 1}
    got = fields(cli.render_status("m", "ns", {}, {"rollout": rollout}))
    assert got["Step"] == "2/4 pause 10m"  # the API's default steps
    assert got["Failed checks"] == "0 (failureLimit 3)"


# (id, conditions in status, table rows expected)
CONDITION_ROWS: list[tuple[str, list[dict[str, Any]], list[list[str]]]] = [
    (
        "three-of-four-in-order",
        [cond("Drifted", "False", "NoDrift"), cond("Degraded", "False", "AsExpected"),
         cond("Ready", "True", "Serving", "movies-v7 serves 90%, movies-v8 10%"),
         cond("Progressing", "True", "Canary")],
        [["TYPE", "STATUS", "REASON", "MESSAGE"],
         ["Ready", "True", "Serving", "movies-v7 serves 90%, movies-v8 10%"],
         ["Progressing", "True", "Canary", ""], ["Degraded", "False", "AsExpected", ""]],
    ),
    (
        "long-reason-and-message",
        [cond("Degraded", "True", "R" * 120, LONG), cond("Ready", "False", "NoVersion")],
        [["TYPE", "STATUS", "REASON", "MESSAGE"], ["Ready", "False", "NoVersion", ""],
         ["Degraded", "True", "R" * 120, LONG]],
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [r[1:] for r in CONDITION_ROWS],
    ids=[r[0] for r in CONDITION_ROWS],
)
def test_conditions(conditions: list[dict[str, Any]], expected: list[list[str]]) -> None:
    text = cli.render_status("movies", "ns", spec(), {"conditions": conditions})
    lines = section(text, "Conditions:")
    assert lines[0] == "Conditions:"
    assert cells(lines[1:]) == expected


# (id, status.rollout.analysis, heading, table rows expected (None: no table))
ANALYSIS_ROWS: list[tuple[str, list[dict[str, Any]], str, list[list[str]] | None]] = [
    (
        "newest-is-shown-with-messages",
        ANALYSIS,
        "Last analysis: Failed at 2026-11-23T12:02:00Z",
        [["METRIC", "CANARY", "STABLE", "RANGE", "VERDICT", "MESSAGE"],
         ["request-success-rate", "98.5", "99.9", ">= 99", "Failed", "98.5 < 99"],
         ["request-duration", "41", "39.25", "<= 50", "Passed", ""],
         ["click-through-rate", "-", "3", "95..120", "Inconclusive", "too few impressions"]],
    ),
    (
        "no-messages-no-message-column",
        [{"time": STARTED, "verdict": "Passed", "metrics": [
            {"name": "request-success-rate", "canary": 99.95, "stable": 99.9, "min": 99,
             "verdict": "Passed"}]}],
        f"Last analysis: Passed at {STARTED}",
        [["METRIC", "CANARY", "STABLE", "RANGE", "VERDICT"],
         ["request-success-rate", "99.95", "99.9", ">= 99", "Passed"]],
    ),
    (
        "a-result-without-metrics",
        list(reversed(ANALYSIS)),
        "Last analysis: Inconclusive at 2026-11-23T12:01:00Z",
        None,
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("analysis", "heading", "expected"),
    [r[1:] for r in ANALYSIS_ROWS],
    ids=[r[0] for r in ANALYSIS_ROWS],
)
def test_analysis(
    analysis: list[dict[str, Any]], heading: str, expected: list[list[str]] | None
) -> None:
    rollout = {"phase": "Progressing", "canary": "movies-v8", "analysis": analysis}
    lines = section(cli.render_status("m", "ns", spec(), {"rollout": rollout}), "Last analysis")
    assert lines[0] == heading
    if expected is None:
        assert lines[1:] == ["  no metrics"]
    else:
        assert cells(lines[1:]) == expected


@pytest.mark.parametrize(
    ("step", "text"),
    [
        ({"setWeight": 25}, "setWeight 25"),
        ({"pause": {"duration": "30s"}}, "pause 30s"),
        ({"pause": {}}, "pause (until promoted)"),
        ({"pause": None}, "pause (until promoted)"),
    ],
)
def test_describe_step(step: dict[str, Any], text: str) -> None:
    assert cli.describe_step(step) == text


@pytest.mark.parametrize(
    ("status", "printed"),
    [
        ({}, {}),
        ({"conditions": []}, {}),
        ({"rollout": {"phase": "Healthy", "stable": "movies-v8"}},
         {"phase": "Healthy", "stable": "movies-v8"}),
    ],
)  # fmt: skip
def test_rollout_json(status: dict[str, Any], printed: dict[str, Any]) -> None:
    assert json.loads(cli.rollout_json(status)) == printed


# (metadata.generation, status.observedGeneration, phase, settled)
SETTLED_ROWS = [
    (2, 2, "Healthy", True),
    (2, 2, "Aborted", True),
    (2, 1, "Healthy", False),  # the status still describes the spec before the change
    (2, 2, "Paused", False),
    (2, 2, "Progressing", False),
    (2, 2, "Promoting", False),
    (2, None, None, False),
]


@pytest.mark.parametrize(("generation", "observed", "phase", "expected"), SETTLED_ROWS)
def test_settled(generation: int, observed: int | None, phase: str | None, expected: bool) -> None:
    status: dict[str, Any] = {"rollout": {"phase": phase}}
    if observed is not None:
        status["observedGeneration"] = observed
    assert cli.settled({"metadata": {"generation": generation}, "status": status}) is expected


SERVER = "https://10.0.0.1:6443"
# (id, the API's answer, the line printed)
API_ERROR_ROWS = [
    ("no-such-object", ApiError(404, "NotFound", 'recommenders.recsys.dev "m" not found'),
     'no Recommender "m" in namespace "ns"'),
    ("no-such-kind", ApiError(404, "NotFound", "the server could not find the requested resource"),
     f"the API server at {SERVER} does not serve recommenders.recsys.dev/v1alpha1: install the "
     "recsys-operator CRDs (crds/ or the Helm chart)"),
    ("rbac", ApiError(403, "Forbidden", 'recommenders.recsys.dev "m" is forbidden: User "u" '
     'cannot patch resource "recommenders"'),
     'not allowed: recommenders.recsys.dev "m" is forbidden: User "u" cannot patch resource '
     '"recommenders"'),
    ("credentials", ApiError(401, "Unauthorized", "Unauthorized"),
     f"the API server at {SERVER} refused the credentials (401 Unauthorized): check the "
     "kubeconfig's user"),
    ("webhook", ApiError(422, "Invalid", "spec.serving: Invalid value"),
     f"the API server at {SERVER} answered 422 Invalid: spec.serving: Invalid value"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("error", "line"), [r[1:] for r in API_ERROR_ROWS], ids=[r[0] for r in API_ERROR_ROWS]
)
def test_api_errors_read_as_one_line(error: ApiError, line: str) -> None:
    assert cli.explain_api_error(error, "m", "ns", SERVER) == line


def test_the_feature_views_and_their_staleness() -> None:
    views = [
        {"name": "users", "ready": True, "stale": "True", "watermark": "2026-11-23T11:00:00Z",
         "staleAfter": "2026-11-23T11:30:00Z"},
        {"name": "items", "ready": False, "stale": "Unknown"},
    ]  # fmt: skip
    lines = section(cli.render_status("m", "ns", spec(), {"featureViews": views}), "Feature")
    assert lines[0] == "Feature views:"
    assert cells(lines[1:]) == [
        ["NAME", "READY", "STALE", "WATERMARK", "STALE-AFTER"],
        ["users", "yes", "True", "2026-11-23T11:00:00Z", "2026-11-23T11:30:00Z"],
        ["items", "no", "Unknown", "-", "-"],
    ]


def test_no_feature_views_no_section() -> None:
    assert "Feature views" not in cli.render_status("m", "ns", spec(), {})
