"""Drift checks of a Recommender: the CronJob that runs them, and what their results decide.

The check compares what the stable version is served with its training profile
(``recsys_workloads.drift``) and reports through its termination message. Each finished check
Job is counted once (its name is kept in ``status.drift.lastCheckJob``), so a restarted
operator neither loses a check nor counts one twice. Drift past ``spec.drift.threshold`` for
``consecutiveChecks`` checks in a row, outside ``cooldown``, asks for a retraining: its trigger
(``drift/<check Job>``) goes to ``status.drift.retrainTrigger``, and the Recommender planner
creates a ModelVersion with reason Drift for it once no other training runs. The trigger being
kept in status and on the version makes that happen exactly once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from recsys_contract.drift import DriftConfig, DriftSummary
from recsys_contract.keyspace import store_name
from recsys_operator.api.formats import parse_duration
from recsys_operator.api.recommender import Drift, Recommender
from recsys_operator.conditions import Status
from recsys_operator.labels import standard_labels
from recsys_operator.naming import child_name
from recsys_operator.planning import EventSpec
from recsys_operator.planning.jobstatus import JobOutcome
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
from recsys_operator.planning.training import artifact_env_from

DRIFT_MODULE = "recsys_workloads.drift"
COMPONENT = "drift"
TRIGGER_PREFIX = "drift/"


def drift_name(rec: Recommender) -> str:
    return child_name(rec.metadata.name, COMPONENT)


def labels(rec: Recommender) -> dict[str, str]:
    return standard_labels(
        component=COMPONENT, instance=rec.metadata.name, recommender=rec.metadata.name
    )


def drift_config(rec: Recommender, drift: Drift, version: str, artifact_uri: str) -> DriftConfig:
    return DriftConfig.model_validate(
        {
            "recommender": store_name(rec.metadata.namespace, rec.metadata.name),
            "served_log": recommender_store(rec),
            "model_artifact_uri": artifact_uri,
            # only what the stable version served: a canary's traffic is its own
            "model_version": version,
            "sample_size": drift.sample_size,
            "min_sample_size": min(100, drift.sample_size),
            "method": drift.method,
            **({"threshold": drift.threshold} if drift.threshold is not None else {}),
            **({"features": list(drift.features)} if drift.features else {}),
        }
    )


def drift_objects(
    rec: Recommender, owner: Mapping[str, Any], image: str, version: str, artifact_uri: str
) -> list[dict[str, Any]]:
    """The ConfigMap and CronJob of the checks against ``version``; none without
    ``spec.drift``. A promotion changes the config, so the next check judges the new version."""
    drift = rec.spec.drift
    if drift is None:
        return []
    name, ns = drift_name(rec), rec.metadata.namespace or "default"
    cfg = drift_config(rec, drift, version, artifact_uri)
    config_map = workload_config_map(name, ns, labels(rec), owner, cfg)
    container = workload_container(
        image=rec.spec.training.image or image,
        module=DRIFT_MODULE,
        env=redis_password_env(rec.spec.stores.redis.password_secret_ref),
        env_from=artifact_env_from(rec),
    )
    cron_job = serial_cron_job(
        name, ns, labels(rec), owner, container, drift.schedule, drift.time_zone, drift.suspend
    )
    mount_claims(cron_pod_spec(cron_job), claims_in(cfg), read_only=True)
    return [config_map, cron_job]


@dataclass
class DriftDecision:
    """What the last check means: the ``status.drift`` block, the ``Drifted`` condition (type
    status, reason, message; None keeps the previous one), Events, and whether to retrain."""

    status: dict[str, Any] | None
    condition: tuple[Status, str, str] | None = None
    events: list[EventSpec] = field(default_factory=list)
    #: a trigger the Recommender planner must train for (``drift/<check Job>``), once
    retrain: str | None = None


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _cooling(drift: Drift, previous: Mapping[str, Any], now: dt.datetime) -> dt.datetime | None:
    """When the cooldown since the last action ends, if it has not yet."""
    last = previous.get("lastActionTime")
    if not last:
        return None
    until = dt.datetime.fromisoformat(last.replace("Z", "+00:00")) + dt.timedelta(
        seconds=parse_duration(drift.cooldown)
    )
    return until if until > now else None


def decide(
    rec: Recommender,
    previous: Mapping[str, Any] | None,
    check: JobOutcome | None,
    now: dt.datetime,
    trained: frozenset[str] = frozenset(),
) -> DriftDecision:
    """The drift status after the newest check Job ``check`` (None: no check yet); ``trained``
    are the triggers the Recommender's versions carry (a retraining asked for and made is
    forgotten, so pruning its version later cannot bring it back)."""
    drift = rec.spec.drift
    prev = dict(previous or {})
    if drift is None:
        return DriftDecision(None)
    if prev.get("retrainTrigger") in trained:
        del prev["retrainTrigger"]
    pending = prev.get("retrainTrigger")
    if check is None or not check.finished or check.name == prev.get("lastCheckJob"):
        return DriftDecision(prev or None, retrain=pending)
    st = prev | {"lastCheckJob": check.name, "lastCheckTime": check.completion_time or _iso(now)}
    if check.failed:
        message = f"drift check {check.name} failed: {check.message}"
        return DriftDecision(
            st,
            ("Unknown", "CheckFailed", message),
            [("Warning", "DriftCheckFailed", message)],
            retrain=pending,
        )
    summary = check.parsed(DriftSummary)
    if summary is None or not summary.judged:
        why = summary.reason if summary and summary.reason else "the check reported no verdict"
        return DriftDecision(st, ("Unknown", "NotJudged", f"{check.name}: {why}"), retrain=pending)
    breaches = (int(prev.get("consecutiveBreaches") or 0) + 1) if summary.drifted else 0
    st |= {
        "method": summary.method,
        "scores": {f.name: f.value for f in summary.features},
        "driftedFeatures": list(summary.drifted_features),
        "consecutiveBreaches": breaches,
    }
    if not summary.drifted:
        message = f"no feature above {summary.method} {summary.threshold} at check {check.name}"
        return DriftDecision(st, ("False", "NoDrift", message), retrain=pending)
    named = (
        ", ".join(f"{f.name} ({f.value:.3f})" for f in summary.features if f.drifted)
        or ", ".join(summary.drifted_features)
        or "the served scores or catalog"
    )
    message = (
        f"{named} above {summary.method} {summary.threshold}; {breaches} of "
        f"{drift.consecutive_checks} checks in a row"
    )
    events: list[EventSpec] = [("Warning", "DriftDetected", message)]
    retrain = pending
    if breaches >= drift.consecutive_checks:
        cooling = _cooling(drift, prev, now)
        if drift.action == "Alert":
            message += "; action Alert: reported only"
        elif cooling is not None:
            message += f"; cooldown until {_iso(cooling)}: no retraining"
        else:
            retrain = f"{TRIGGER_PREFIX}{check.name}"
            st |= {"lastActionTime": _iso(now), "retrainTrigger": retrain}
            message += "; retraining"
            events.append(("Normal", "DriftRetrain", f"retraining for drift: {named}"))
    return DriftDecision(st, ("True", "FeaturesDrifted", message), events, retrain)
