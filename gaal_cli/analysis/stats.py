"""Statistics for comparing methods: intervals over seeds, paired bootstrap differences, Holm's
correction, the seeds a difference would need, Friedman's test, average ranks and Nemenyi's
critical difference.

Plain inputs (numpy arrays, sequences), plain outputs (frozen dataclasses of floats), no
knowledge of run folders: the report and `gaal compare` gather the numbers, this module only
computes. scipy.stats supplies every distribution (t, normal, F, chi-square, studentized
range) and Friedman's statistic; what scipy lacks (the paired two-level bootstrap, Holm's
step-down) is written here with its source in the docstring.

Conventions: a method's score is "higher is better" (accuracy); a rank of 1 is the best; ties
share the average of the ranks they span.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gaal_cli.foundation.errors import GaalError

#: bootstrap resamples unless the caller says otherwise: the Monte-Carlo error of a 95 % percentile
#: bound is then ~0.1 of the interval's own spread, and the smallest p-value is 2/(B+1) ~ 4e-4
RESAMPLES = 5000
#: the within-seed resamples drawn at once are capped at this many indices (memory ~ 8 bytes each)
_CHUNK_INDICES = 2_000_000


# ---------------------------------------------------------------- a cell: mean and interval over seeds


@dataclass(frozen=True)
class Interval:
    """A mean with its two-sided interval; `low`, `high` are NaN when one value gives no spread."""

    mean: float
    low: float
    high: float
    n: int


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean and Student-t interval over seeds: mean ± t_{1-a/2, n-1} · s / sqrt(n), s with ddof=1.

    The textbook one-sample t interval (e.g. Casella & Berger, Statistical Inference, 2nd ed.,
    ch. 9); it treats the seeds' values as a normal sample, which a handful of seeds
    can neither confirm nor refute.
    """
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size == 0 or not np.isfinite(x).all():
        raise ValueError(f"expected a non-empty vector of finite values, got {x!r}")
    mean = float(x.mean())
    if x.size == 1:
        return Interval(mean, math.nan, math.nan, 1)
    half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return Interval(mean, mean - half, mean + half, int(x.size))


# ---------------------------------------------------------------- metrics from per-sample predictions


def accuracy(correct: np.ndarray, labels: np.ndarray) -> float:
    """The share of samples predicted right."""
    return float(np.mean(correct))


def balanced_accuracy(correct: np.ndarray, labels: np.ndarray) -> float:
    """The mean over the classes present in `labels` of each class's recall (as scikit-learn's
    balanced_accuracy_score: a class absent from the labels does not count)."""
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    hits = np.bincount(inverse, weights=np.asarray(correct, dtype=float), minlength=classes.size)
    return float(np.mean(hits / counts))


METRICS = {"accuracy": accuracy, "balanced_accuracy": balanced_accuracy}


# ---------------------------------------------------------------- paired bootstrap of a difference


@dataclass(frozen=True)
class PairedDifference:
    """Method A minus reference R on one metric, over paired seeds.

    Attributes:
        difference: the mean over seeds of metric(A) - metric(R) on the full test set.
        low, high: the percentile bootstrap interval of that mean.
        p_value: two-sided bootstrap p-value for "no difference" (before any multiplicity correction).
        per_seed: the observed difference of each seed.
        resamples: B of the bootstrap; 0 for the seeds-only paired t test (`paired_t`).
        seeds_needed: where the interval holds 0, the seeds a difference of the observed size
            would need (see `seeds_needed`); None where it does not, or where it cannot be said.
    """

    metric: str
    difference: float
    low: float
    high: float
    p_value: float
    per_seed: tuple[float, ...]
    resamples: int
    confidence: float
    seeds_needed: int | None

    @property
    def n_seeds(self) -> int:
        return len(self.per_seed)

    @property
    def significant(self) -> bool:
        """The interval excludes 0 (before Holm; the report applies Holm across a table's rows)."""
        return self.low > 0 or self.high < 0


def paired_bootstrap(
    a_correct: Sequence[np.ndarray],
    r_correct: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    metric: str = "accuracy",
    *,
    resamples: int = RESAMPLES,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedDifference:
    """Paired difference of method A against reference R, with a two-level bootstrap.

    Runs are paired by seed: seed s of A and seed s of R were trained on the same split and
    tested on the same samples (`a_correct[s]`, `r_correct[s]`, `labels[s]` aligned sample by
    sample, e.g. by `predictions_file.align`). Each bootstrap replicate draws the seeds with
    replacement and, within each drawn seed, the test samples with replacement; A and R are
    scored on the same drawn samples, so what both get right or wrong cancels (the pairing).
    This is the resampling of hierarchical data at both levels (Davison & Hinkley 1997,
    Bootstrap Methods and their Application, section 3.8): seeds carry the training
    randomness, test samples the finite test set.

    The interval is the percentile interval of the replicates' mean differences (Efron &
    Tibshirani 1993, An Introduction to the Bootstrap, ch. 13). The p-value is the smallest
    level at which that two-sided interval would exclude 0 (the test that inverts it), with
    the +1 correction that keeps a Monte-Carlo p-value valid and never 0 (Davison & Hinkley
    1997, ch. 4; North, Curtis & Sham 2002, Am. J. Hum. Genet. 71:439):
    p = min(1, 2 · min(1 + #{d* <= 0}, 1 + #{d* >= 0}) / (B + 1)).
    So with B resamples no p-value is below 2/(B+1); Holm over m rows needs B >> 2m/alpha.

    Args:
        a_correct, r_correct: per seed, a bool vector: did A (R) get each test sample right.
        labels: per seed, the test samples' classes (used by balanced accuracy).
        metric: "accuracy" or "balanced_accuracy".
        resamples: B, the number of bootstrap replicates.
        seed: the random generator's seed: the same inputs give the same result.

    Raises:
        GaalError: no seeds, or a seed whose vectors differ in length.
    """
    if metric not in METRICS:
        raise GaalError(f"unknown metric '{metric}'; expected one of {', '.join(METRICS)}", field="metric")
    if not len(a_correct) or not len(a_correct) == len(r_correct) == len(labels):
        counts = f"{len(a_correct)}, {len(r_correct)}, {len(labels)}"
        raise GaalError(f"expected the same number (> 0) of seeds for A, R and the labels, got {counts}", field="seeds")
    seeds = []
    for s, (a, r, y) in enumerate(zip(a_correct, r_correct, labels)):
        a, r, y = np.asarray(a, dtype=bool), np.asarray(r, dtype=bool), np.asarray(y)
        if not (a.ndim == r.ndim == y.ndim == 1) or not a.size == r.size == y.size > 0:
            shapes = f"{a.shape}, {r.shape}, {y.shape}"
            raise GaalError(f"seed {s}: expected three vectors of one length (> 0), got {shapes}", field="seeds")
        seeds.append((a.astype(np.int8) - r.astype(np.int8), np.unique(y, return_inverse=True)[1]))
    score = METRICS[metric]
    per_seed = np.array([score(a, y) - score(r, y) for a, r, y in zip(a_correct, r_correct, labels)])

    rng = np.random.default_rng(seed)
    n_seeds = len(seeds)
    picks = rng.integers(n_seeds, size=(resamples, n_seeds))
    replicate = np.empty(picks.shape)
    for s, (d, y) in enumerate(seeds):
        where = picks == s
        replicate[where] = _resampled_differences(rng, d, y, int(where.sum()), metric)
    means = replicate.mean(axis=1)

    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    below, above = int((means <= 0).sum()), int((means >= 0).sum())
    p_value = min(1.0, 2 * min(below + 1, above + 1) / (resamples + 1))
    difference = float(per_seed.mean())
    holds_zero = low <= 0 <= high
    return PairedDifference(
        metric=metric,
        difference=difference,
        low=float(low),
        high=float(high),
        p_value=p_value,
        per_seed=tuple(float(x) for x in per_seed),
        resamples=resamples,
        confidence=confidence,
        seeds_needed=seeds_needed(per_seed, alpha=1 - confidence) if holds_zero else None,
    )


def paired_t(a_values: Sequence[float], r_values: Sequence[float], metric: str, *, confidence: float = 0.95):
    """Paired difference from per-seed metric values only: the paired t test and interval.

    For runs without a predictions file (older runs keep only their report.json): the mean of
    the per-seed differences, its Student-t interval (`mean_interval`) and the two-sided p-value
    of scipy.stats.ttest_rel. It sees the seeds' spread but not the test set's finiteness, and
    with 2 or 3 seeds its interval is wide; the report should say which of the two was used.
    Returns a `PairedDifference` with resamples=0; with one seed the interval and p are NaN.
    """
    from scipy import stats

    a, r = np.asarray(a_values, dtype=float), np.asarray(r_values, dtype=float)
    if a.ndim != 1 or a.shape != r.shape or a.size == 0:
        raise GaalError(
            f"expected per-seed values of A and R paired by seed, got {a.shape} and {r.shape}", field="seeds"
        )
    d = a - r
    cell = mean_interval(d, confidence)
    if d.size < 2:
        p_value = math.nan
    elif np.ptp(d) == 0:  # no spread, where ttest_rel gives NaN: the limit of its p as the spread vanishes
        p_value = 1.0 if d[0] == 0 else 0.0
    else:
        p_value = float(stats.ttest_rel(a, r).pvalue)
    holds_zero = not (cell.low > 0 or cell.high < 0)
    return PairedDifference(
        metric=metric,
        difference=cell.mean,
        low=cell.low,
        high=cell.high,
        p_value=p_value,
        per_seed=tuple(float(x) for x in d),
        resamples=0,
        confidence=confidence,
        seeds_needed=seeds_needed(d, alpha=1 - confidence) if holds_zero else None,
    )


def _resampled_differences(
    rng: np.random.Generator, d: np.ndarray, y: np.ndarray, count: int, metric: str
) -> np.ndarray:
    """`count` replicates of metric(A) - metric(R) on one seed's test samples drawn with replacement.

    `d` is correct(A) - correct(R) per sample (-1, 0, 1) and `y` the class index per sample: a
    difference of accuracies is the mean of d, a difference of balanced accuracies the mean over
    the classes drawn of each class's mean of d.
    """
    n = d.size
    out = np.empty(count)
    rows = max(1, _CHUNK_INDICES // n)
    n_classes = int(y.max()) + 1
    for start in range(0, count, rows):
        m = min(rows, count - start)
        idx = rng.integers(n, size=(m, n))
        if metric == "accuracy":
            out[start : start + m] = d[idx].mean(axis=1)
            continue
        key = (np.arange(m)[:, None] * n_classes + y[idx]).ravel()
        counts = np.bincount(key, minlength=m * n_classes).reshape(m, n_classes)
        sums = np.bincount(key, weights=d[idx].ravel(), minlength=m * n_classes).reshape(m, n_classes)
        present = counts > 0
        recall = np.divide(sums, counts, out=np.zeros_like(sums), where=present)
        out[start : start + m] = recall.sum(axis=1) / present.sum(axis=1)
    return out


def seeds_needed(per_seed_differences: Sequence[float], alpha: float = 0.05, power: float = 0.8) -> int | None:
    """Seeds a paired difference of the observed size would need to be told from 0.

    n = ceil(((z_{1-alpha/2} + z_{power}) · sd / |d|)^2), with d the mean and sd the standard
    deviation (ddof=1) of the per-seed paired differences: the normal-approximation sample
    size of a two-sided paired test (Chow, Shao & Wang 2008, Sample Size Calculations in
    Clinical Research, 2nd ed., section 3.1). It is a planning figure, not a promise: sd from
    a few seeds is itself uncertain, and the observed d may be smaller or larger than the true.

    Returns:
        At least 2; None when fewer than two seeds give no sd, or when d is 0 (no number of
        seeds separates a difference of 0).
    """
    from scipy import stats

    x = np.asarray(per_seed_differences, dtype=float)
    if x.size < 2 or x.mean() == 0:
        return None
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    return max(2, math.ceil((z * x.std(ddof=1) / abs(x.mean())) ** 2))


# ---------------------------------------------------------------- multiple rows: Holm


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979, Scand. J. Statist. 6:65-70).

    With the m p-values sorted, p_(1) <= ... <= p_(m), the adjusted value of the i-th is
    max_{j <= i} min(1, (m - j + 1) · p_(j)): monotone in the sorted order, and rejecting where
    it is <= alpha controls the family-wise error at alpha. NaN entries (rows with no test,
    e.g. the reference row itself) stay NaN and do not count in m.
    """
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    if tested.size == 0:
        return adjusted
    if ((p[tested] < 0) | (p[tested] > 1)).any():
        raise ValueError(f"p-values must lie in [0, 1], got {p}")
    order = tested[np.argsort(p[tested], kind="stable")]
    m = order.size
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


#: the rule the report prints under a table that `mark_rows` marked
RULE = (
    "Each row is compared with the reference row on the same seeds and test samples: the difference is the mean "
    "over seeds, its 95 % interval a bootstrap over seeds and test samples, and its p-value is corrected with "
    "Holm's method across the rows of the table. A row is marked better (or worse) only where the corrected "
    "p-value is at most {alpha:g}; otherwise it ties with the reference, and the table gives the seeds a "
    "difference of the observed size would need."
)


@dataclass(frozen=True)
class RowVerdict:
    """One row of a table against the reference: its difference, Holm-corrected p and the word for it.

    Attributes:
        verdict: "better", "worse" or "tie".
        note: for a tie, why it may not be one (the seeds needed, or a single seed); else "".
    """

    difference: PairedDifference
    adjusted_p: float
    verdict: str
    note: str


def mark_rows(differences: dict[str, PairedDifference], alpha: float = 0.05) -> dict[str, RowVerdict]:
    """Holm's correction across a table's rows (`holm`) and the verdict of each row under `RULE`."""
    names = list(differences)
    adjusted = holm([differences[n].p_value for n in names])
    verdicts = {}
    for name, p in zip(names, adjusted):
        d = differences[name]
        if p <= alpha:
            verdict, note = ("better" if d.difference > 0 else "worse"), ""
        elif d.n_seeds < 2:
            verdict, note = "tie", "one seed: no seed-to-seed spread to judge by"
        elif d.seeds_needed is not None:
            verdict, note = "tie", f"~{d.seeds_needed} seeds would separate a difference of this size"
        else:
            verdict, note = "tie", ""
        verdicts[name] = RowVerdict(d, float(p), verdict, note)
    return verdicts


# ---------------------------------------------------------------- many conditions: ranks, Friedman, Nemenyi


def average_ranks(scores: np.ndarray) -> np.ndarray:
    """Each method's rank averaged over conditions: `scores` is conditions x methods, higher is
    better, rank 1 the best, ties sharing the mean of the ranks they span (Demšar 2006, section 3.2.2)."""
    from scipy import stats

    scores = _score_table(scores)
    return stats.rankdata(-scores, axis=1).mean(axis=0)


@dataclass(frozen=True)
class Friedman:
    """Friedman's test over N conditions x k methods.

    Attributes:
        average_ranks: per method (rank 1 the best).
        chi2, p_value: Friedman's statistic with scipy's correction for ties, on k-1 degrees of freedom.
        f, f_p_value: Iman and Davenport's F from that statistic, on (k-1, (k-1)(N-1)) degrees of freedom.
    """

    average_ranks: tuple[float, ...]
    chi2: float
    p_value: float
    f: float
    f_p_value: float
    n: int
    k: int


def friedman(scores: np.ndarray) -> Friedman:
    """Friedman's test that k methods rank alike over N conditions (rows), with Iman-Davenport's F.

    The statistic is scipy.stats.friedmanchisquare's, which divides Friedman's
    chi2_F = 12N / (k(k+1)) · (sum_j R_j^2 - k(k+1)^2 / 4) (Demšar 2006, JMLR 7:1-30, section
    3.2.2, R_j the average ranks) by the correction for ties 1 - sum(t^3 - t) / (N k (k^2 - 1));
    without ties both agree. Iman-Davenport's less conservative variant follows Demšar's text.
    """
    from scipy import stats

    scores = _score_table(scores)
    n, k = scores.shape
    if k < 3 or n < 2:
        got = f"got {k} methods and {n} conditions"
        raise GaalError(f"Friedman's test needs at least 3 methods and 2 conditions, {got}", field="methods")
    ranks = average_ranks(scores)
    if np.ptp(scores, axis=1).max() == 0:  # every condition a full tie: no evidence of any difference
        return Friedman(tuple(float(r) for r in ranks), 0.0, 1.0, 0.0, 1.0, n, k)
    chi2, p_value = stats.friedmanchisquare(*scores.T)
    f, f_p_value = iman_davenport(float(chi2), n, k)
    return Friedman(tuple(float(r) for r in ranks), float(chi2), float(p_value), f, f_p_value, n, k)


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
    differ by at least CD differ significantly."""
    from scipy import stats

    q = stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2)
    return float(q * math.sqrt(k * (k + 1) / (6 * n)))


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
