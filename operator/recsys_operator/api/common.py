"""Types the three kinds share: names, durations, quantities, Secret references, scheduling,
and status conditions in the shape of ``metav1.Condition``.

They copy the shapes of core Kubernetes types (``resources``, ``tolerations``,
``secretKeyRef``) field for field, so what a user knows from a Pod spec works here unchanged
and the operator can hand them to the Jobs and Deployments it creates as they are.
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, WithJsonSchema

from recsys_operator.api import formats
from recsys_operator.api.base import ApiModel, Format, ListMap, Rule

# --- scalar types -------------------------------------------------------------------------------

Name = Annotated[str, Field(min_length=1, max_length=63, pattern=formats.DNS1123_LABEL)]
SubdomainName = Annotated[
    str, Field(min_length=1, max_length=253, pattern=formats.DNS1123_SUBDOMAIN)
]
Identifier = Annotated[str, Field(min_length=1, max_length=128, pattern=formats.IDENTIFIER)]
Duration = Annotated[
    str,
    Field(min_length=2, max_length=32),
    Format(
        formats.DURATION,
        "must be a duration such as 30s, 10m or 1h30m (units ms, s, m, h; a day is 24h)",
    ),
]
Cron = Annotated[
    str,
    Field(min_length=1, max_length=128),
    Format(
        formats.CRON,
        "must be a cron schedule of five fields (minute hour day-of-month month day-of-week) "
        "such as '*/30 * * * *' or '0 3 * * 0', or one of @hourly, @daily, @weekly, "
        "@monthly, @yearly",
    ),
]
TimeZone = Annotated[str, Field(min_length=1, max_length=64, pattern=formats.TIME_ZONE)]
StorageUri = Annotated[
    str,
    Field(min_length=6, max_length=2048),
    Format(
        formats.STORAGE_URI,
        "must be a URI with a scheme the workloads read and write: s3://bucket/path (AWS or "
        "any S3-compatible store, its endpoint and keys in the artifact store Secret), "
        "pvc://claim/path (a PersistentVolumeClaim of the namespace) or file:///absolute/path; "
        "gs://, az://, hdfs:// and https:// are not supported: copy the data to an "
        "S3-compatible bucket or a PersistentVolumeClaim",
    ),
]
Image = Annotated[str, Field(min_length=1, max_length=512, pattern=formats.IMAGE)]
Digest = Annotated[str, Field(max_length=71, pattern=formats.DIGEST)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


def _quantity(value: int | str) -> int | str:
    # The pattern matched: a valid quantity, even past what Python's decimals compute.
    with contextlib.suppress(ArithmeticError):
        formats.parse_quantity(value)
    return value


def _requests_within_limits(requests: dict[str, Any], limits: dict[str, Any]) -> bool:
    """The CEL rule below, evaluated as CEL does: a quantity ``quantity()`` cannot read fails
    the rule."""
    for key, limit in limits.items():
        if key not in requests:
            continue
        low, high = formats.cel_quantity(requests[key]), formats.cel_quantity(limit)
        if low is None or high is None or low > high:
            return False
    return True


#: ``x-kubernetes-int-or-string`` with the quantity pattern: the exact schema controller-gen
#: writes for ``resource.Quantity``, so ``2``, ``"500m"`` and ``"4Gi"`` are all accepted.
Quantity = Annotated[
    int | str,
    AfterValidator(_quantity),
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "maxLength": 64,
            "pattern": formats.QUANTITY,
        }
    ),
]


def _timestamp(value: str) -> str:
    formats.parse_timestamp(value)  # the calendar check (no 31 February) the apiserver makes
    return value


Timestamp = Annotated[
    str,
    Field(max_length=64, pattern=formats.TIMESTAMP, json_schema_extra={"format": "date-time"}),
    AfterValidator(_timestamp),
]


#: Marker for lists replaced as a whole by server-side apply (order matters, no identity).
ATOMIC: dict[str, Any] = {"x-kubernetes-list-type": "atomic"}

# --- references -------------------------------------------------------------------------------


class SecretKeyRef(ApiModel):
    """A key of a Secret in the object's own namespace, as ``env[].valueFrom.secretKeyRef``.

    Credentials are only ever referenced, never written inline, so they stay out of the spec,
    out of GitOps repositories and out of ``kubectl get -o yaml``.
    """

    name: SubdomainName
    """Name of the Secret, in the same namespace as this object."""
    key: Annotated[str, Field(min_length=1, max_length=253, pattern=formats.CONFIG_KEY)]
    """Key within the Secret whose value is used."""


class LocalObjectRef(ApiModel):
    """A reference to an object by name, in the same namespace."""

    name: SubdomainName
    """Name of the referenced object."""


# --- scheduling and resources -----------------------------------------------------------------


class ResourceRequirements(ApiModel):
    """Compute resources of a container, as in a Pod spec (``requests`` and ``limits``)."""

    __rules__ = (
        Rule(
            cel="!has(self.requests) || !has(self.limits) || self.limits.all(k, "
            "!(k in self.requests) || "
            "quantity(string(self.requests[k])).compareTo(quantity(string(self.limits[k]))) <= 0)",
            message="each request must not exceed the limit of the same resource: "
            "lower the request or raise the limit",
            field_path=".requests",
            check=lambda m: (
                not m.requests or not m.limits or _requests_within_limits(m.requests, m.limits)
            ),
        ),
    )

    requests: Annotated[dict[str, Quantity], Field(max_length=16)] | None = None
    """Resources the scheduler reserves, by resource name (``cpu: 500m``, ``memory: 2Gi``)."""
    limits: Annotated[dict[str, Quantity], Field(max_length=16)] | None = None
    """Most a container may use, by resource name; a container over its memory limit is
    killed."""


class Toleration(ApiModel):
    """Lets pods run on nodes with a matching taint, as ``tolerations`` in a Pod spec.
    GPU node pools are commonly tainted (``nvidia.com/gpu:NoSchedule``)."""

    __rules__ = (
        Rule(
            cel="self.operator != 'Exists' || !has(self.value) || self.value == ''",
            message="value must be empty when operator is Exists: remove value or use Equal",
            field_path=".value",
            check=lambda m: m.operator != "Exists" or not m.value,
        ),
        Rule(
            cel="has(self.key) || self.operator == 'Exists'",
            message="a toleration without key must use operator Exists (it then tolerates "
            "every taint): set key or operator: Exists",
            field_path=".operator",
            check=lambda m: m.key is not None or m.operator == "Exists",
        ),
    )

    key: Annotated[str, Field(max_length=316)] | None = None
    """Taint key to match; empty with operator Exists matches every taint."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """Exists matches any value; Equal requires ``value`` to match."""
    value: Annotated[str, Field(max_length=63)] | None = None
    """Taint value to match when operator is Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches every effect."""
    toleration_seconds: Annotated[int, Field(ge=0)] | None = None
    """For NoExecute: how long the pod stays on the node after the taint appears."""


NodeSelector = Annotated[dict[str, Annotated[str, Field(max_length=63)]], Field(max_length=16)]
Tolerations = Annotated[list[Toleration], Field(max_length=16, json_schema_extra=ATOMIC)]

# --- schedules ----------------------------------------------------------------------------------


class CronJobSchedule(ApiModel):
    """When a recurring job runs, in the fields of a Kubernetes CronJob (and the Feast
    operator's ``cronJob``), which the operator copies into the CronJob it creates."""

    schedule: Cron
    """Cron schedule in the CronJob format: five fields (minute hour day-of-month month
    day-of-week), e.g. ``*/30 * * * *`` for every 30 minutes, or a macro like ``@hourly``."""
    time_zone: TimeZone | None = None
    """IANA time zone the schedule is read in (``Europe/Berlin``); the controller
    manager's zone when unset."""
    concurrency_policy: Literal["Allow", "Forbid", "Replace"] = "Forbid"
    """What to do when a run is due while the previous one still runs: Forbid skips the new
    run (the default: two runs writing the same keyspace would race), Replace cancels the old
    one, Allow runs both."""
    starting_deadline_seconds: Annotated[int, Field(ge=1, le=86400)] | None = None
    """A run that could not start within this many seconds of its time is skipped as missed."""
    successful_jobs_history_limit: Annotated[int, Field(ge=0, le=100)] = 3
    """How many finished successful Jobs to keep for inspection."""
    failed_jobs_history_limit: Annotated[int, Field(ge=0, le=100)] = 1
    """How many failed Jobs to keep for inspection (``kubectl logs job/...``)."""
    suspend: bool = False
    """Stop scheduling new runs; running ones continue. Set it to pause without deleting."""


# --- status -------------------------------------------------------------------------------------

ConditionType = Annotated[
    str,
    Field(
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
        r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
    ),
]


class Condition(ApiModel):
    """One aspect of the object's state, in the standard ``metav1.Condition`` shape that
    ``kubectl wait --for=condition=Ready`` and GitOps health checks read."""

    type: ConditionType
    """Kind of condition: Ready, Progressing, Degraded, or a kind-specific one."""
    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The ``metadata.generation`` the condition was computed from; lower than the
    current generation means the operator has not caught up with the last spec change."""
    last_transition_time: Timestamp
    """When ``status`` last changed."""
    reason: Annotated[
        str,
        Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"),
    ]
    """Why, in one CamelCase word a program can match on (e.g. ``TrainingFailed``)."""
    message: Annotated[str, Field(max_length=32768)]
    """Why, in words for a human: what happened and what to do about it."""


Conditions = Annotated[list[Condition], Field(max_length=32), ListMap(("type",))]
