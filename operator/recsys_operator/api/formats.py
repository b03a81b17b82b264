"""The string formats of the API, as regular expressions both validators share, and parsers.

Every pattern is written so that Python (``re``), pydantic (Rust ``regex``) and the apiserver
(Go RE2) read it the same way: anchored, no look-arounds, no back-references. Where a format
carries meaning the operator needs (a duration, a quantity, a schedule), a pure parser sits
next to its pattern.
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import MAX_EMAX, MIN_EMIN, Decimal, localcontext

#: A Go duration (``30s``, ``1h30m``) and its parser are the workloads' too: one definition.
from recsys_contract.formats import DURATION as DURATION
from recsys_contract.formats import parse_duration as parse_duration

#: A DNS-1123 label: Service names, label values, the names of the objects this API refers to.
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
#: A DNS-1123 subdomain: most Kubernetes object names (Secrets, PriorityClasses).
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: A column or feature name: an identifier that parquet, pandas and Redis hash fields all take.
IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"
#: A key of a Secret or ConfigMap.
CONFIG_KEY = r"^[-._a-zA-Z0-9]+$"
#: A Kubernetes quantity (``500m``, ``2Gi``, ``1e3``), the form resource.Quantity parses.
QUANTITY = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
#: A URI of a dataset or artifact directory, in a scheme the workload images can read *and*
#: write: ``s3://`` (s3fs, AWS or any S3-compatible store), ``pvc://CLAIM/path`` (the claim
#: mounted by the operator; CLAIM a DNS-1123 subdomain) and ``file://``. GCS, Azure, HDFS and
#: HTTP are refused here rather than accepted and failed in a pod: their fsspec backends are
#: not in the images and nothing here tests them.
#: Printable ASCII only (``[!-~]``): ``\s`` means different things to Go and to Rust.
STORAGE_URI = r"^((s3|file)://[!-~]+|pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?(/[!-~]*)?)$"
#: A Redis URL. The pattern lets user info (``user:pass@``) through on purpose: a CEL rule then
#: refuses it with a message that says where the password belongs (a Secret), which a pattern
#: mismatch could not say.
REDIS_URL = (
    r"^rediss?://([!-?A-~]*@)?"
    r"[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?(:[0-9]{1,5})?(/[0-9]{1,2})?$"
)
#: An IANA time zone name as CronJob's ``timeZone`` takes it (``Etc/UTC``, ``Europe/Berlin``).
TIME_ZONE = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+){0,2}$"
#: An RFC 3339 timestamp with a zone, as ``metav1.Time`` is written.
TIMESTAMP = (
    r"^[12][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?"
    r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
#: A content digest of an artifact.
DIGEST = r"^sha256:[a-f0-9]{64}$"
#: A container image reference (registry/repository[:tag][@digest]).
IMAGE = (
    r"^[a-z0-9]([-a-z0-9._/:]*[a-z0-9])?"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$"
)


def _cron_field(value: str, names: str = "") -> str:
    item = rf"(\*|(({value}{names})(-({value}{names}))?))(/([1-9][0-9]?))?"
    return rf"{item}(,{item})*"


_MONTHS = "|JAN|FEB|MAR|APR|MAY|JUN|JUL|AUG|SEP|OCT|NOV|DEC"
_DAYS = "|SUN|MON|TUE|WED|THU|FRI|SAT"
#: A five-field cron schedule (minute hour day-of-month month day-of-week) or a macro such as
#: ``@daily`` — the language of a CronJob's ``schedule``. Field ranges are checked here, so a
#: schedule the apiserver admits is one the operator and the CronJob controller can run.
CRON = (
    r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|"
    + r" ".join(
        [
            _cron_field(r"[0-5]?[0-9]"),
            _cron_field(r"[01]?[0-9]|2[0-3]"),
            _cron_field(r"0?[1-9]|[12][0-9]|3[01]"),
            _cron_field(r"0?[1-9]|1[0-2]", _MONTHS),
            _cron_field(r"[0-6]", _DAYS),
        ]
    )
    + r")$"
)

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
    "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
    "P": Decimal("1e15"), "E": Decimal("1e18"),
}  # fmt: skip
_QUANTITY_PARTS = re.compile(
    r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))([eE][+-]?[0-9.]+|[A-Za-z]*)$"
)


#: What CEL's ``quantity()`` accepts before it parses (k8s.io/apiserver's library): looser than
#: the schema's pattern in its digits, stricter after the exponent (no ``1e3.``).
_CEL_QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$")
#: Exponents resource.ParseQuantity reads (a 32-bit integer).
_MAX_EXPONENT = 2**31 - 1


def cel_quantity(value: int | str) -> Decimal | None:
    """The number CEL's ``quantity()`` gives for ``value``, or None where it fails (the rule
    that called it then refuses the object, as the apiserver does)."""
    text = str(value)
    if not _CEL_QUANTITY.fullmatch(text):
        return None
    match = _QUANTITY_PARTS.match(text) if re.fullmatch(QUANTITY, text) else None
    suffix = match.group(2) if match else ""
    if suffix[:1] in ("e", "E"):
        try:
            if abs(Decimal(suffix[1:])) > _MAX_EXPONENT:
                return None
        except ArithmeticError:
            return None
    try:
        return parse_quantity(value)
    except (ValueError, ArithmeticError):
        return None


def parse_quantity(value: int | str) -> Decimal:
    """The number a Kubernetes quantity stands for (``500m`` → 0.5, ``2Gi`` → 2147483648)."""
    if isinstance(value, int):
        return Decimal(value)
    match = _QUANTITY_PARTS.match(value) if re.fullmatch(QUANTITY, value) else None
    if match is None:
        raise ValueError(f"{value!r} is not a quantity such as 500m, 2, 4Gi or 1e3")
    number, suffix = Decimal(match.group(1)), match.group(2)
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number * _DECIMAL[suffix]
    # The apiserver takes any exponent (``0E1000000`` is a valid zero); Python's default
    # decimal context would overflow there, so scale in an unbounded one.
    exponent = Decimal(suffix[1:])
    with localcontext() as ctx:
        ctx.Emax, ctx.Emin = MAX_EMAX, MIN_EMIN
        if exponent == exponent.to_integral_value():
            return number.scaleb(int(exponent))
        return number * (Decimal(10) ** exponent)


def parse_timestamp(text: str) -> datetime:
    """An RFC 3339 timestamp as an aware datetime (fractions beyond microseconds dropped)."""
    example = "an RFC 3339 time such as 2024-01-31T00:00:00Z"
    if not re.fullmatch(TIMESTAMP, text):
        raise ValueError(f"{text!r} is not {example}")
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:  # e.g. 30 February: the pattern cannot know month lengths
        raise ValueError(f"{text!r} is not {example}: {exc}") from None
