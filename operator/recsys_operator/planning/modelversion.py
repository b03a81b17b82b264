"""The ModelVersion lifecycle as a pure state machine.

    Pending -> Training -> Evaluating -> Indexing -> Ready
                  |            |            |
                Failed      Rejected      Failed

One step per reconcile, decided from the previous phase and what the Jobs report. Ready,
Failed and Rejected end the lifecycle; Failed and Rejected say why, with numbers. Whether a
Ready version serves (stable, canary, kept for rollback) is the Recommender's to say, in its
``status.rollout``, and only there.

When the training Job succeeds, its headline metrics (measured on the Recommender's time-split
holdout) go to ``status.metrics`` and the version enters Evaluating; the next step judges them
against the gate (and the serving version's metrics) and moves on to Indexing or ends Rejected.
An imported version (``spec.storageUri``) goes Pending -> Indexing: the operator has no
holdout result for a model trained elsewhere, so it skips training and the gate; its index is
built and checked against minRecall like any other, and its digest verified.

Besides Ready / Progressing / Degraded, each stage leaves its own condition: Trained,
Evaluated and Indexed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from recsys_contract.index import IndexSummary
from recsys_contract.train import (
    BASELINES,
    FINAL,
    RANKER,
    STANDARD_ERROR,
    TWO_TOWER,
    Lineage,
    TrainSummary,
    ranking_metric,
    retrieval_metric,
    served_metric,
)
from recsys_operator.api.modelversion import (
    LINEAGE_PARTITIONS,
    ModelVersion,
    ModelVersionStatus,
    Phase,
)
from recsys_operator.api.recommender import Recommender
from recsys_operator.api.training import EvaluationGate
from recsys_operator.conditions import Status, set_condition
from recsys_operator.planning import EventSpec
from recsys_operator.planning.jobstatus import JobOutcome

#: Phases no Job outcome changes.
TERMINAL_PHASES = frozenset({"Failed", "Rejected"})


@dataclass(frozen=True)
class Observed:
    recommender: Recommender | None
    train: JobOutcome | None = None
    index: JobOutcome | None = None
    #: Headline metrics of the version serving now (its status.metrics), for maxRegression;
    #: None for the first version.
    baseline: Mapping[str, float] | None = None
    baseline_name: str | None = None
    #: Why training cannot start yet (a FeatureView it reads is missing), if so.
    blocked: str | None = None


@dataclass
class Decision:
    status: ModelVersionStatus
    #: Which Job the reconciler must make exist now: "train", "index" or None.
    run: Literal["train", "index"] | None = None
    events: list[EventSpec] = field(default_factory=list)


def lineage_status(lineage: Lineage) -> dict[str, Any]:
    """The training summary's lineage as ``status.lineage``: the newest partitions only (a
    status must stay small), their count beside."""
    out = lineage.to_wire()
    logged = out.get("logged")
    if logged is not None:
        partitions = list(logged.get("partitions") or [])
        logged["partitions"] = partitions[-LINEAGE_PARTITIONS:]
        logged["partitionCount"] = len(partitions)
    return out


def gate_metrics(headline: Mapping[str, Any], k: int) -> dict[str, float]:
    """The gate's numbers from the training summary's headline metrics.

    The training Job reports flat names (``recsys_contract.train.retrieval_metric`` and
    ``ranking_metric``): ``<model>.recall@K``, ``<model>.ndcg@K`` for retrieval and
    ``<model>.ranking.auc``; the gate judges the two-tower retrieval and the ranker. The
    end-to-end evaluation's final list (``served_metric``) comes as ``served.ndcg@K`` beside
    its ``.se``, the baselines' lists as ``popularity.ndcg@K`` / ``als.ndcg@K``.
    """
    wanted = {
        f"recall@{k}": retrieval_metric(TWO_TOWER, f"recall@{k}"),
        f"ndcg@{k}": retrieval_metric(TWO_TOWER, f"ndcg@{k}"),
        "auc": ranking_metric(RANKER, "auc"),
    }
    # the end-to-end evaluation: the served list (``served.…``, with its standard error
    # over users) and each baseline's list (``<name>.…``, the baselines' retrieval metrics)
    for metric in (f"recall@{k}", f"ndcg@{k}"):
        for suffix in ("", STANDARD_ERROR):
            wanted[f"served.{metric}{suffix}"] = served_metric(FINAL, metric + suffix)
        for b in BASELINES:
            wanted[f"{b}.{metric}"] = retrieval_metric(b, metric)
    return {
        name: float(headline[key])
        for name, key in wanted.items()
        if isinstance(headline.get(key), int | float)
    }


_GATE_KEYS = {"recallAtK": "recall@{k}", "ndcgAtK": "ndcg@{k}", "auc": "auc"}


def evaluate_gate(
    gate: EvaluationGate,
    metrics: Mapping[str, float],
    baseline: Mapping[str, float] | None,
    baseline_name: str | None,
) -> tuple[bool, str]:
    """(passed, message with the numbers)."""
    failures, checks = [], []
    for metric in gate.metrics:
        key = _GATE_KEYS[metric.name].format(k=gate.k)
        value = metrics.get(key)
        if value is None:
            failures.append(f"{key} was not reported by the training Job")
            continue
        rng = metric.threshold_range
        if rng is not None and rng.min is not None and value < rng.min:
            failures.append(f"{key}={value:.4f} is below thresholdRange.min {rng.min}")
        elif rng is not None and rng.max is not None and value > rng.max:
            failures.append(f"{key}={value:.4f} is above thresholdRange.max {rng.max}")
        if metric.max_regression is not None and baseline and key in baseline:
            floor = baseline[key] * (1 - metric.max_regression)
            if value < floor:
                failures.append(
                    f"{key}={value:.4f} regresses more than {metric.max_regression:.0%} from "
                    f"{baseline[key]:.4f} of {baseline_name} (floor {floor:.4f})"
                )
        checks.append(f"{key}={value:.4f}")
    comparison = gate.baseline
    if comparison.name != "none":
        metric_key = _GATE_KEYS[comparison.metric].format(k=gate.k)
        served, base = (
            metrics.get(f"served.{metric_key}"),
            metrics.get(f"{comparison.name}.{metric_key}"),
        )
        lift = comparison.min_lift or 0.0
        if served is None or base is None:
            failures.append(
                f"the served list's and {comparison.name}'s {metric_key} were not reported by "
                "the training Job (an image without the end-to-end evaluation); set "
                "evaluation.baseline.name: none to skip the comparison"
            )
        else:
            needed = base * (1 + lift)
            figures = (
                f"served {metric_key}={_with_se(metrics, 'served', metric_key)} vs "
                f"{comparison.name} {_with_se(metrics, comparison.name, metric_key)}"
            )
            if served <= needed:
                margin = f" by minLift {lift:+.0%} (needs above {needed:.4f})" if lift else ""
                failures.append(f"{figures}: does not beat {comparison.name}{margin}")
            else:
                checks.append(figures)
    if failures:
        return False, "; ".join(failures)
    return True, "passed: " + ", ".join(checks)


def _with_se(metrics: Mapping[str, float], name: str, metric: str) -> str:
    value = metrics[f"{name}.{metric}"]
    se = metrics.get(f"{name}.{metric}{STANDARD_ERROR}")
    return f"{value:.4f}" if se is None else f"{value:.4f}±{se:.4f}"


def _conds(
    prev: Mapping[str, Any],
    gen: int,
    now: str,
    phase: str,
    ready: bool,
    message: str,
    stages: Sequence[_Stage] = (),
) -> list[dict[str, Any]]:
    conds: list[dict[str, Any]] = list(prev.get("conditions", []) or [])
    for stage in stages:
        conds = set_condition(conds, *stage, gen, now)
    final_bad = phase in ("Failed", "Rejected")
    busy = phase in ("Pending", "Training", "Evaluating", "Indexing")
    conds = set_condition(conds, "Ready", "True" if ready else "False", phase, message, gen, now)
    conds = set_condition(
        conds, "Progressing", "True" if busy else "False", phase, message, gen, now
    )
    conds = set_condition(
        conds,
        "Degraded",
        "True" if final_bad else "False",
        phase if final_bad else "AsExpected",
        message,
        gen,
        now,
    )
    return conds


#: A stage condition set on this step: (type, status, reason, message).
_Stage = tuple[Literal["Trained", "Evaluated", "Indexed"], Status, str, str]


@dataclass
class _Step:
    """Builds the Decision of one reconcile: the new phase, its conditions and its Event."""

    prev: Mapping[str, Any]
    gen: int
    now: str
    st: dict[str, Any]
    run: Literal["train", "index"] | None = None
    stages: list[_Stage] = field(default_factory=list)

    def stage(
        self,
        type_: Literal["Trained", "Evaluated", "Indexed"],
        ok: bool,
        reason: str,
        message: str,
    ) -> None:
        """Record how a stage ended, as its condition (kept by later steps)."""
        self.stages.append((type_, "True" if ok else "False", reason, message))

    def to(self, phase: Phase, message: str, reason: str | None = None) -> Decision:
        old = self.prev.get("phase") or "Pending"
        self.st["phase"] = phase
        self.st["message"] = message
        if reason:
            self.st["reason"] = reason
        events: list[EventSpec] = []
        if phase != old:
            warn = phase in ("Failed", "Rejected")
            events.append(("Warning" if warn else "Normal", phase, message))
        if phase in ("Ready", "Failed", "Rejected") and "completionTime" not in self.st:
            self.st["completionTime"] = self.now
        ready = phase == "Ready"
        self.st["conditions"] = _conds(
            self.prev, self.gen, self.now, phase, ready, message, self.stages
        )
        return Decision(ModelVersionStatus.model_validate(self.st), self.run, events)


def decide(mv: ModelVersion, observed: Observed, now: str) -> Decision:
    prev: dict[str, Any] = mv.status.to_k8s() if mv.status else {}
    phase: Phase = prev.get("phase") or "Pending"
    st = {k: v for k, v in prev.items() if k != "conditions"}
    st["observedGeneration"] = mv.metadata.generation or 0
    st.setdefault("startTime", now)
    step = _Step(prev, mv.metadata.generation or 0, now, st)

    if phase in TERMINAL_PHASES:
        return step.to(phase, prev.get("message", phase))
    rec = observed.recommender
    if rec is None:
        return step.to(
            "Pending",
            f"Recommender {mv.spec.recommender_ref.name} does not exist; "
            "create it or fix spec.recommenderRef.name",
            "RecommenderNotFound",
        )
    imported = mv.spec.storage_uri is not None

    if phase == "Pending" and observed.blocked and not imported:
        return step.to("Pending", observed.blocked, "WaitingForFeatureViews")
    if phase == "Pending":
        step.run = "index" if imported else "train"
        if imported:
            step.stage(
                "Trained", True, "Imported", f"imported from {mv.spec.storage_uri}, not trained"
            )
            return step.to(
                "Indexing",
                "indexing the imported model (an import skips training and the evaluation gate)",
            )
        return step.to("Training", "training Job created")

    if phase == "Training":
        step.run = "train"
        t = observed.train
        if t is None or not t.finished:
            return step.to("Training", t.message if t else "creating the training Job")
        if t.failed:
            step.stage("Trained", False, t.reason, t.message)
            return step.to("Failed", f"training failed: {t.message}", t.reason)
        trained = t.parsed(TrainSummary)
        if trained is not None:
            st["artifactUri"], st["digest"] = trained.artifact_uri, trained.digest
            if trained.lineage is not None:
                st["lineage"] = lineage_status(trained.lineage)
        st["trainingJob"] = t.name
        headline = trained.metrics if trained is not None else {}
        # Every headline number (baselines too) is kept in status for `kubectl get -o yaml`.
        st["metrics"] = dict(sorted(headline.items()))
        step.run = None
        step.stage("Trained", True, "TrainingSucceeded", f"Job {t.name} succeeded")
        return step.to(
            "Evaluating", "training finished; the evaluation gate judges its holdout metrics"
        )

    if phase == "Evaluating":
        # The gate reads the metrics the Training step kept in status: nothing else to wait for.
        metrics = gate_metrics(prev.get("metrics") or {}, rec.spec.training.evaluation.k)
        return _gate_then_index(rec, observed, metrics, step)

    if phase == "Indexing":
        step.run = "index"
        ix = observed.index
        if ix is None or not ix.finished:
            return step.to("Indexing", ix.message if ix else "creating the index build Job")
        if ix.failed:
            step.stage("Indexed", False, ix.reason, ix.message)
            return step.to("Failed", f"index build failed: {ix.message}", ix.reason)
        built = ix.parsed(IndexSummary)
        model_digest = built.model_digest if built is not None else None
        if imported and mv.spec.digest and model_digest and model_digest != mv.spec.digest:
            return step.to(
                "Failed",
                f"the imported artifact's digest is {model_digest}, not spec.digest "
                f"{mv.spec.digest}: import the right artifact or fix the digest",
                "DigestMismatch",
            )
        st["indexName"] = built.index_uri if built is not None else ix.name
        if built is not None and built.features is not None:
            st["featureSchema"] = built.features.to_wire()
            st["featureSchemaDigest"] = built.features.digest()
        if imported:
            st.setdefault("artifactUri", mv.spec.storage_uri)
            if model_digest:
                st.setdefault("digest", model_digest)
        recall = built.recall if built is not None else None
        done = f"index {st['indexName']} built"
        if recall is not None:
            st["evaluation"] = {**(st.get("evaluation") or {}), "indexRecallAtK": recall}
            st["metrics"] = {**(st.get("metrics") or {}), "indexRecall": recall}
            done += f", recall {recall:.4f} against exact search"
        step.stage("Indexed", True, "IndexBuilt", done)
        return _ready(step, imported)

    return _ready(step, imported)


def fail(mv: ModelVersion, reason: str, message: str, now: str) -> Decision:
    """A failure found while acting on a decision (the API server refused a Job, say)."""
    prev: dict[str, Any] = mv.status.to_k8s() if mv.status else {}
    st = {k: v for k, v in prev.items() if k != "conditions"}
    st["observedGeneration"] = mv.metadata.generation or 0
    st.setdefault("startTime", now)
    return _Step(prev, mv.metadata.generation or 0, now, st).to("Failed", message, reason)


def _gate_then_index(
    rec: Recommender, observed: Observed, metrics: dict[str, float], step: _Step
) -> Decision:
    gate = rec.spec.training.evaluation
    st = step.st
    # The serving version's status keeps its headline metrics; judge both by the same names.
    baseline = gate_metrics(observed.baseline, gate.k) if observed.baseline else None
    passed, message = evaluate_gate(gate, metrics, baseline, observed.baseline_name)
    evaluation: dict[str, Any] = {"k": gate.k, "passed": passed}
    for key, field_name in (
        (f"recall@{gate.k}", "recallAtK"),
        (f"ndcg@{gate.k}", "ndcgAtK"),
        ("auc", "auc"),
    ):
        if key in metrics:
            evaluation[field_name] = metrics[key]
    if observed.baseline_name:
        evaluation["comparedTo"] = observed.baseline_name
    st["evaluation"] = evaluation
    if not passed:
        step.run = None
        step.stage("Evaluated", False, "GateFailed", message)
        return step.to("Rejected", f"evaluation gate: {message}", "EvaluationGate")
    step.run = "index"
    step.stage("Evaluated", True, "GatePassed", message)
    return step.to("Indexing", f"evaluation gate {message}; building the index")


def _ready(step: _Step, imported: bool) -> Decision:
    if imported:
        return step.to(
            "Ready",
            "imported and indexed (not evaluated: an import skips the gate); ready to serve",
        )
    return step.to("Ready", "trained, evaluated and indexed; ready to serve")
