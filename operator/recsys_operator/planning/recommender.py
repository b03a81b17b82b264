"""Recommender decisions: when to train a new ModelVersion, which version serves, what to keep.

Training triggers and their idempotence: every ModelVersion the operator creates carries the
trigger that caused it (annotation ``recsys.dev/trigger``): ``initial``, ``schedule/<tick>``,
``manual/<token>`` or ``drift/<time>``. A trigger already present among the versions is never
acted on again, so a restarted operator creates nothing twice.

Manual retraining: set the annotation ``recsys.dev/retrain`` on the Recommender to any new
value (``kubectl annotate --overwrite rec/movies recsys.dev/retrain="$(date +%s)"``), the way
``kubectl rollout restart`` stamps ``restartedAt``. The operator never removes it: the
Recommender's metadata and spec stay the user's, and GitOps tools see no drift.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from croniter import croniter

from recsys_operator import GROUP
from recsys_operator.api.featureview import FeatureView
from recsys_operator.api.recommender import (
    AnalysisResult,
    Recommender,
    RecommenderStatus,
    RolloutStatus,
    ShadowStatus,
)
from recsys_operator.conditions import is_true, set_condition
from recsys_operator.labels import standard_labels
from recsys_operator.naming import child_name
from recsys_operator.planning import rollout as machine
from recsys_operator.planning.drift import DriftDecision
from recsys_operator.planning.featureview import freshness, rfc3339
from recsys_operator.planning.pods import owner_reference
from recsys_operator.planning.serving import batch_mode
from recsys_operator.planning.training import WARM_START_REASONS

TRIGGER_ANNOTATION = f"{GROUP}/trigger"
RETRAIN_ANNOTATION = f"{GROUP}/retrain"
#: The version a warm-started retrain starts from, fixed when the operator creates it: a
#: promotion during its training must not change what a retried pod reads.
WARM_START_ANNOTATION = f"{GROUP}/warm-start-from"
API_VERSION = f"{GROUP}/v1alpha1"
SERVABLE = ("Ready",)
#: Versions whose lifecycle ended; those not serving count toward revisionHistoryLimit.
FINISHED = ("Ready", "Failed", "Rejected")


@dataclass(frozen=True)
class Version:
    """What the Recommender needs to know of one of its ModelVersions."""

    name: str
    phase: str
    created: str
    trigger: str | None
    number: int
    index_name: str | None = None
    #: (name, kind) of each user feature it was trained on; None when not reported
    user_features: tuple[tuple[str, str], ...] | None = None


def version_of(obj: Mapping[str, Any]) -> Version:
    meta = obj["metadata"]
    status = obj.get("status") or {}
    name = meta["name"]
    number = (
        int(name.rsplit("-v", 1)[1]) if "-v" in name and name.rsplit("-v", 1)[1].isdigit() else 0
    )
    schema = status.get("featureSchema")
    return Version(
        name=name,
        phase=status.get("phase") or "Pending",
        created=meta.get("creationTimestamp", ""),
        trigger=(meta.get("annotations") or {}).get(TRIGGER_ANNOTATION),
        number=number,
        index_name=status.get("indexName"),
        user_features=tuple((f["name"], f["kind"]) for f in schema.get("user") or [])
        if schema is not None
        else None,
    )


@dataclass(frozen=True)
class Problem:
    """Something a user must hear about in status. ``degrades`` problems set ``Degraded=True``
    with their ``reason``; the others are only told (in the Progressing message)."""

    reason: str
    message: str
    degrades: bool = True


@dataclass
class Plan:
    create: list[dict[str, Any]] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)
    rollout: machine.Step | None = None
    next_training: dt.datetime | None = None
    last_training: dict[str, Any] | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def routing(self) -> machine.Routing | None:
        return self.rollout.routing if self.rollout else None

    @property
    def stable(self) -> str | None:
        return self.routing.stable if self.routing else None


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _parse(ts: str) -> dt.datetime:
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))


def schedule_ticks(
    rec: Recommender, since: dt.datetime, now: dt.datetime
) -> tuple[dt.datetime | None, dt.datetime | None]:
    """(the latest tick in (since, now], the next tick after now) of the training schedule."""
    tr = rec.spec.training
    if not tr.schedule or tr.suspend:
        return None, None
    tz: dt.tzinfo = dt.UTC
    if tr.time_zone:
        from zoneinfo import ZoneInfo

        tz = ZoneInfo(tr.time_zone)
    it = croniter(tr.schedule, since.astimezone(tz))
    latest = None
    nxt: dt.datetime = it.get_next(dt.datetime)
    while nxt <= now:
        latest = nxt
        nxt = it.get_next(dt.datetime)
    return latest, nxt


def new_version(
    rec_obj: Mapping[str, Any],
    rec: Recommender,
    number: int,
    reason: str,
    trigger: str,
    stable: str | None = None,
) -> dict[str, Any]:
    name = child_name(rec.metadata.name, f"v{number}")
    annotations = {TRIGGER_ANNOTATION: trigger}
    if stable and rec.spec.training.warm_start.enabled and reason in WARM_START_REASONS:
        annotations[WARM_START_ANNOTATION] = stable
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelVersion",
        "metadata": {
            "name": name,
            "namespace": rec.metadata.namespace,
            "labels": standard_labels(
                component="model-version",
                instance=rec.metadata.name,
                recommender=rec.metadata.name,
                model_version=name,
            ),
            "annotations": annotations,
            "ownerReferences": [owner_reference(rec_obj)],
        },
        "spec": {"recommenderRef": {"name": rec.metadata.name}, "reason": reason},
    }


def stale_features(
    rec: Recommender, views: Mapping[str, FeatureView], now: dt.datetime
) -> str | None:
    """Why the rollout must wait for fresher features (``maxFeatureStaleness``), if it must:
    a FeatureView the Recommender reads that is missing, has no live data, or whose live
    watermark lags ``maxFeatureStaleness`` or more.

    The lag is the one the FeatureView's own ``Stale`` condition measures
    (``featureview.freshness``), against the rollout's bound instead of the view's
    ``maxStaleness``: a team may judge canaries more strictly than it alerts on a view (or
    the other way round). Unset, nothing holds the rollout, as before freshness was measured.
    """
    limit = rec.spec.serving.rollout.max_feature_staleness
    refs = rec.spec.feature_views
    if limit is None or refs is None:
        return None
    problems = []
    for ref in [*(refs.user or []), *(refs.item or [])]:
        fv = views.get(ref.name)
        if fv is None:
            problems.append(f"FeatureView {ref.name} does not exist")
            continue
        f = freshness(fv, now, limit)
        if f.reason == "NotLive":
            problems.append(f"FeatureView {ref.name} has no live data yet")
        elif not f.fresh:
            problems.append(
                f"FeatureView {ref.name}'s live data lags {f.lag_seconds(now):.0f}s "
                f"(maxFeatureStaleness {limit})"
            )
    return "; ".join(problems) or None


#: The encoding training gives a FeatureView column of each type (``infer_kind`` of the
#: training workload); None for types it cannot encode.
KIND_OF_DTYPE: Mapping[str, str | None] = {
    "Bool": "categorical",
    "String": "categorical",
    "Int32": "numeric",
    "Int64": "numeric",
    "Float32": "numeric",
    "Float64": "numeric",
    "Array(String)": "multi_hot",
    "UnixTimestamp": None,
    "Bytes": None,
    "Array(Int64)": None,
    "Array(Float32)": None,
}


def unfit_versions(
    rec: Recommender, views: Mapping[str, FeatureView], versions: Sequence[Version]
) -> dict[str, str]:
    """Ready versions the gateways cannot feed as they were trained, with why: a user feature
    of the version's schema that no user FeatureView of the spec serves (dropped from a
    view's ``features`` or from the view), or one served with another type than it learnt.

    The model would see such a feature as "missing" on every request and score silently
    worse, so the rollout does not serve it; a version that reported no schema is not judged.
    """
    refs = rec.spec.feature_views
    served: dict[str, str | None] = {}
    absent: list[str] = []
    for ref in (refs.user or []) if refs else []:
        fv = views.get(ref.name)
        if fv is None:
            absent.append(ref.name)
            continue
        dtypes = {f.name: f.dtype for f in fv.spec.features}
        for name in ref.features or list(dtypes):
            if name in dtypes:
                served.setdefault(name, KIND_OF_DTYPE.get(dtypes[name]))
    out: dict[str, str] = {}
    for v in versions:
        if v.phase not in SERVABLE or not v.user_features:
            continue
        missing = [n for n, _ in v.user_features if n not in served]
        other = [
            f"{n} (trained {k}, served {served[n] or 'unencodable'})"
            for n, k in v.user_features
            if n in served and served[n] != k
        ]
        if not missing and not other:
            continue
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
            if absent:
                parts[-1] += f" (FeatureView {', '.join(absent)} does not exist)"
        if other:
            parts.append(f"of another type {', '.join(other)}")
        out[v.name] = (
            f"{v.name} was trained on user features spec.featureViews.user does not serve as "
            f"trained ({'; '.join(parts)}): serve them again or train a new version"
        )
    return out


def feature_view_states(
    rec: Recommender, views: Mapping[str, FeatureView], now: dt.datetime
) -> list[dict[str, Any]]:
    """What the Recommender's status tells of each FeatureView it reads: ready, stale, and
    when its data turns stale. Only what changes with the views' own status, never the
    growing lag, so an unchanged view leaves the Recommender's status unchanged."""
    refs = rec.spec.feature_views
    out: list[dict[str, Any]] = []
    for ref in [*(refs.user or []), *(refs.item or [])] if refs else []:
        fv = views.get(ref.name)
        if fv is None:
            out.append({"name": ref.name, "ready": False, "stale": "Unknown"})
            continue
        f = freshness(fv, now)
        conds = [c.model_dump() for c in fv.status.conditions or []] if fv.status else []
        state: dict[str, Any] = {
            "name": ref.name,
            "ready": is_true(conds, "Ready"),
            "stale": "Unknown" if f.reason == "NotLive" else "False" if f.fresh else "True",
        }
        if f.watermark is not None and f.stale_after is not None:
            state |= {"watermark": rfc3339(f.watermark), "staleAfter": rfc3339(f.stale_after)}
        out.append(state)
    return out


def plan(
    rec_obj: Mapping[str, Any],
    rec: Recommender,
    versions: Sequence[Version],
    now: dt.datetime,
    drift_trigger: str | None = None,
    check: AnalysisResult | None = None,
    ready: frozenset[str] = frozenset(),
    hold: str | None = None,
    shadow: ShadowStatus | None = None,
    unfit: Mapping[str, str] | None = None,
) -> Plan:
    out = Plan()
    triggers = {v.trigger for v in versions if v.trigger}
    number = max((v.number for v in versions), default=0)
    wanted: list[tuple[str, str]] = []
    if not versions:
        wanted.append(("Initial", "initial"))
    created_at = _parse(rec.metadata.creation_timestamp) if rec.metadata.creation_timestamp else now
    latest_tick, next_tick = schedule_ticks(rec, created_at, now)
    out.next_training = next_tick
    if latest_tick is not None and versions:
        wanted.append(("Schedule", f"schedule/{_iso(latest_tick)}"))
    token = rec.metadata.annotations.get(RETRAIN_ANNOTATION)
    if token:
        wanted.append(("Manual", f"manual/{token}"))
    if drift_trigger and versions and not rec.spec.training.suspend:
        wanted.append(("Drift", drift_trigger))
    for reason, trigger in wanted:
        if trigger in triggers:
            continue
        # One training at a time: a trigger that fires while one runs waits for it.
        if any(v.phase in ("Pending", "Training", "Evaluating", "Indexing") for v in versions) or (
            out.create
        ):
            out.problems.append(
                Problem("TrainingQueued", f"{reason} training waits for the running one", False)
            )
            continue
        number += 1
        stable = ((rec_obj.get("status") or {}).get("rollout") or {}).get("stable")
        out.create.append(new_version(rec_obj, rec, number, reason, trigger, stable))
        out.last_training = {
            "modelVersion": out.create[-1]["metadata"]["name"],
            "reason": reason,
            "startTime": _iso(now),
        }

    previous = (rec_obj.get("status") or {}).get("rollout") or {}
    servable = sorted(
        (v for v in versions if v.phase in SERVABLE and v.index_name),
        key=lambda v: (v.created, v.number),
    )
    annotations = rec.metadata.annotations
    result = machine.step(
        machine.Inputs(
            rollout=rec.spec.serving.rollout,
            previous=RolloutStatus.model_validate(previous),
            versions=[machine.Candidate(v.name, (v.created, v.number)) for v in servable],
            now=now,
            pinned=rec.spec.serving.pinned_model_version,
            promote_token=annotations.get(machine.PROMOTE_ANNOTATION),
            abort_token=annotations.get(machine.ABORT_ANNOTATION),
            check=check,
            ready=ready,
            hold=hold,
            shadow=shadow,
            unfit=unfit or {},
        )
    )
    out.rollout = result
    if result.problem:
        out.problems.append(Problem("PinnedVersionNotServable", result.problem))
    stable_now = result.routing.stable if result.routing else None
    newest = servable[-1].name if servable else None
    for name, why in (unfit or {}).items():
        if name == stable_now:
            out.problems.append(Problem("FeatureSchemaMismatch", f"the stable version {why}"))
        elif name == newest:
            # a Ready model held back for good until the spec changes: not a quiet note
            out.problems.append(Problem("FeatureSchemaMismatch", f"not rolled out: {why}"))
    pinned = rec.spec.serving.pinned_model_version
    serving = result.routing.versions if result.routing else set()

    keep = rec.spec.revision_history_limit
    done = sorted(
        (v for v in versions if v.phase in FINISHED and v.name not in serving and v.name != pinned),
        key=lambda v: (v.created, v.number),
    )
    if len(done) > keep:
        out.delete = [v.name for v in done[: len(done) - keep]]
    return out


def status(
    rec: Recommender,
    previous: Mapping[str, Any],
    p: Plan,
    versions: Sequence[Version],
    serving_ready: bool,
    blocked: str | None,
    now: str,
    drift: DriftDecision | None = None,
    feature_views: Sequence[Mapping[str, Any]] = (),
) -> RecommenderStatus:
    """The Recommender's status; ``feature_views`` from :func:`feature_view_states`."""
    gen = rec.metadata.generation or 0
    ns, name = rec.metadata.namespace, rec.metadata.name
    conds: list[dict[str, Any]] = list(previous.get("conditions", []) or [])
    st: dict[str, Any] = {"observedGeneration": gen}
    if feature_views:
        st["featureViews"] = [dict(v) for v in feature_views]
    if "lastTraining" in previous:
        st["lastTraining"] = previous["lastTraining"]
    if drift is not None and drift.status:
        st["drift"] = drift.status
    if drift is not None and drift.condition is not None:
        conds = set_condition(conds, "Drifted", *drift.condition, gen, now)
    if p.last_training:
        st["lastTraining"] = p.last_training
    if p.stable:
        stable = next((v for v in versions if v.name == p.stable), None)
        if stable and stable.index_name:
            st["activeIndex"] = stable.index_name
        st["endpoints"] = {"gateway": f"http://{child_name(name, 'gateway')}.{ns}.svc:8080"}
        if not batch_mode(rec):  # Batch mode's Tritons live and die inside its Jobs
            st["endpoints"]["triton"] = (
                f"http://{child_name(name, 'triton', p.stable)}.{ns}.svc:8000"
            )
    ro = p.rollout.status if p.rollout else None
    if ro is not None and ro.phase:
        st["rollout"] = ro.to_k8s()
    if p.next_training:
        st["nextTrainingTime"] = _iso(p.next_training)
    busy = [v for v in versions if v.phase in ("Pending", "Training", "Evaluating", "Indexing")]
    latest = max(versions, key=lambda v: (v.created, v.number), default=None)
    if blocked:
        conds = set_condition(conds, "Ready", "False", "WaitingForFeatureViews", blocked, gen, now)
    elif p.stable and serving_ready:
        conds = set_condition(conds, "Ready", "True", "Serving", f"serving {p.stable}", gen, now)
    elif p.stable:
        conds = set_condition(
            conds,
            "Ready",
            "False",
            "Deploying",
            f"waiting for the serving Deployments of {p.stable}",
            gen,
            now,
        )
    else:
        conds = set_condition(
            conds,
            "Ready",
            "False",
            "NoServableVersion",
            "no ModelVersion is ready to serve yet",
            gen,
            now,
        )
    rolling = ro is not None and ro.phase in ("Progressing", "Paused", "Promoting")
    if busy or rolling:
        what = "; ".join(
            [
                *([f"training {busy[0].name} ({busy[0].phase})"] if busy else []),
                *([f"rollout {ro.phase}: {ro.message}"] if ro is not None and rolling else []),
            ]
        )
        reason = "RolloutPaused" if ro is not None and ro.phase == "Paused" else "InProgress"
        conds = set_condition(conds, "Progressing", "True", reason, what, gen, now)
    else:
        conds = set_condition(
            conds, "Progressing", "False", "Idle", "nothing in progress", gen, now
        )
    problems = [q for q in p.problems if q.degrades]
    if ro is not None and ro.phase == "Aborted":
        problems.append(Problem("RolloutAborted", ro.message or "the canary was rolled back"))
    if latest and latest.phase in ("Failed", "Rejected"):
        problems.append(
            Problem("VersionProblem", f"the latest ModelVersion {latest.name} is {latest.phase}")
        )
    if problems:
        conds = set_condition(
            conds,
            "Degraded",
            "True",
            problems[0].reason,
            "; ".join(q.message for q in problems),
            gen,
            now,
        )
    else:
        conds = set_condition(conds, "Degraded", "False", "AsExpected", "no problem", gen, now)
    st["conditions"] = conds
    return RecommenderStatus.model_validate(st)
