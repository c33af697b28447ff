"""Ranks across conditions: average ranks, Friedman's test with Iman and Davenport's F and, with
few conditions, its exact or Monte-Carlo permutation p-value; Nemenyi's critical difference and
the groups of methods it does not separate (Demšar 2006, JMLR 7:1-30, section 3.2.2).

Plain inputs (a conditions x methods table of scores, higher is better), plain outputs. A rank of
1 is the best; ties share the average of the ranks they span. The report's section on ranks and
its diagram are gaal_cli/analysis/ranks.py and cd_diagram.py.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gaal_cli.foundation.errors import GaalError

#: Demšar (2006) trusts the chi-square (and F) approximations for N > 10 conditions; with fewer,
#: the p-value is a permutation test's
LARGE_N = 10
#: up to this many arrangements of the conditions' ranks, the permutation p-value is exact
EXACT_ARRANGEMENTS = 100_000
#: otherwise this many random ones (fixed generator seed: the same table gives the same p)
PERMUTATIONS = 20_000
PERMUTATION_SEED = 0


def average_ranks(scores: np.ndarray) -> np.ndarray:
    """Each method's rank averaged over conditions: `scores` is conditions x methods, higher is
    better, rank 1 the best, ties sharing the mean of the ranks they span (Demšar 2006, section 3.2.2)."""
    return _ranks(_score_table(scores)).mean(axis=0)


def _ranks(scores: np.ndarray) -> np.ndarray:
    from scipy import stats

    return stats.rankdata(-scores, axis=1)


@dataclass(frozen=True)
class Friedman:
    """Friedman's test over N conditions x k methods.

    Attributes:
        average_ranks: per method (rank 1 the best).
        chi2, chi2_p: Friedman's statistic with scipy's correction for ties, on k-1 degrees of freedom.
        f, f_p: Iman and Davenport's F from that statistic, on (k-1, (k-1)(N-1)) degrees of freedom.
        permutation_p: for N <= LARGE_N, the permutation test's p-value (NaN above).
        arrangements: how many arrangements it counted (all of them when `exact`).
    """

    average_ranks: tuple[float, ...]
    chi2: float
    chi2_p: float
    f: float
    f_p: float
    permutation_p: float
    arrangements: int
    exact: bool
    n: int
    k: int

    @property
    def p_value(self) -> float:
        """The p-value the report judges by: the permutation test's with few conditions, else
        Iman-Davenport's F (which Demšar recommends over the chi-square)."""
        return self.permutation_p if self.n <= LARGE_N else self.f_p

    @property
    def p_name(self) -> str:
        if self.n > LARGE_N:
            return "Iman-Davenport F"
        return "exact permutation" if self.exact else f"permutation ({self.arrangements:,} random arrangements)"


def friedman(scores: np.ndarray) -> Friedman:
    """Friedman's test that k methods rank alike over N conditions (rows), with Iman-Davenport's F
    and, for N <= LARGE_N, a permutation p-value.

    The statistic is scipy.stats.friedmanchisquare's, which divides Friedman's
    chi2_F = 12N / (k(k+1)) · (sum_j R_j^2 - k(k+1)^2 / 4) (R_j the average ranks) by the
    correction for ties 1 - sum(t^3 - t) / (N k (k^2 - 1)); without ties both agree.
    Iman-Davenport's variant follows Demšar's text. Under the null hypothesis each condition's
    ranks are exchangeable among the methods, so the permutation test rearranges every row's
    ranks independently and counts the arrangements whose sum_j (rank sum_j)^2, monotone in
    chi2_F and F for a fixed table, is at least the observed (e.g. Good 2005, Permutation,
    Parametric and Bootstrap Tests of Hypotheses, 3rd ed., section 5.3): exactly, over all
    (k!)^(N-1) arrangements (the first row fixed: relabelling the methods changes nothing) where
    they are at most EXACT_ARRANGEMENTS, else over PERMUTATIONS random ones, p = (1 + count) /
    (1 + draws).
    """
    from scipy import stats

    scores = _score_table(scores)
    n, k = scores.shape
    if k < 3 or n < 2:
        got = f"got {k} methods and {n} conditions"
        raise GaalError(f"Friedman's test needs at least 3 methods and 2 conditions, {got}", field="methods")
    ranks = _ranks(scores)
    average = tuple(float(r) for r in ranks.mean(axis=0))
    if np.ptp(scores, axis=1).max() == 0:  # every condition a full tie: no evidence of any difference
        return Friedman(average, 0.0, 1.0, 0.0, 1.0, 1.0 if n <= LARGE_N else math.nan, 0, True, n, k)
    chi2, chi2_p = stats.friedmanchisquare(*scores.T)
    f, f_p = iman_davenport(float(chi2), n, k)
    permutation_p, arrangements, exact = (math.nan, 0, False) if n > LARGE_N else permutation_test(ranks)
    return Friedman(average, float(chi2), float(chi2_p), f, f_p, permutation_p, arrangements, exact, n, k)


def permutation_test(ranks: np.ndarray) -> tuple[float, int, bool]:
    """(p-value, arrangements counted, exact?) of Friedman's statistic by rearranging each row of
    `ranks` (conditions x methods)."""
    n, k = ranks.shape
    observed = float((ranks.sum(axis=0) ** 2).sum())
    tolerance = 1e-9 * observed
    if math.factorial(k) ** (n - 1) <= EXACT_ARRANGEMENTS:
        sums = ranks[:1]
        for row in ranks[1:]:
            orders = np.array(list(itertools.permutations(row)))
            sums = (sums[:, None, :] + orders[None, :, :]).reshape(-1, k)
        statistic = (sums**2).sum(axis=1)
        return float(np.mean(statistic >= observed - tolerance)), int(statistic.size), True
    rng = np.random.default_rng(PERMUTATION_SEED)
    drawn = rng.permuted(np.broadcast_to(ranks, (PERMUTATIONS, n, k)), axis=2)
    statistic = (drawn.sum(axis=1) ** 2).sum(axis=1)
    return float((1 + np.sum(statistic >= observed - tolerance)) / (1 + PERMUTATIONS)), PERMUTATIONS, False


def iman_davenport(chi2: float, n: int, k: int) -> tuple[float, float]:
    """Iman & Davenport's F_F = (N-1) chi2_F / (N(k-1) - chi2_F), on (k-1, (k-1)(N-1)) degrees of
    freedom, and its p-value (Iman & Davenport 1980, as given by Demšar 2006, section 3.2.2)."""
    from scipy import stats

    denominator = n * (k - 1) - chi2
    if denominator <= 0:  # every condition ranks the methods the same way: F is infinite
        return math.inf, 0.0
    f = (n - 1) * chi2 / denominator
    return float(f), float(stats.f.sf(f, k - 1, (k - 1) * (n - 1)))


def nemenyi_cd(k: int, n: int, alpha: float = 0.05) -> float:
    """Nemenyi's critical difference CD = q_alpha · sqrt(k(k+1) / (6N)) (Demšar 2006, section 3.2.2),
    with q_alpha the studentized range's 1-alpha quantile for k groups and infinite degrees of
    freedom divided by sqrt(2) (scipy.stats.studentized_range); two methods whose average ranks
    differ by at least CD differ significantly. No two can where CD >= k - 1, the largest possible
    difference of average ranks (`cd_reachable`)."""
    from scipy import stats

    q = stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2)
    return float(q * math.sqrt(k * (k + 1) / (6 * n)))


def cd_reachable(cd: float, k: int) -> bool:
    """Whether two of k methods could ever differ by the critical difference (best 1, worst k)."""
    return cd < k - 1


def cliques(ranks: Sequence[float], cd: float) -> list[tuple[int, ...]]:
    """The groups of methods not significantly different under the critical difference: maximal
    runs of methods, in rank order, whose average ranks span less than `cd`; groups of one are
    left out. Returns the methods' indices into `ranks`, best first (the bars of a CD diagram)."""
    ranks = np.asarray(ranks, dtype=float)
    order = np.argsort(ranks, kind="stable")
    groups: list[tuple[int, ...]] = []
    last_end = -1
    for i in range(order.size):
        end = i
        while end + 1 < order.size and ranks[order[end + 1]] - ranks[order[i]] < cd:
            end += 1
        if end > i and end > last_end:  # not inside the group before it
            groups.append(tuple(int(m) for m in order[i : end + 1]))
            last_end = end
    return groups


def _score_table(scores: np.ndarray) -> np.ndarray:
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 2 or not scores.size or not np.isfinite(scores).all():
        expected = "expected a conditions x methods table of finite scores"
        raise GaalError(f"{expected}, got shape {scores.shape}", field="scores")
    return scores
