"""``kubectl recsys``: a Recommender's rollout read and steered from the terminal.

kubectl runs any ``kubectl-<name>`` on the PATH as ``kubectl <name>``, so the console script
``kubectl-recsys`` is the whole plugin. It reads the status the operator writes and sets the
three annotations the operator acts on once per new value (``recsys.dev/promote``,
``recsys.dev/abort``, ``recsys.dev/retrain``); ``pause`` and ``resume`` change the user's own
``spec.serving.rollout.paused`` for them, as ``kubectl argo rollouts pause`` does. A new token
per command (the time in milliseconds) is what makes the same command act again.

It talks to the cluster as the operator does (``kubeconfig.load`` and ``KubeClient``), so a
kubeconfig the operator accepts works here too, exec plugins included. The one difference
is the lookup order, which is kubectl's: ``--kubeconfig``, ``$KUBECONFIG``, ``~/.kube/config``,
and only then the in-cluster service account.

The text ``status`` prints is built by a pure function (``render_status``) from the spec and
status dicts, so every phase is tested without a cluster. Errors a user can fix (no such
Recommender, no permission, an unreadable kubeconfig, an unreachable server) end in one line
on stderr and exit code 1, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
from lightkube import ConfigError

from recsys_contract.formats import parse_duration
from recsys_operator import GROUP, VERSION
from recsys_operator.api.serving import Rollout
from recsys_operator.kube import ApiError, KubeClient, resource_type
from recsys_operator.kubeconfig import DEFAULT_KUBECONFIG, Credentials, load
from recsys_operator.planning.recommender import RETRAIN_ANNOTATION

PROG = "kubectl recsys"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "Recommender"
PROMOTE_ANNOTATION = f"{GROUP}/promote"
ABORT_ANNOTATION = f"{GROUP}/abort"
#: The field manager of the spec changes (pause, resume) and the annotations, so that
#: ``kubectl get --show-managed-fields`` says who set them.
FIELD_MANAGER = "kubectl-recsys"
WATCH_INTERVAL_SECONDS = 2.0
DEFAULT_WATCH_TIMEOUT = "5m"
#: A rollout in one of these phases changes no more without a new version or a user's act.
SETTLED_PHASES = ("Healthy", "Aborted")
#: The conditions ``status`` shows, in this order.
CONDITION_TYPES = ("Ready", "Progressing", "Degraded")


class CliError(Exception):
    """A failure the user can act on; its text is the one line printed."""


# --- rendering (pure) ---------------------------------------------------------------------------


def _text(value: Any, missing: str = "-") -> str:
    if value is None or value == "":
        return missing
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    """Columns as wide as their widest cell (names may be 253 characters), two spaces apart;
    the last column is not padded."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for row in [headers, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines


def describe_step(step: Any) -> str:
    """A canary step as the spec writes it: ``setWeight 25``, ``pause 30s``,
    ``pause (until promoted)``."""
    step = _dict(step)
    if step.get("setWeight") is not None:
        return f"setWeight {step['setWeight']}"
    if "pause" in step:
        duration = _dict(step["pause"]).get("duration")
        return f"pause {duration}" if duration else "pause (until promoted)"
    return json.dumps(step, sort_keys=True)


def _rollout_spec(spec: Mapping[str, Any]) -> Mapping[str, Any]:
    """The spec's rollout; the API's defaults where the spec has none (the apiserver fills
    them in, so only a hand-built object lacks them)."""
    given = _dict(_dict(spec.get("serving")).get("rollout"))
    return {**Rollout().to_k8s(), **given}


def _range(metric: Mapping[str, Any]) -> str:
    low, high = metric.get("min"), metric.get("max")
    if low is not None and high is not None:
        return f"{_text(low)}..{_text(high)}"
    if low is not None:
        return f">= {_text(low)}"
    if high is not None:
        return f"<= {_text(high)}"
    return "-"


def _step_line(rollout: Mapping[str, Any], steps: list[Any]) -> str | None:
    index = rollout.get("currentStepIndex")
    if not isinstance(index, int) or isinstance(index, bool):
        return None
    if not steps:
        return "none (a new version replaces the stable one at once)"
    if index >= len(steps):
        return f"{len(steps)}/{len(steps)} done"
    line = f"{index + 1}/{len(steps)} {describe_step(steps[index])}"
    if rollout.get("stepStartedAt"):
        line += f" (since {rollout['stepStartedAt']})"
    return line


def render_status(
    name: str, namespace: str, spec: Mapping[str, Any], status: Mapping[str, Any]
) -> str:
    """What ``kubectl recsys status`` prints for a Recommender with ``spec`` and ``status``
    (the objects' dicts as the apiserver returns them, camelCase)."""
    rollout = _dict(status.get("rollout"))
    rollout_spec = _rollout_spec(spec)
    steps = _list(rollout_spec.get("steps"))
    failure_limit = _dict(rollout_spec.get("analysis")).get("failureLimit")

    fields: list[tuple[str, str]] = [("Name", name), ("Namespace", namespace)]
    phase = rollout.get("phase")
    if phase:
        reason = rollout.get("pauseReason")
        fields.append(("Phase", f"{phase} ({reason})" if reason else str(phase)))
    else:
        fields.append(("Phase", "unknown (the operator has reported no rollout yet)"))
    if rollout_spec.get("paused") and rollout.get("pauseReason") != "UserPaused":
        fields.append(("Paused", "yes (spec.serving.rollout.paused, until resumed)"))
    fields.append(("Stable", _text(rollout.get("stable"), "none yet")))
    canary = rollout.get("canary")
    if canary:
        fields.append(("Canary", f"{canary} (weight {_text(rollout.get('canaryWeight'), '0')}%)"))
    else:
        fields.append(("Canary", "none"))
    if canary or phase in ("Progressing", "Paused", "Promoting"):
        step = _step_line(rollout, steps)
        if step is not None:
            fields.append(("Step", step))
    if canary or phase in ("Progressing", "Paused", "Promoting", "Aborted"):
        failed = rollout.get("failedChecks")
        fields.append(
            ("Failed checks", f"{_text(failed, '0')} (failureLimit {_text(failure_limit)})")
        )
    if rollout.get("abortedVersion"):
        fields.append(("Aborted version", str(rollout["abortedVersion"])))
    if rollout.get("previousStable"):
        until = rollout.get("previousStableUntil")
        kept = f", kept for rollback until {until}" if until else ""
        fields.append(("Previous stable", f"{rollout['previousStable']}{kept}"))
    if rollout.get("startTime"):
        fields.append(("Rollout started", str(rollout["startTime"])))
    if rollout.get("message"):
        fields.append(("Message", str(rollout["message"])))

    width = max(len(label) for label, _ in fields) + 2
    lines = [f"{label + ':':<{width}}{value}" for label, value in fields]

    conditions = {
        c.get("type"): c for c in _list(status.get("conditions")) if isinstance(c, Mapping)
    }
    shown = [conditions[t] for t in CONDITION_TYPES if t in conditions]
    lines.append("")
    if shown:
        lines.append("Conditions:")
        rows = [
            [_text(c.get("type")), _text(c.get("status")), _text(c.get("reason")),
             _text(c.get("message"), "")]
            for c in shown
        ]  # fmt: skip
        lines += table(["TYPE", "STATUS", "REASON", "MESSAGE"], rows)
    else:
        lines.append("Conditions: none reported yet")

    views = [v for v in _list(status.get("featureViews")) if isinstance(v, Mapping)]
    if views:
        lines.append("")
        lines.append("Feature views:")
        rows = [
            [_text(v.get("name")), "yes" if v.get("ready") else "no", _text(v.get("stale")),
             _text(v.get("watermark")), _text(v.get("staleAfter"))]
            for v in views
        ]  # fmt: skip
        lines += table(["NAME", "READY", "STALE", "WATERMARK", "STALE-AFTER"], rows)

    analyses = [a for a in _list(rollout.get("analysis")) if isinstance(a, Mapping)]
    lines.append("")
    if analyses:
        last = analyses[-1]  # newest last
        lines.append(f"Last analysis: {_text(last.get('verdict'))} at {_text(last.get('time'))}")
        metrics = [m for m in _list(last.get("metrics")) if isinstance(m, Mapping)]
        headers = ["METRIC", "CANARY", "STABLE", "RANGE", "VERDICT"]
        rows = [
            [_text(m.get("name")), _text(m.get("canary")), _text(m.get("stable")), _range(m),
             _text(m.get("verdict"))]
            for m in metrics
        ]  # fmt: skip
        if any(m.get("message") for m in metrics):
            headers.append("MESSAGE")
            for row, m in zip(rows, metrics, strict=True):
                row.append(_text(m.get("message"), ""))
        if rows:
            lines += table(headers, rows)
        else:
            lines.append("  no metrics")
    else:
        lines.append("Last analysis: none yet")
    return "\n".join(lines) + "\n"


def rollout_json(status: Mapping[str, Any]) -> str:
    """``-o json``: status.rollout as it is stored (``{}`` before the operator wrote one)."""
    return json.dumps(_dict(status.get("rollout")), indent=2, sort_keys=True) + "\n"


def settled(obj: Mapping[str, Any]) -> bool:
    """The status describes the current spec and its rollout has come to rest."""
    status = _dict(obj.get("status"))
    generation = _dict(obj.get("metadata")).get("generation")
    observed = status.get("observedGeneration")
    current = generation is None or (isinstance(observed, int) and observed >= generation)
    return current and _dict(status.get("rollout")).get("phase") in SETTLED_PHASES


# --- the cluster --------------------------------------------------------------------------------


def explain_api_error(exc: ApiError, name: str, namespace: str, server: str) -> str:
    """One line for an API answer the user has to act on."""
    if exc.status == 404:
        if "could not find the requested resource" in exc.message:
            return (
                f"the API server at {server} does not serve recommenders.{GROUP}/{VERSION}: "
                "install the recsys-operator CRDs (crds/ or the Helm chart)"
            )
        return f'no Recommender "{name}" in namespace "{namespace}"'
    if exc.status == 403:
        return f"not allowed: {exc.message}"
    if exc.status == 401:
        return (
            f"the API server at {server} refused the credentials (401 Unauthorized): "
            "check the kubeconfig's user"
        )
    return f"the API server at {server} answered {exc.status} {exc.reason}: {exc.message}"


def credentials_for(kubeconfig: str | None, context: str | None) -> Credentials:
    """kubectl's lookup: the flag, ``$KUBECONFIG``, ``~/.kube/config``, then in-cluster."""
    if not kubeconfig and not os.environ.get("KUBECONFIG"):
        default = Path(DEFAULT_KUBECONFIG).expanduser()
        if default.is_file():
            kubeconfig = str(default)
    try:
        return load(kubeconfig or None, context=context)
    except ConfigError as exc:
        raise CliError(f"kubeconfig: {exc}") from None
    except Exception as exc:  # a file that is no kubeconfig fails anywhere in the parser
        where = kubeconfig or os.environ.get("KUBECONFIG") or "the in-cluster service account"
        raise CliError(f"kubeconfig: cannot load {where}: {type(exc).__name__}: {exc}") from None


@dataclass
class Session:
    kube: KubeClient
    name: str
    namespace: str

    @property
    def path(self) -> str:
        return resource_type(API_VERSION, KIND).path(self.namespace, self.name)

    async def call(self, method: str, body: Any = None) -> dict[str, Any]:
        params = {"fieldManager": FIELD_MANAGER} if method == "PATCH" else None
        try:
            return await self.kube.request(
                method,
                self.path,
                kind=KIND,
                params=params,
                body=body,
                content_type="application/merge-patch+json",
            )
        except ApiError as exc:
            raise CliError(
                explain_api_error(exc, self.name, self.namespace, self.kube.server)
            ) from None
        except httpx.HTTPError as exc:
            raise CliError(
                f"cannot reach the API server at {self.kube.server}: "
                f"{str(exc) or type(exc).__name__}"
            ) from None
        except ConfigError as exc:  # an exec plugin fails when the first request needs it
            raise CliError(f"kubeconfig: {exc}") from None

    async def get(self) -> dict[str, Any]:
        return await self.call("GET")

    async def merge_patch(self, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.call("PATCH", body)


def new_token() -> str:
    return str(time.time_ns() // 1_000_000)


# --- commands -----------------------------------------------------------------------------------


async def cmd_status(session: Session, args: argparse.Namespace) -> int:
    def show(obj: Mapping[str, Any]) -> str:
        status = _dict(obj.get("status"))
        if args.output == "json":
            return rollout_json(status)
        return render_status(session.name, session.namespace, _dict(obj.get("spec")), status)

    obj = await session.get()
    if not args.watch:
        sys.stdout.write(show(obj))
        return 0
    deadline = time.monotonic() + args.timeout
    last = ""
    while True:
        text = show(obj)
        if text != last:
            sys.stdout.write(("\n" if last else "") + text)
            sys.stdout.flush()
            last = text
        if settled(obj):
            return 0
        left = deadline - time.monotonic()
        if left <= 0:
            phase = _text(_dict(_dict(obj.get("status")).get("rollout")).get("phase"), "unknown")
            raise CliError(
                f"timed out after {args.timeout:g}s waiting for the rollout to become Healthy "
                f"or Aborted (it is {phase})"
            )
        await asyncio.sleep(min(WATCH_INTERVAL_SECONDS, left))
        obj = await session.get()


ANNOTATIONS = {
    "promote": PROMOTE_ANNOTATION,
    "abort": ABORT_ANNOTATION,
    "retrain": RETRAIN_ANNOTATION,
}
ANNOTATION_EFFECTS = {
    "promote": "the operator moves the canary past its current pause step",
    "promote-full": "the operator promotes the canary to 100% at once, skipping the steps left",
    "abort": "the operator rolls the running canary back, all traffic goes to the stable version",
    "retrain": "the operator creates one ModelVersion (reason Manual) once no other training "
    "runs; it goes through the evaluation gate and the canary",
}


async def cmd_annotate(session: Session, args: argparse.Namespace) -> int:
    key = ANNOTATIONS[args.command]
    full = args.command == "promote" and args.full
    token = f"full-{new_token()}" if full else new_token()
    await session.merge_patch({"metadata": {"annotations": {key: token}}})
    effect = ANNOTATION_EFFECTS["promote-full" if full else args.command]
    print(f"recommender/{session.name}: set {key}={token}; {effect}")
    return 0


async def cmd_pause(session: Session, args: argparse.Namespace) -> int:
    paused = args.command == "pause"
    obj = await session.get()
    rollout = _rollout_spec(_dict(obj.get("spec")))
    field = f"spec.serving.rollout.paused={_text(paused)}"
    if bool(rollout.get("paused")) == paused:
        state = "paused" if paused else "not paused"
        print(f"recommender/{session.name}: already {state} ({field}); nothing changed")
        return 0
    await session.merge_patch({"spec": {"serving": {"rollout": {"paused": paused}}}})
    if paused:
        effect = "the operator holds the canary at its weight: no step advances and nothing is "
        effect += "promoted until resumed"
    else:
        effect = "the operator continues the rollout from its current step"
    print(f"recommender/{session.name}: set {field}; {effect}")
    return 0


Command = Callable[[Session, argparse.Namespace], Coroutine[Any, Any, int]]
COMMANDS: dict[str, tuple[Command, str]] = {
    "status": (cmd_status, "the rollout at a glance: phase, versions, step, analysis"),
    "promote": (cmd_annotate, "advance past the current pause step"),
    "abort": (cmd_annotate, "roll the running canary back"),
    "pause": (cmd_pause, "hold the rollout (spec.serving.rollout.paused: true)"),
    "resume": (cmd_pause, "continue a paused rollout (spec.serving.rollout.paused: false)"),
    "retrain": (cmd_annotate, "train a new ModelVersion now"),
}


def _timeout(text: str) -> float:
    try:
        return float(text) if text.replace(".", "", 1).isdigit() else parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("name", metavar="NAME", help="the Recommender")
    common.add_argument(
        "-n", "--namespace", help="its namespace (default: the context's, else default)"
    )
    common.add_argument(
        "--kubeconfig", help="kubeconfig file(s) (default: $KUBECONFIG, else ~/.kube/config)"
    )
    common.add_argument("--context", help="the kubeconfig context (default: its current one)")
    top = argparse.ArgumentParser(
        prog=PROG, description="Read and steer a Recommender's rollout (recsys-operator)."
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        cmd = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        if name == "status":
            cmd.add_argument(
                "-w", "--watch", action="store_true",
                help="poll every 2 s until the rollout is Healthy or Aborted",
            )  # fmt: skip
            cmd.add_argument(
                "--timeout", type=_timeout, default=parse_duration(DEFAULT_WATCH_TIMEOUT),
                help=f"how long --watch waits (30s, 5m, ...; default {DEFAULT_WATCH_TIMEOUT})",
            )  # fmt: skip
            cmd.add_argument("-o", "--output", choices=("json",), help="json: status.rollout")
        if name == "promote":
            cmd.add_argument(
                "--full", action="store_true", help="promote to 100%% at once, skipping steps"
            )
    return top


async def run(args: argparse.Namespace) -> int:
    credentials = credentials_for(args.kubeconfig, args.context)
    namespace = args.namespace or credentials.config.context.namespace or "default"
    kube = KubeClient(credentials, FIELD_MANAGER, trust_env=True)
    try:
        command, _ = COMMANDS[args.command]
        return await command(Session(kube, args.name, namespace), args)
    finally:
        await kube.close()


def one_line(text: str) -> str:
    """A YAML parser's or server's multi-line message, on the one line an error gets."""
    return " ".join(text.split())


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return asyncio.run(run(args))
    except CliError as exc:
        print(f"error: {one_line(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug, still one line: the plugin's output is for users
        print(f"error: {type(exc).__name__}: {one_line(str(exc))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
