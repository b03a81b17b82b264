"""The drift statistics: pure functions over probability vectors on the same bins.

Both methods compare a *served* distribution ``actual`` with the training profile's
``expected`` one, bin by bin (the bins are the encoded space ``train.profile`` defines):

- PSI (population stability index) = sum over bins of ``(a - e) * ln(a / e)``. It is
  symmetric and equals ``KL(a || e) + KL(e || a)`` on the same vectors. Rule of thumb:
  below 0.1 stable, 0.1-0.25 a moderate shift, above 0.25 a major one.
- KL = ``KL(actual || expected)`` = sum of ``a * ln(a / e)``: how surprising serving is under
  the training distribution. Values that training never or rarely saw (a new category, the
  "missing" bin filling up) weigh most; bins serving left empty weigh next to nothing, so
  a small sample's empty bins do not read as drift.

Empty bins: ``ln(a / 0)`` is infinite, so a probability of exactly 0 on either side is
replaced by ``EPSILON`` = 1e-4 before comparing (the smoothing evidently uses for its PSI and
KL when no bin is rarer than that). PSI uses the smoothed vectors as they are; KL
renormalises them to sum to 1 first, as ``scipy.stats.entropy`` does, so it stays a
divergence between distributions (non-negative).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from recsys_contract.drift import DEFAULT_THRESHOLDS as DEFAULT_THRESHOLDS
from recsys_contract.drift import Method as Method

FloatArray = npt.NDArray[np.float64]

#: Stands in for a probability of exactly zero (see the module docstring).
EPSILON = 1e-4
#: Default thresholds: PSI 0.2 (the industry rule of thumb) and KL 0.1 (about half of it: for
#: small shifts PSI is close to twice KL). benchmarks/drift_bench.py measures both.


def proportions(counts: npt.ArrayLike) -> FloatArray:
    """Counts per bin as probabilities; all zeros when there is nothing counted."""
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 1:
        raise ValueError(f"counts must be one-dimensional, got shape {c.shape}")
    if (c < 0).any():
        raise ValueError("counts must not be negative")
    total = c.sum()
    return c / total if total > 0 else np.zeros_like(c)


def smoothed(p: npt.ArrayLike, epsilon: float = EPSILON) -> FloatArray:
    """``p`` with every zero replaced by ``epsilon`` (not renormalised)."""
    v = np.asarray(p, dtype=np.float64)
    return np.where(v > 0, v, epsilon)


def _pair(actual: npt.ArrayLike, expected: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(
            f"need two non-empty vectors over the same bins, got {a.shape} and {e.shape}"
        )
    return a, e


def psi_terms(
    actual: npt.ArrayLike, expected: npt.ArrayLike, epsilon: float = EPSILON
) -> FloatArray:
    """Each bin's share of the PSI (all non-negative)."""
    a, e = _pair(actual, expected)
    a, e = smoothed(a, epsilon), smoothed(e, epsilon)
    return np.asarray((a - e) * np.log(a / e), dtype=np.float64)


def psi(actual: npt.ArrayLike, expected: npt.ArrayLike, epsilon: float = EPSILON) -> float:
    """Population stability index of ``actual`` against ``expected``."""
    return float(psi_terms(actual, expected, epsilon).sum())


def kl_terms(
    actual: npt.ArrayLike, expected: npt.ArrayLike, epsilon: float = EPSILON
) -> FloatArray:
    """Each bin's term of ``KL(actual || expected)`` (a term may be negative; the sum is not)."""
    a, e = _pair(actual, expected)
    a, e = smoothed(a, epsilon), smoothed(e, epsilon)
    a, e = a / a.sum(), e / e.sum()
    return np.asarray(a * np.log(a / e), dtype=np.float64)


def kl(actual: npt.ArrayLike, expected: npt.ArrayLike, epsilon: float = EPSILON) -> float:
    """Kullback-Leibler divergence ``KL(actual || expected)`` in nats."""
    return max(float(kl_terms(actual, expected, epsilon).sum()), 0.0)


def divergence_terms(
    method: Method, actual: npt.ArrayLike, expected: npt.ArrayLike, epsilon: float = EPSILON
) -> FloatArray:
    return (psi_terms if method == "PSI" else kl_terms)(actual, expected, epsilon)


def divergence(
    method: Method, actual: npt.ArrayLike, expected: npt.ArrayLike, epsilon: float = EPSILON
) -> float:
    return (psi if method == "PSI" else kl)(actual, expected, epsilon)
