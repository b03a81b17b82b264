"""How every workload entry point keeps its contract with the operator.

Each entry point takes the JSON config the operator renders (``--config PATH``), parses it with
its model in ``recsys_contract``, and ends by writing its summary (a ``recsys_contract`` model
too) to its container termination message, which the operator reads from the finished pod: no
extra storage and no RBAC for pods to write status. The exit codes and the message's envelope
are ``recsys_contract.termination``'s.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from recsys_contract.termination import (
    EXIT_BAD_INPUT,
    EXIT_CRASH,
    EXIT_OK,
    EXIT_TRANSIENT,
    TERMINATION_MESSAGE_LIMIT,
    Outcome,
    failure,
)

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_CRASH",
    "EXIT_OK",
    "EXIT_TRANSIENT",
    "BadInputError",
    "TransientError",
    "describe_validation_error",
    "load_config",
    "parse_config",
    "run_entrypoint",
]

DEFAULT_TERMINATION_LOG = "/dev/termination-log"
M = TypeVar("M", bound=BaseModel)
#: a failure's message is cut to this when the whole summary would not fit
_MESSAGE_KEPT = TERMINATION_MESSAGE_LIMIT - 256

log = logging.getLogger("recsys_workloads")


class BadInputError(Exception):
    """Input that a retry cannot fix. The message names the field or column and the fix."""


class TransientError(Exception):
    """A failure that may pass on its own (network, store unavailable); the Job retries it."""


def write_termination_message(summary: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write ``summary`` as compact JSON, shrinking it rather than letting Kubernetes cut it."""
    text = json.dumps(summary, separators=(",", ":"), sort_keys=True, default=str)
    if len(text.encode()) > TERMINATION_MESSAGE_LIMIT:
        outcome = Outcome.model_validate(summary)
        message = outcome.message[:_MESSAGE_KEPT] if outcome.message else None
        keep = outcome.model_copy(update={"truncated": True, "message": message})
        text = json.dumps(keep.to_wire(), separators=(",", ":"), sort_keys=True, default=str)
        text = text[: TERMINATION_MESSAGE_LIMIT - 1]
    try:
        Path(path).write_text(text)
    except OSError as exc:  # a read-only or missing path must not turn success into failure
        log.warning("could not write termination message to %s: %s", path, exc)


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the operator-rendered JSON config; a missing or malformed file is bad input."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise BadInputError(f"--config: file {path} does not exist") from exc
    except json.JSONDecodeError as exc:
        raise BadInputError(f"--config: {path} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise BadInputError(f"--config: {path} must hold a JSON object, not {type(data).__name__}")
    return data


def run_entrypoint(
    name: str,
    work: Callable[[dict[str, Any]], Mapping[str, Any]],
    argv: list[str] | None = None,
) -> int:
    """Parse ``--config``/``--termination-log``, run ``work`` and map its outcome to an exit code.

    ``work`` returns the summary of a successful run; failures are classified by exception type
    so every entry point reports them the same way.
    """
    parser = argparse.ArgumentParser(prog=f"recsys-{name}")
    parser.add_argument("--config", required=True, help="JSON config rendered by the operator")
    parser.add_argument(
        "--termination-log",
        default=os.environ.get("RECSYS_TERMINATION_LOG", DEFAULT_TERMINATION_LOG),
        help="where the JSON summary goes (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    code: int
    summary: dict[str, Any]
    try:
        summary = {"status": "Succeeded", **work(load_config(args.config))}
        code = EXIT_OK
    except BadInputError as exc:
        summary, code = failure("BadInput", str(exc)).to_wire(), EXIT_BAD_INPUT
    except TransientError as exc:
        summary, code = failure("Transient", str(exc)).to_wire(), EXIT_TRANSIENT
    except Exception as exc:
        log.exception("%s crashed", name)
        summary = failure("Crash", f"{type(exc).__name__}: {exc}").to_wire()
        code = EXIT_CRASH
    if code != EXIT_OK:
        print(f"recsys-{name}: {summary['message']}", file=sys.stderr)
    write_termination_message(summary, args.termination_log)
    return code


def describe_validation_error(exc: ValidationError) -> str:
    """One clause per problem, each led by the camelCase path of the field (never the input of
    a whole-object check, which would echo the entire config)."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "config"
        if err["type"] == "extra_forbidden":
            parts.append(f"{loc}: unknown field (check the spelling)")
        elif err["type"] == "missing":
            parts.append(f"{loc}: required field is missing")
        elif err["loc"]:
            parts.append(f"{loc}: {err['msg']} (got {err.get('input')!r})")
        else:
            parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def parse_config(model: type[M], raw: Any, what: str) -> M:
    """``raw`` as ``model`` (a ``recsys_contract`` document); any problem is bad input, one
    clause per field, led by ``what``."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise BadInputError(f"{what}: " + describe_validation_error(exc)) from exc
