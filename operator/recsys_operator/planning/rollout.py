"""The rollout of a new ModelVersion as a pure step machine: ``step(inputs) -> Step``.

The Recommender owns the rollout, as an Argo Rollouts Rollout does; its ``status.rollout`` is
the one place a version's serving role is written, and everything the machine needs to carry
on after a restart is there: the step index and when the step began (so a pause keeps its
timer), when the last analysis ran, and the last ``recsys.dev/promote`` and
``recsys.dev/abort`` values acted on (so a token acts once).

One pass, given the previous status, the versions, the analysis result (when one was due),
which versions are ready to take traffic, and the clock:

- a new Ready version newer than the stable (and not the one last aborted) starts a canary
  at step 0; without steps it goes straight to Promoting;
- ``setWeight`` takes effect at once; a timed ``pause`` waits out its duration from
  ``stepStartedAt``; ``pause: {}`` waits for a promote; ``spec.serving.rollout.paused`` holds
  every step where it is. Analysis keeps running in all three;
- a Failed check holds the steps; ``failureLimit`` of them aborts the canary (traffic back
  on the stable at once). An Inconclusive check (too little data) holds nothing. A stale
  FeatureView (``maxFeatureStaleness``) holds the steps too;
- after the last step the rollout is Promoting: the stable moves only once the new version
  is ready (its Triton Available and every live gateway replica has its index loaded). The
  replaced version stays ready as the routing table's standby for ``rollbackWindow``;
- abort with no canary inside the rollback window rolls the last promotion back;
- ``pinnedModelVersion`` serves exactly that version (Promoting to it when it is not yet
  ready, so no request meets a version still loading);
- a version the gateways cannot feed the features it was trained on (``unfit``) never
  becomes the canary, the first stable or the pinned one, and a canary that turns unfit (a
  feature dropped from the spec) is aborted. A stable that turns unfit keeps serving: taking
  it away would serve nothing, so the Recommender reports it instead.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import ConfigDict

from recsys_contract.formats import parse_duration
from recsys_operator.api.recommender import AnalysisResult, RolloutStatus, ShadowStatus
from recsys_operator.api.serving import CanaryStep, Rollout
from recsys_operator.planning import EventSpec

PROMOTE_ANNOTATION = "recsys.dev/promote"
ABORT_ANNOTATION = "recsys.dev/abort"
#: Analysis results kept in status.
KEEP_RESULTS = 5
#: How often a rollout waiting on something outside it (a replica loading an index) looks again.
WAIT_POLL_SECONDS = 2.0


@dataclass(frozen=True)
class Candidate:
    """A Ready version: its name and its place in the order of versions (newest last)."""

    name: str
    order: tuple[str, int]


@dataclass(frozen=True)
class Inputs:
    rollout: Rollout
    previous: RolloutStatus
    #: Ready versions with an index, oldest first.
    versions: Sequence[Candidate]
    now: dt.datetime
    pinned: str | None = None
    promote_token: str | None = None
    abort_token: str | None = None
    #: The analysis check run now because one was due (``analysis_due``), if any.
    check: AnalysisResult | None = None
    #: Versions whose Triton is Available and whose index every live gateway replica has.
    ready: frozenset[str] = frozenset()
    #: Why the steps must not advance now (a stale FeatureView), if so.
    hold: str | None = None
    #: The canary's answers to mirrored requests, read with the check (if one ran).
    shadow: ShadowStatus | None = None
    #: Ready versions the gateways cannot serve as they were trained, and why.
    unfit: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Routing:
    """What the gateways are told: who serves, with what weight, and what stays loaded."""

    stable: str
    canary: str | None = None
    weight: int = 0
    standby: str | None = None
    #: % of the stable's requests the canary also answers, unserved (a shadow step)
    shadow: int = 0

    @property
    def versions(self) -> set[str]:
        return {v for v in (self.stable, self.canary, self.standby) if v}


@dataclass
class Step:
    status: RolloutStatus
    routing: Routing | None
    events: list[EventSpec] = field(default_factory=list)
    #: When the machine wants to run again (a pause ending, the next check, a replica to wait for).
    requeue_after: float | None = None
    #: Set when pinnedModelVersion names no Ready version of this Recommender.
    problem: str | None = None


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _parse(ts: str) -> dt.datetime:
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))


def analysis_due(rollout: Rollout, previous: RolloutStatus, now: dt.datetime) -> bool:
    """Whether a canary is running and an analysis interval has passed since the last check
    (or since the canary started)."""
    if not previous.canary or previous.phase in ("Promoting", "Aborted", "Healthy"):
        return False
    since = previous.last_check_time or previous.start_time
    if since is None:
        return True
    return (now - _parse(since)).total_seconds() >= parse_duration(rollout.analysis.interval)


def _describe(step: CanaryStep) -> str:
    if step.set_weight is not None:
        return f"setWeight {step.set_weight}"
    if step.shadow is not None:
        return f"shadow {step.shadow.percent}% for {step.shadow.duration}"
    assert step.pause is not None
    return f"pause {step.pause.duration}" if step.pause.duration else "pause until promoted"


class _Working(RolloutStatus):
    """The status being decided: the API model, mutable for the length of one pass."""

    model_config = ConfigDict(**{**RolloutStatus.model_config, "frozen": False})


class _Machine:
    def __init__(self, inp: Inputs) -> None:
        self.inp = inp
        self.st = _Working.model_validate(inp.previous.to_k8s())
        self.events: list[EventSpec] = []
        self.waits: list[float] = []
        self.names = {c.name for c in inp.versions}
        self.order = {c.name: c.order for c in inp.versions}

    # --- helpers -----------------------------------------------------------------------------

    def now(self) -> str:
        return _iso(self.inp.now)

    def wait(self, seconds: float) -> None:
        self.waits.append(max(0.5, seconds))

    def event(self, type_: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.events.append((type_, reason, message))

    def new_token(self, token: str | None, last: str | None) -> bool:
        return bool(token) and token != last

    def wait_for_check(self) -> None:
        """Run again when the next analysis check is due."""
        st = self.st
        since = st.last_check_time or st.start_time
        if st.canary is None or since is None:
            return
        gone = (self.inp.now - _parse(since)).total_seconds()
        self.wait(parse_duration(self.inp.rollout.analysis.interval) - gone)

    def clear_canary(self) -> None:
        st = self.st
        st.canary = None
        st.canary_weight = 0
        st.current_step_index = None
        st.step_started_at = None
        st.pause_reason = None

    def promote_to(self, target: str, why: str) -> None:
        """Make ``target`` the stable once it is ready; until then Promoting."""
        st = self.st
        if target not in self.inp.ready:
            st.phase = "Promoting"
            st.pause_reason = None
            st.message = f"{why}: waiting for {target}'s Triton and every gateway replica's index"
            self.wait(WAIT_POLL_SECONDS)
            return
        old = st.stable
        st.stable = target
        self.clear_canary()
        if old and old != target:
            st.previous_stable = old
            window = parse_duration(self.inp.rollout.rollback_window)
            st.previous_stable_until = _iso(self.inp.now + dt.timedelta(seconds=window))
            if window > 0:
                self.wait(window)
        st.phase = "Healthy"
        st.message = f"{target} promoted ({why})"
        self.event("Normal", "Promoted", f"{target} is the stable version ({why})")

    def abort(self, why: str) -> None:
        st = self.st
        canary = st.canary
        st.aborted_version = canary
        self.clear_canary()
        st.phase = "Aborted"
        st.message = f"canary {canary} aborted: {why}; all traffic on {st.stable}"
        self.event("Warning", "RolloutAborted", st.message)

    # --- the pass ------------------------------------------------------------------------------

    def run(self) -> Step:
        inp, st = self.inp, self.st
        if st.stable and st.stable not in self.names:
            st.stable = None  # deleted or no longer servable
        if st.previous_stable and (
            st.previous_stable not in self.names
            or st.previous_stable_until is None
            or inp.now >= _parse(st.previous_stable_until)
        ):
            st.previous_stable = st.previous_stable_until = None
        if inp.pinned:
            return self.pinned(inp.pinned)
        if st.stable is None:
            fit = [c.name for c in inp.versions if c.name not in inp.unfit]
            newest = fit[-1] if fit else None
            if newest is None:
                return Step(self.final(), None)
            # Nothing serves yet, so nobody can be hurt: the first version serves at once.
            st.stable, st.phase, st.message = newest, "Healthy", f"{newest} serving (first version)"
            self.clear_canary()
            self.event("Normal", "Promoted", f"{newest} is the stable version (first version)")
            self.consume_tokens()
            return self.done()
        if st.canary and st.canary not in self.names:
            gone = st.canary
            self.clear_canary()
            st.phase, st.message = "Healthy", f"canary {gone} is no longer servable"
        if st.canary:
            self.canary()
        else:
            self.idle()
        return self.done()

    def consume_tokens(self) -> None:
        st, inp = self.st, self.inp
        if inp.promote_token:
            st.last_promote_token = inp.promote_token
        if inp.abort_token:
            st.last_abort_token = inp.abort_token

    def pinned(self, pinned: str) -> Step:
        st = self.st
        self.consume_tokens()
        if pinned not in self.names or pinned in self.inp.unfit:
            why = (
                f"cannot serve: {self.inp.unfit[pinned]}"
                if pinned in self.inp.unfit
                else "is not a Ready version of this Recommender"
            )
            return Step(
                self.final(),
                self.routing(),
                requeue_after=None,
                problem=f"spec.serving.pinnedModelVersion {pinned} {why}; keeping the current one",
            )
        if st.canary:
            self.event("Normal", "RolloutAbandoned", f"canary {st.canary} left: pinned to {pinned}")
            self.clear_canary()
        if st.stable == pinned:
            st.phase, st.message = "Healthy", f"pinned to {pinned}"
            return self.done()
        self.promote_to(pinned, "pinned")
        return self.done()

    def idle(self) -> None:
        inp, st = self.inp, self.st
        if self.new_token(inp.abort_token, st.last_abort_token):
            st.last_abort_token = inp.abort_token
            if st.previous_stable:
                rolled_back = st.stable
                st.stable, st.aborted_version = st.previous_stable, rolled_back
                st.previous_stable = st.previous_stable_until = None
                st.phase = "Aborted"
                st.message = f"{rolled_back} rolled back: all traffic on {st.stable}"
                self.event("Warning", "RolledBack", st.message)
                return
        if inp.promote_token:
            st.last_promote_token = inp.promote_token
        stable_order = self.order[st.stable] if st.stable else ("", 0)
        newer = [
            c.name
            for c in inp.versions
            if c.order > stable_order and c.name != st.aborted_version and c.name not in inp.unfit
        ]
        if not newer:
            if st.phase not in ("Aborted", "Healthy"):
                st.phase, st.message = "Healthy", f"{st.stable} serving"
            return
        target = newer[-1]
        steps = inp.rollout.steps
        if not steps:
            self.promote_to(target, "no canary steps")
            return
        st.canary, st.canary_weight = target, 0
        st.current_step_index, st.step_started_at = 0, self.now()
        st.start_time, st.failed_checks = self.now(), 0
        st.analysis, st.last_check_time, st.shadow = None, None, None
        self.event("Normal", "RolloutStarted", f"canary {target} against stable {st.stable}")
        self.wait_for_check()
        self.steps()

    def canary(self) -> None:
        inp, st = self.inp, self.st
        rollout = inp.rollout
        if self.new_token(inp.abort_token, st.last_abort_token):
            st.last_abort_token = inp.abort_token
            self.abort("recsys.dev/abort")
            return
        if st.canary is not None and st.canary in inp.unfit:
            self.abort(inp.unfit[st.canary])
            return
        if inp.shadow is not None:
            st.shadow = inp.shadow
        if inp.check is not None:
            results = [*(st.analysis or []), inp.check][-KEEP_RESULTS:]
            st.analysis, st.last_check_time = results, self.now()
            if inp.check.verdict == "Failed":
                st.failed_checks = (st.failed_checks or 0) + 1
                failed = [m for m in inp.check.metrics if m.verdict == "Failed"]
                why = "; ".join(m.message or m.name for m in failed)
                limit = rollout.analysis.failure_limit
                if st.failed_checks >= limit:
                    self.abort(f"{st.failed_checks} failed analysis checks ({why})")
                    return
                self.event(
                    "Warning",
                    "AnalysisFailed",
                    f"check {st.failed_checks} of {limit} failed: {why}",
                )
        self.wait_for_check()
        if self.new_token(inp.promote_token, st.last_promote_token):
            token = inp.promote_token or ""
            st.last_promote_token = token
            index = st.current_step_index or 0
            steps = rollout.steps
            if token.startswith("full"):
                st.current_step_index = len(steps)
                self.event("Normal", "PromotedByHand", f"full promotion of {st.canary} asked")
            elif index < len(steps) and steps[index].pause is not None:
                st.current_step_index, st.step_started_at = index + 1, self.now()
                self.event("Normal", "PauseSkipped", f"step {index} ({_describe(steps[index])})")
        self.steps()

    def steps(self) -> None:
        inp, st = self.inp, self.st
        steps = inp.rollout.steps
        latest = st.analysis[-1] if st.analysis else None
        held_by_failure = (
            latest is not None and latest.verdict == "Failed" and st.last_check_time is not None
        )
        index = st.current_step_index or 0
        while index < len(steps):
            step = steps[index]
            if inp.rollout.paused:
                st.phase, st.pause_reason = "Paused", "UserPaused"
                st.message = f"paused by spec.serving.rollout.paused at step {index}"
                st.current_step_index = index
                return
            if held_by_failure or inp.hold:
                st.phase, st.pause_reason = "Progressing", None
                st.message = f"step {index} held: " + (
                    inp.hold
                    or f"the last analysis check failed ({st.failed_checks} of "
                    f"{inp.rollout.analysis.failure_limit})"
                )
                st.current_step_index = index
                self.wait(WAIT_POLL_SECONDS * 5)
                return
            if (step.set_weight is not None or step.shadow is not None) and (
                st.canary not in inp.ready
            ):
                st.phase, st.pause_reason = "Progressing", None
                st.message = (
                    f"step {index} ({_describe(step)}) waits for canary {st.canary}'s Triton "
                    "and every gateway replica's index"
                )
                st.current_step_index = index
                # a shadow step's duration counts mirrored requests, so its clock starts once
                # the canary can answer them (unset while waiting: no write per poll)
                if step.shadow is not None:
                    st.step_started_at = None
                self.wait(WAIT_POLL_SECONDS)
                return
            if step.shadow is not None:
                if st.step_started_at is None:
                    st.step_started_at = self.now()
                began = _parse(st.step_started_at)
                left = parse_duration(step.shadow.duration) - (inp.now - began).total_seconds()
                if left > 0:
                    st.phase, st.pause_reason = "Progressing", None
                    st.message = (
                        f"step {index}: the canary answers {step.shadow.percent}% of the "
                        f"stable's requests unserved, for {step.shadow.duration}"
                    )
                    st.current_step_index = index
                    self.wait(left)
                    return
                index += 1
                st.step_started_at = self.now()
                continue
            if step.set_weight is not None:
                if st.canary_weight != step.set_weight:
                    self.event("Normal", "WeightSet", f"canary {st.canary} at {step.set_weight}%")
                st.canary_weight = step.set_weight
                index += 1
                st.step_started_at = self.now()
                st.phase, st.pause_reason = "Progressing", None
                st.message = f"canary {st.canary} at {step.set_weight}%"
                continue
            assert step.pause is not None
            if step.pause.duration is None:
                st.phase, st.pause_reason = "Paused", "AwaitingPromote"
                st.message = f"step {index}: waiting for recsys.dev/promote"
                st.current_step_index = index
                return
            began = _parse(st.step_started_at) if st.step_started_at else inp.now
            left = parse_duration(step.pause.duration) - (inp.now - began).total_seconds()
            if left > 0:
                st.phase, st.pause_reason = "Paused", "PauseStep"
                st.message = f"step {index}: pause {step.pause.duration} at {st.canary_weight}%"
                st.current_step_index = index
                self.wait(left)
                return
            index += 1
            st.step_started_at = self.now()
        st.current_step_index = len(steps)
        if inp.rollout.paused:
            st.phase, st.pause_reason = "Paused", "UserPaused"
            st.message = "paused by spec.serving.rollout.paused before the promotion"
            return
        if held_by_failure or inp.hold:
            st.phase = "Progressing"
            st.message = "promotion held: " + (inp.hold or "the last analysis check failed")
            self.wait(WAIT_POLL_SECONDS * 5)
            return
        assert st.canary is not None
        self.promote_to(st.canary, "all steps done")

    def routing(self) -> Routing | None:
        st = self.st
        if not st.stable:
            return None
        standby = None
        if st.phase == "Promoting" and not st.canary:
            standby = self.inp.pinned or self.promotion_target()
        elif st.previous_stable:
            standby = st.previous_stable
        if standby == st.stable:
            standby = None
        shadow = 0
        steps, index = self.inp.rollout.steps, st.current_step_index
        # a canary not yet ready would only fail the mirrored requests
        if st.canary in self.inp.ready and index is not None and index < len(steps):
            mirror = steps[index].shadow
            shadow = mirror.percent if mirror is not None else 0
        weight = st.canary_weight or 0 if st.canary else 0
        return Routing(st.stable, st.canary, weight, standby, shadow)

    def promotion_target(self) -> str | None:
        st = self.st
        stable_order = self.order.get(st.stable or "", ("", 0))
        newer = [
            c.name
            for c in self.inp.versions
            if c.order > stable_order
            and c.name != st.aborted_version
            and c.name not in self.inp.unfit
        ]
        return newer[-1] if newer else None

    def done(self) -> Step:
        st = self.st
        if st.phase != "Paused":
            st.pause_reason = None
        if not st.canary:
            st.canary_weight = 0 if st.stable else None
        return Step(
            self.final(), self.routing(), self.events, min(self.waits) if self.waits else None
        )

    def final(self) -> RolloutStatus:
        return RolloutStatus.model_validate(self.st.to_k8s())


def step(inp: Inputs) -> Step:
    return _Machine(inp).run()
