"""The log join of a Recommender: the CronJob that turns its served log into training rows.

The join itself is told in ``recsys_workloads.logjoin``: it reads the gateways' ``served`` and
``events`` streams, writes dated parquet partitions under ``<artifacts storageUri>/logged``
and keeps its cursor in Redis, so the CronJob's runs (never two at once: concurrencyPolicy
Forbid) write every row exactly once. It runs while the Recommender serves and
``spec.training.loggedData.enabled`` holds; otherwise its CronJob and ConfigMap are removed
(the cursor stays in Redis, so a later CronJob continues where this one stopped). Training
reads the rows through ``planning.training.logged_data``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from recsys_contract.formats import parse_duration
from recsys_contract.keyspace import store_name
from recsys_contract.logjoin import LogJoinConfig
from recsys_operator.api.recommender import Recommender
from recsys_operator.labels import standard_labels
from recsys_operator.naming import child_name
from recsys_operator.planning.pods import (
    claims_in,
    cron_pod_spec,
    mount_claims,
    recommender_store,
    redis_password_env,
    serial_cron_job,
    workload_config_map,
    workload_container,
)
from recsys_operator.planning.training import artifact_env_from, logged_uri
from recsys_operator.planning.training import logged_enabled as logged_enabled

LOGJOIN_MODULE = "recsys_workloads.logjoin"
COMPONENT = "logjoin"


def logjoin_name(rec: Recommender) -> str:
    return child_name(rec.metadata.name, COMPONENT)


def labels(rec: Recommender) -> dict[str, str]:
    return standard_labels(
        component=COMPONENT, instance=rec.metadata.name, recommender=rec.metadata.name
    )


def wait_seconds(rec: Recommender) -> float:
    """The attribution window: ``loggedData``'s, or else the rollout analysis' one."""
    window = rec.spec.training.logged_data.attribution_window
    return parse_duration(window or rec.spec.serving.rollout.analysis.attribution_window)


def logjoin_config(rec: Recommender) -> LogJoinConfig:
    logged = rec.spec.training.logged_data
    return LogJoinConfig.model_validate(
        {
            "recommender": store_name(rec.metadata.namespace, rec.metadata.name),
            "online_store": recommender_store(rec),
            "output_uri": logged_uri(rec),
            "wait_seconds": wait_seconds(rec),
            "retain_seconds": parse_duration(logged.retention),
        }
    )


def logjoin_objects(rec: Recommender, owner: Mapping[str, Any], image: str) -> list[dict[str, Any]]:
    """The ConfigMap and CronJob of the log join; none when ``loggedData`` is disabled."""
    if not logged_enabled(rec):
        return []
    logged = rec.spec.training.logged_data
    name, ns = logjoin_name(rec), rec.metadata.namespace or "default"
    cfg = logjoin_config(rec)
    config_map = workload_config_map(name, ns, labels(rec), owner, cfg)
    container = workload_container(
        image=rec.spec.training.image or image,
        module=LOGJOIN_MODULE,
        env=redis_password_env(rec.spec.stores.redis.password_secret_ref),
        env_from=artifact_env_from(rec),
    )
    cron_job = serial_cron_job(
        name, ns, labels(rec), owner, container, logged.schedule, logged.time_zone
    )
    # writes the joined rows
    mount_claims(cron_pod_spec(cron_job), claims_in(cfg), read_only=False)
    return [config_map, cron_job]
