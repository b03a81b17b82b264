"""Feast's ``materialize`` into Redis, timed; runs inside Feast's own virtual environment.

Called by ``materialize_bench.py`` (never imported by the project: Feast's pins would fight
ours). Sets up a feature repository with a file offline store, as Feast's documentation
describes, over the same parquet and the same Redis the other contenders use, and prints one
JSON line with the timing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", required=True, help="users.parquet of the layout")
    parser.add_argument("--redis", required=True, help="host:port")
    parser.add_argument("--repo", required=True, help="folder for the feature repository")
    parser.add_argument("--ttl-seconds", type=int, default=0)
    args = parser.parse_args()

    repo = Path(args.repo)
    repo.mkdir(parents=True, exist_ok=True)
    ttl_line = f"  key_ttl_seconds: {args.ttl_seconds}\n" if args.ttl_seconds else ""
    (repo / "feature_store.yaml").write_text(
        "project: bench\n"
        f"registry: {repo / 'registry.db'}\n"
        "provider: local\n"
        "online_store:\n"
        "  type: redis\n"
        f'  connection_string: "{args.redis}"\n'
        f"{ttl_line}"
        "offline_store:\n"
        "  type: file\n"
        "entity_key_serialization_version: 3\n"
    )
    (repo / "features.py").write_text(
        textwrap.dedent(
            f"""
            from datetime import timedelta
            from feast import Entity, FeatureView, Field, FileSource
            from feast.types import Int32, Int64, String

            user = Entity(name="user", join_keys=["user_id"])
            source = FileSource(path={args.source!r}, timestamp_field="event_timestamp")
            users = FeatureView(
                name="users",
                entities=[user],
                ttl=timedelta(days=3650),
                schema=[
                    Field(name="user_id", dtype=Int64),
                    Field(name="age", dtype=Int32),
                    Field(name="gender", dtype=String),
                    Field(name="occupation", dtype=String),
                ],
                source=source,
            )
            """
        )
    )
    # `feast apply` in the repository, as the documentation does it.
    feast_cli = Path(sys.executable).parent / "feast"
    subprocess.run([str(feast_cli), "apply"], cwd=repo, check=True, capture_output=True)
    from feast import FeatureStore  # type: ignore[import-not-found]  # Feast's own venv

    store = FeatureStore(repo_path=str(repo))
    end = datetime.now(tz=UTC) + timedelta(days=1)
    start = end - timedelta(days=3650)
    began = time.perf_counter()
    store.materialize(start, end, feature_views=["users"])
    seconds = time.perf_counter() - began
    print(json.dumps({"feast_seconds": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
