"""The ``prometheus`` provider of the canary analysis: one number per variant from a PromQL query.

The gateways' own counters in Redis cover the built-in metrics; teams that already chart their
gateways (or anything else a canary moves) in Prometheus judge the canary on those queries
instead, as Flagger users do. A metric's query is one template for both variants, rendered once
for the canary and once for the stable, so the two figures compared are the same expression.

The answer must be one number. A query that returns several series is refused rather than one
of them taken: which series Prometheus lists first is arbitrary, so a forgotten ``sum`` would
judge the canary on a random pod. No data (an empty vector) and NaN (0/0: no requests in the
window) are ``None``, which the analysis reads as Inconclusive, not as a failure. ±Inf is kept:
``histogram_quantile`` answers +Inf when the quantile lies past the largest bucket, a latency a
``max`` must fail.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import httpx2 as httpx

#: The placeholders an analysis query may use, each rendered per variant.
PLACEHOLDERS = ("variant", "modelVersion", "interval", "namespace", "recommender")

_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
#: Largest first, so a window reads as users write it (5m, not 300s).
_DURATION_UNITS = (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000))


class PrometheusError(Exception):
    """Prometheus could not be asked, refused the query, or answered with no single number."""


def render(template: str, values: Mapping[str, str]) -> str:
    """The template with every ``{{name}}`` replaced by ``values[name]``, in one pass (a value
    that itself holds braces is not expanded again). A name not in ``values`` raises
    ValueError naming it, so a typo is reported before any query is sent."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            known = ", ".join(sorted(values)) or "none"
            raise ValueError(f"unknown placeholder {{{{{name}}}}} in the query (known: {known})")
        return values[name]

    return _PLACEHOLDER.sub(substitute, template)


def prometheus_duration(seconds: float) -> str:
    """``seconds`` in Prometheus' duration syntax with the largest unit that divides it exactly,
    down to milliseconds: 30 -> ``30s``, 300 -> ``5m``, 90 -> ``90s``, 0.25 -> ``250ms``."""
    if not math.isfinite(seconds):
        raise ValueError(f"duration must be finite, not {seconds}")
    ms = round(seconds * 1000)
    if ms <= 0:
        raise ValueError(f"duration must be at least 1ms, not {seconds} s")
    for unit, size in _DURATION_UNITS:
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


async def query(
    client: httpx.AsyncClient, address: str, promql: str, timeout_s: float
) -> float | None:
    """The value of an instant query at ``address`` (``http://host:9090``, a path prefix
    allowed): a scalar's, or the one sample of a vector. ``None`` when there is no data (an
    empty vector) or the value is NaN. Raises PrometheusError when Prometheus cannot be
    reached, answers an HTTP error, refuses the query (its ``errorType: error`` text is the
    message), or the result is not one number (several series, a range vector, a string)."""
    url = address.rstrip("/") + "/api/v1/query"
    # Prometheus' own timeout as well, so an expensive query stops being evaluated when the
    # client gives up on it instead of running on in the server.
    params = {"query": promql, "timeout": prometheus_duration(timeout_s)}
    try:
        response = await client.get(url, params=params, timeout=timeout_s)
    except httpx.TimeoutException as exc:
        raise PrometheusError(f"{url}: no answer within {timeout_s:g} s") from exc
    except httpx.HTTPError as exc:
        raise PrometheusError(f"{url}: {type(exc).__name__}: {exc}") from exc
    body = _json_body(response)
    if body is None:
        reason = response.text.strip()[:200] or response.reason_phrase
        raise PrometheusError(f"{url}: HTTP {response.status_code}: {reason}")
    if body.get("status") == "error":
        raise PrometheusError(f"{body.get('errorType', 'error')}: {body.get('error', '')}")
    if response.is_error or body.get("status") != "success":
        raise PrometheusError(f"{url}: HTTP {response.status_code}: unexpected answer {body}")
    return _single_value(body.get("data"))


def _json_body(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _single_value(data: Any) -> float | None:
    if not isinstance(data, dict):
        raise PrometheusError(f"answer without data: {data!r}")
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        return _number(result)
    if kind == "vector" and isinstance(result, list):
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusError(
                f"query returned {len(result)} series; aggregate it (sum/avg) to one"
            )
        sample = result[0]
        if isinstance(sample, dict) and "histogram" in sample:
            raise PrometheusError(
                "query returned a native histogram; take one number of it "
                "(histogram_quantile, histogram_count, ...)"
            )
        return _number(sample.get("value") if isinstance(sample, dict) else None)
    if kind == "matrix":
        raise PrometheusError(
            "query returned a range vector; wrap it in a function such as rate() for one number"
        )
    raise PrometheusError(f"query returned a {kind}, not a number")


def _number(pair: Any) -> float | None:
    """A ``[time, "value"]`` pair's value; Prometheus writes numbers, NaN and ±Inf as strings."""
    if not isinstance(pair, list) or len(pair) != 2:
        raise PrometheusError(f"unexpected sample {pair!r}")
    try:
        value = float(pair[1])
    except (TypeError, ValueError) as exc:
        raise PrometheusError(f"unexpected sample value {pair[1]!r}") from exc
    return None if math.isnan(value) else value
