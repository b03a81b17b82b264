"""``python -m recsys_workloads.gateway --config /etc/recsys/gateway.json --port=8080``.

A bad config exits with code 2 and a message naming the field, before the port is opened.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from pathlib import Path

from aiohttp import web

from recsys_contract.formats import REDIS_PASSWORD_ENV
from recsys_workloads.gateway.app import create_app, gateway_from_file
from recsys_workloads.runtime import EXIT_BAD_INPUT, BadInputError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="recsys-gateway")
    parser.add_argument("--config", required=True, type=Path, help="gateway.json")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        gateway = gateway_from_file(args.config, os.environ.get(REDIS_PASSWORD_ENV) or None)
    except BadInputError as exc:
        print(f"recsys-gateway: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    # uvloop's event loop when installed (the workloads extra has it): same code, faster I/O
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(create_app(gateway), host=args.host, port=args.port, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
