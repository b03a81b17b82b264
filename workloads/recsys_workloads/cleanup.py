"""Entry point of the artifact cleanup Job: what a Recommender deleted with
``retentionPolicy: Delete`` leaves in its artifact store is removed before it goes.

The operator starts this Job only once every writer of those directories (training, index
builds, the log join) is gone, so nothing is written while it deletes. A directory that is
already gone counts as done: a retried run, after a crash half-way, finishes the rest. A store
that refuses (bad credentials, a denied bucket) is bad input and fails the Job at once; the
operator keeps the Recommender and says why (``ArtifactsNotDeleted``).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from recsys_contract.cleanup import CleanupConfig, CleanupSummary
from recsys_workloads.artifact_store import Store
from recsys_workloads.runtime import parse_config, run_entrypoint

log = logging.getLogger(__name__)


def clean(raw: dict[str, Any]) -> dict[str, Any]:
    cfg = parse_config(CleanupConfig, raw, "cleanup config")
    store = Store(cfg.storage_options)
    removed, absent = [], []
    for uri in cfg.uris:
        if store.exists(uri, "look up the artifacts to delete"):
            store.remove(uri, "delete the artifacts")
            log.info("deleted %s", uri)
            removed.append(uri)
        else:
            absent.append(uri)
    return CleanupSummary(removed=removed, absent=absent).to_wire()


def main(argv: list[str] | None = None) -> int:
    return run_entrypoint("cleanup", clean, argv)


if __name__ == "__main__":
    sys.exit(main())
