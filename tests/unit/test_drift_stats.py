"""The drift statistics as tables, and against established libraries' own figures.

Peers: ``scipy.stats.entropy`` for KL; evidently's PSI and KL stat tests (its
``legacy.calculations.stattests``) on the same samples, handed as categorical values so its
bins are our bins; and PSI from scipy's ``rel_entr`` both ways (PSI = KL(a||e) + KL(e||a)).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy.special import rel_entr
from scipy.stats import entropy

from recsys_workloads.drift.stats import (
    EPSILON,
    divergence,
    kl,
    kl_terms,
    proportions,
    psi,
    psi_terms,
    smoothed,
)

LN2, LN5, LN9 = math.log(2), math.log(5), math.log(9)

# (actual, expected, PSI, KL(actual || expected)) worked by hand
TABLE = [
    ([0.5, 0.5], [0.5, 0.5], 0.0, 0.0),
    ([0.25, 0.75], [0.75, 0.25], 2 * 0.5 * math.log(3), 0.5 * math.log(3)),
    ([0.5, 0.5], [0.9, 0.1], 0.4 * math.log(9 / 5) + 0.4 * LN5, 0.5 * math.log(5 / 9) + 0.5 * LN5),
    ([1.0, 0.0], [0.5, 0.5], 0.5 * LN2 + (EPSILON - 0.5) * math.log(EPSILON / 0.5), None),
    ([0.1, 0.9], [0.9, 0.1], 2 * 0.8 * LN9, 0.8 * LN9),
]


@pytest.mark.parametrize(("actual", "expected", "want_psi", "want_kl"), TABLE)
def test_psi_and_kl_by_hand(
    actual: list[float], expected: list[float], want_psi: float, want_kl: float | None
) -> None:
    assert psi(actual, expected) == pytest.approx(want_psi, rel=1e-12, abs=1e-15)
    assert psi(expected, actual) == pytest.approx(want_psi, rel=1e-12, abs=1e-15)  # symmetric
    if want_kl is not None:
        assert kl(actual, expected) == pytest.approx(want_kl, rel=1e-12, abs=1e-15)


def test_kl_is_directed_and_empty_served_bins_weigh_next_to_nothing() -> None:
    training = [0.1, 0.4, 0.5]
    # serving left the first bin empty: KL(served || training) barely notices...
    assert kl([0.0, 0.45, 0.55], training) == pytest.approx(0.101, abs=0.01)
    # ...while a value training never saw (its bin at 0) costs a lot
    assert kl([0.1, 0.4, 0.5], [0.0, 0.45, 0.55]) > 0.5
    assert psi([0.0, 0.45, 0.55], training) == psi(training, [0.0, 0.45, 0.55])


@pytest.mark.parametrize(
    ("counts", "want"),
    [([1, 1, 2], [0.25, 0.25, 0.5]), ([0, 0, 0], [0.0, 0.0, 0.0]), ([5], [1.0])],
)
def test_proportions(counts: list[int], want: list[float]) -> None:
    assert proportions(counts).tolist() == want


def test_smoothing_replaces_only_zeros() -> None:
    assert smoothed([0.0, 0.3, 0.7]).tolist() == [EPSILON, 0.3, 0.7]


def test_terms_sum_to_the_totals_and_name_the_bin() -> None:
    a, e = [0.2, 0.3, 0.5], [0.4, 0.3, 0.3]
    assert psi_terms(a, e).sum() == pytest.approx(psi(a, e))
    assert kl_terms(a, e).sum() == pytest.approx(kl(a, e))
    assert int(np.argmax(psi_terms(a, e))) == 0
    assert divergence("PSI", a, e) == psi(a, e)
    assert divergence("KL", a, e) == kl(a, e)


@pytest.mark.parametrize(
    ("actual", "expected"), [([0.5, 0.5], [0.5]), ([], []), ([[0.5, 0.5]], [[0.5, 0.5]])]
)
def test_mismatched_bins_are_refused(actual: list[float], expected: list[float]) -> None:
    with pytest.raises(ValueError, match="same bins"):
        psi(actual, expected)


# --- the same samples, the same bins, another library's figures ------------------------------


def samples(seed: int, bins: int, n_ref: int, n_cur: int, empty: bool) -> tuple[
    np.ndarray, np.ndarray
]:  # fmt: skip
    """Two samples of bin indices; ``empty`` leaves some bins out of one side or the other."""
    rng = np.random.default_rng(seed)
    p = rng.dirichlet(np.full(bins, 5.0))
    q = 0.7 * p + 0.3 * rng.dirichlet(np.full(bins, 5.0))
    if empty:
        p[0], q[-1] = 0.0, 0.0
        p, q = p / p.sum(), q / q.sum()
    return rng.choice(bins, n_ref, p=p), rng.choice(bins, n_cur, p=q)


CASES = [
    (seed, bins, empty) for seed in range(4) for bins in (2, 10, 30) for empty in (False, True)
]


def our_proportions(ref: np.ndarray, cur: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    return (
        proportions(np.bincount(ref, minlength=bins)),
        proportions(np.bincount(cur, minlength=bins)),
    )


@pytest.mark.parametrize(("seed", "bins", "empty"), CASES)
def test_kl_is_scipys_entropy(seed: int, bins: int, empty: bool) -> None:
    ref, cur = samples(seed, bins, 5000, 2000, empty)
    e, a = our_proportions(ref, cur, bins)
    # scipy.stats.entropy(pk, qk) = KL(pk || qk) after normalising both; same smoothing
    assert kl(a, e) == pytest.approx(entropy(smoothed(a), smoothed(e)), rel=1e-12, abs=1e-15)
    if (a > 0).all() and (e > 0).all():  # no smoothing at all: scipy on the raw shares
        assert kl(a, e) == pytest.approx(entropy(a, e), rel=1e-12)


@pytest.mark.parametrize(("seed", "bins", "empty"), CASES)
def test_psi_is_kl_both_ways_by_scipys_rel_entr(seed: int, bins: int, empty: bool) -> None:
    ref, cur = samples(seed, bins, 5000, 2000, empty)
    e, a = our_proportions(ref, cur, bins)
    sa, se = smoothed(a), smoothed(e)
    both_ways = float(rel_entr(sa, se).sum() + rel_entr(se, sa).sum())
    assert psi(a, e) == pytest.approx(both_ways, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(("seed", "bins", "empty"), CASES)
def test_psi_and_kl_are_evidentlys(seed: int, bins: int, empty: bool) -> None:
    stattests = pytest.importorskip("evidently.legacy.calculations.stattests")
    from evidently.legacy.core import ColumnType

    ref, cur = samples(seed, bins, 5000, 2000, empty)
    e, a = our_proportions(ref, cur, bins)
    # categorical: evidently counts each value, so its bins are ours (bins empty on both sides
    # drop out, and add nothing to either figure); smallest non-zero share above 1e-4, so it
    # smooths empty bins with our EPSILON
    ref_s, cur_s = pd.Series(ref.astype(str)), pd.Series(cur.astype(str))
    their_psi = stattests.psi_stat_test(ref_s, cur_s, ColumnType.Categorical, 0.1).drift_score
    assert psi(a, e) == pytest.approx(float(their_psi), rel=1e-9, abs=1e-12)
    # evidently's KL is KL(reference || current): ours with the arguments that way round
    their_kl = stattests.kl_div_stat_test(ref_s, cur_s, ColumnType.Categorical, 0.1).drift_score
    assert kl(e, a) == pytest.approx(float(their_kl), rel=1e-9, abs=1e-12)
