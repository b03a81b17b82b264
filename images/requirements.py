"""Requirement lists for the image builds, read from pyproject.toml, and the check that an
image holds only pinned distributions.

``python requirements.py deps pyproject.toml [EXTRA...]`` prints the project's dependencies plus
those of the named extras, one per line, for ``pip install -c constraints.txt -r -``: the
dependencies go into a layer of their own, below the project's code, so a change to the code
alone reinstalls no dependency.

``python requirements.py install [--extras a,b] [PIP_ARG...]`` runs ``pip install -c
constraints.txt`` (the file beside this one) with the project's dependencies and those of the
extras when ``--extras`` is given, plus the other arguments (requirements and pip options that
``pip download`` takes too). With ``$HOST_PIP_CACHE`` (a directory the build mounts) the wheels
are kept there across builds; without it pip keeps no cache (nothing of it lands in a layer).

``python requirements.py check constraints.txt`` fails (and names them) when a distribution in
the running environment is missing from the constraints or differs from its pin: pip's ``-c``
pins only what it lists, so a package that is needed by an image but absent from the
development environment would otherwise float between builds.

Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

#: The project itself is installed from the tree, not from the pins.
PROJECT = "recsys-operator"


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def deps(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"requirements.py: no such extra in {pyproject}: {', '.join(unknown)}")
    found = list(project.get("dependencies", []))
    for extra in extras:
        found += [r for r in optional[extra] if r not in found]
    return found


def pins(constraints: Path) -> dict[str, str]:
    out = {}
    for line in constraints.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[normalize(name)] = version.strip()
    return out


def check(constraints: Path) -> list[str]:
    pinned = pins(constraints)
    problems = []
    for dist in importlib.metadata.distributions():
        name, version = normalize(dist.metadata["Name"]), dist.version
        if name == PROJECT:
            continue
        # a local label (torch 2.x+cpu from PyTorch's CPU index) satisfies the public pin
        if pinned.get(name) != version.split("+", 1)[0]:
            problems.append(f"{name}=={version} (pinned: {pinned.get(name, 'no pin')})")
    return sorted(problems)


def install(args: list[str]) -> None:
    here = Path(__file__).resolve().parent
    if args[:1] == ["--extras"]:
        extras = [e for e in args[1].split(",") if e]
        args = deps(here / "pyproject.toml", extras) + args[2:]
    pip = [sys.executable, "-m", "pip"]
    pinned = ["-q", "-c", str(here / "constraints.txt")]
    cache = os.environ.get("HOST_PIP_CACHE")
    if not cache:
        subprocess.run([*pip, "install", *pinned, "--no-cache-dir", *args], check=True)
        return
    # pip's HTTP cache keeps nothing behind a proxy that marks responses uncacheable, so the
    # wheels themselves are kept: `pip download` skips a file already in the directory, and
    # the install then reads only that directory.
    wheels = str(Path(cache) / "wheels")
    local = ["--find-links", wheels]
    subprocess.run([*pip, "download", *pinned, "-d", wheels, *local, *args], check=True)
    index_args = {"--index-url", "--extra-index-url"}
    kept = [a for i, a in enumerate(args) if a not in index_args and args[i - 1] not in index_args]
    subprocess.run([*pip, "install", *pinned, "--no-index", *local, *kept], check=True)


def main(argv: list[str]) -> None:
    if argv[:1] == ["install"]:
        install(argv[1:])
    elif len(argv) >= 2 and argv[0] == "deps":
        print("\n".join(deps(Path(argv[1]), argv[2:])))
    elif len(argv) == 2 and argv[0] == "check":
        problems = check(Path(argv[1]))
        if problems:
            raise SystemExit("not pinned by images/constraints.txt: " + ", ".join(problems))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
