"""A directory served over HTTP (aiohttp's static files, with Range requests), as a process.

The real node's pods share no filesystem with the tests, and the testbed's S3 server is not
here yet, so a FeatureView's parquet source reaches a pod as an ``http://`` URI, which the
workloads read through fsspec like any other (``FeatureView.spec.source.path`` accepts it).
Random access (parquet footers first) needs Range requests, which aiohttp's file responses
answer and Python's ``http.server`` does not.

Run as ``python -m testbed.http_files DIR ADDRESS PORT``; ``serve()`` starts it and waits.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from testbed.processes import ProcessGroup, free_port, wait_until


@dataclass
class FileServer:
    directory: Path
    address: str
    port: int
    procs: ProcessGroup
    log_dir: Path

    def url(self, name: str) -> str:
        return f"http://{self.address}:{self.port}/{name}"

    def stop(self) -> None:
        self.procs.stop_all()
        shutil.rmtree(self.log_dir, ignore_errors=True)


def serve(directory: Path, address: str = "127.0.0.1") -> FileServer:
    log_dir = Path(tempfile.mkdtemp(prefix="recsys-http-files-"))
    procs = ProcessGroup(log_dir)
    port = free_port()
    proc = procs.start(
        "http-files",
        [sys.executable, "-m", "testbed.http_files", str(directory), address, str(port)],
        env={"PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )

    def answering() -> bool:
        with urllib.request.urlopen(f"http://{address}:{port}/", timeout=2) as resp:
            return int(resp.status) < 500

    try:
        wait_until(proc, answering, 20, "serving")
    except BaseException:
        procs.stop_all()
        raise
    return FileServer(directory, address, port, procs, log_dir)


def main(argv: list[str]) -> None:
    from aiohttp import web

    directory, address, port = argv
    app = web.Application()

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app.router.add_get("/", health)
    app.router.add_static("/", directory)
    web.run_app(app, host=address, port=int(port), print=None)


if __name__ == "__main__":
    main(sys.argv[1:])
