"""Statistics for comparing two methods over seeds: intervals over seeds, the paired difference
with its test-set variance, the seeds a difference would need, Holm's correction and the verdict
each row of a table gets. (Ranks across conditions: gaal_cli/analysis/friedman.py.)

Plain inputs (numpy arrays, sequences), plain outputs (frozen dataclasses of floats), no
knowledge of run folders: the report and `gaal compare` gather the numbers, this module only
computes. scipy.stats supplies every distribution (t, noncentral t, normal); what it lacks (the
variance components of a seeds x test-samples table, Holm's step-down) is written here with its
source in the docstring. Every computation is linear in seeds x test samples.

Conventions: a method's score is "higher is better" (accuracy).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gaal_cli.foundation.errors import GaalError

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


# ---------------------------------------------------------------- the paired difference

#: how the seeds met their test samples
SHARED = "one test set shared by every seed"
PER_SEED = "a new test set per seed"
VALUES = "per-seed values only"

#: what an interval rests on; only the first two carry a verdict
SEEDS_AND_TEST_SET = "seeds and the shared test set"
SEEDS = "seeds (each with its own test set)"
SEED_VALUES = "the seeds' values alone (the test set unseen)"
ONE_SEED = "test-sample noise only: one seed, so the training randomness is not measured"
NO_SPREAD = "test-sample noise only: every seed gives the same difference, so their spread is not measured"
NOTHING = "nothing to judge: no seed shows any difference"
BLIND = "the seeds' values alone, blind to the test set every seed shares (no verdict: it would be liberal)"
JUDGED = (SEEDS_AND_TEST_SET, SEEDS, SEED_VALUES)
#: per-seed differences closer than this are the same difference (accuracies are multiples of 1/n;
#: 0.80 - 0.78 and 0.82 - 0.80 differ in the 17th digit)
SAME = 1e-9


@dataclass(frozen=True)
class PairedDifference:
    """Method A minus reference R on one metric, over paired seeds.

    Attributes:
        difference: the mean over seeds of metric(A) - metric(R) on the test set.
        low, high: its two-sided Student-t interval (`confidence`) on `df` degrees of freedom.
        p_value: two-sided, for "no difference" (before any multiplicity correction); NaN where
            the data carry no verdict (`judged` is False).
        per_seed: the observed difference of each seed.
        design: SHARED, PER_SEED or VALUES (how the seeds met their test samples).
        basis: what the interval rests on (SEEDS_AND_TEST_SET, SEEDS, SEED_VALUES, ONE_SEED,
            NO_SPREAD, NOTHING).
        seed_variance: the variance of one seed's difference on a fixed test set (for PER_SEED,
            on its own test set), from the seeds' spread, floored at the test samples' own noise.
        test_variance: the shared test set's share of the mean's variance (0 unless SHARED).
        test_samples: the test samples per seed (0 when unknown: VALUES).
        strata: the classes balanced accuracy averages over (1 for accuracy).
    """

    metric: str
    difference: float
    low: float
    high: float
    p_value: float
    per_seed: tuple[float, ...]
    design: str
    basis: str
    seed_variance: float
    test_variance: float
    df: float
    test_samples: int
    strata: int
    confidence: float

    @property
    def n_seeds(self) -> int:
        return len(self.per_seed)

    @property
    def judged(self) -> bool:
        """Whether the data can carry a verdict: at least two seeds that do not all agree."""
        return self.basis in JUDGED

    @property
    def significant(self) -> bool:
        """The interval excludes 0 and a verdict may be drawn (before Holm, which the report applies)."""
        return self.judged and (self.low > 0 or self.high < 0)


def paired_difference(
    a_correct: Sequence[np.ndarray],
    r_correct: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    metric: str = "accuracy",
    *,
    shared: bool,
    confidence: float = 0.95,
) -> PairedDifference:
    """Method A minus reference R, paired by seed and by test sample, with the test set's variance.

    Seed s of A and of R were trained on the same split and tested on the same samples
    (`a_correct[s]`, `r_correct[s]`, `labels[s]` aligned sample by sample). The difference of a
    seed is a weighted mean over its test samples of d = correct(A) - correct(R) (weights 1/n for
    accuracy, 1/(K n_c) for balanced accuracy); the estimate is its mean over the seeds.

    Its variance follows the design (Satterthwaite 1946, Biometrics Bull. 2:110 for the degrees
    of freedom of a sum of mean squares):

    - a new test set per seed (`shared=False`): the seeds' differences are independent, each
      carrying its own test set's noise, so the variance is s^2 / S over the S seeds: the paired
      t test on per-seed differences (Student; Dietterich 1998, Neural Comput. 10:1895), exact
      for normal seeds at any S >= 2, where a bootstrap over 3 seeds understates the spread.
    - one test set shared by every seed (`shared=True`, e.g. HAM10000, DVM): the seeds x samples
      table is a crossed random-effects design (Owen 2007, Ann. Appl. Stat. 1:110, "The pigeonhole
      bootstrap"; Clark 1973, J. Verbal Learn. Verbal Behav. 12:335, on treating the items as
      fixed): var = s^2 / S + sigma^2_item / n, where the second term, the test set's own share, does
      not shrink with seeds. sigma^2_item is the ANOVA estimate, the mean covariance across seeds of
      the same sample's d (within class for balanced accuracy), truncated at 0; its degrees of
      freedom come from Satterthwaite's formula. The per-seed spread s^2 is floored at the test
      samples' residual noise, below which it cannot truly lie.

    The interval is Student's t on those degrees of freedom; benchmarks/calibration.py shows its
    false-positive rate and coverage against simulated seeds and test sets (README table).
    One seed, or seeds that all give the same difference, carry no measure of the training
    randomness: the interval then rests on the test samples alone, the p-value is NaN and no
    verdict is drawn (`judged` is False).

    Args:
        a_correct, r_correct: per seed, a bool vector: did A (R) get each test sample right.
        labels: per seed, the test samples' classes (balanced accuracy's strata).
        shared: whether every seed was tested on the same samples, in the same order (the
            caller aligns them; their labels must then agree).

    Raises:
        GaalError: no seeds, vectors of different lengths, an unknown metric, or shared test
            sets whose lengths or labels differ between seeds.
    """
    contributions, strata = _contributions(a_correct, r_correct, labels, metric, shared)
    per_seed = np.array([e.mean() for e in contributions])
    n = min(e.size for e in contributions)
    centred = [_centred(e, s) for e, s in zip(contributions, strata)]
    k = int(max(s.max() for s in strata)) + 1
    # the variance of one seed's difference from its test samples alone (mean squared deviation / (n - K))
    within = np.array([float(x @ x) / (x.size * max(1, x.size - k)) for x in centred])
    base = {"metric": metric, "per_seed": tuple(float(v) for v in per_seed), "test_samples": n, "strata": k}
    design = SHARED if shared else PER_SEED
    if len(per_seed) == 1:
        return _result(**base, design=design, basis=ONE_SEED, seed_var=within[0], test_var=0.0,
                       df=n - k, confidence=confidence)  # fmt: skip
    if shared:
        seed_var, test_var, df = _crossed_components(per_seed, np.vstack(centred), k)
    else:
        seed_var, test_var, df = float(per_seed.var(ddof=1)), 0.0, len(per_seed) - 1
    if not any(e.any() for e in contributions):
        basis = NOTHING
    elif np.ptp(per_seed) < SAME:
        basis = NO_SPREAD
        if not shared:  # what its own test samples alone say a seed's difference varies by
            seed_var = float(within.mean())
    else:
        basis = SEEDS_AND_TEST_SET if shared else SEEDS
    return _result(**base, design=design, basis=basis, seed_var=seed_var, test_var=test_var, df=df,
                   confidence=confidence)  # fmt: skip


def _contributions(a_correct, r_correct, labels, metric, shared) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per seed, each test sample's share of the difference scaled so that the seed's difference is
    its mean (n · w_i · d_i), and each sample's stratum (its class for balanced accuracy, else 0)."""
    if metric not in METRICS:
        raise GaalError(f"unknown metric '{metric}'; expected one of {', '.join(METRICS)}", field="metric")
    if not len(a_correct) or not len(a_correct) == len(r_correct) == len(labels):
        counts = f"{len(a_correct)}, {len(r_correct)}, {len(labels)}"
        raise GaalError(f"expected the same number (> 0) of seeds for A, R and the labels, got {counts}", field="seeds")
    contributions, strata = [], []
    for s, (a, r, y) in enumerate(zip(a_correct, r_correct, labels)):
        a, r, y = np.asarray(a, dtype=bool), np.asarray(r, dtype=bool), np.asarray(y)
        if not (a.ndim == r.ndim == y.ndim == 1) or not a.size == r.size == y.size > 0:
            shapes = f"{a.shape}, {r.shape}, {y.shape}"
            raise GaalError(f"seed {s}: expected three vectors of one length (> 0), got {shapes}", field="seeds")
        if shared and s and (y.shape != np.shape(labels[0]) or (y != np.asarray(labels[0])).any()):
            raise GaalError(
                f"seed {s}: a shared test set must hold the same samples with the same labels in every seed",
                field="labels",
            )
        d = a.astype(float) - r.astype(float)
        if metric == "accuracy":
            contributions.append(d)
            strata.append(np.zeros(d.size, dtype=np.int64))
            continue
        _, stratum, counts = np.unique(y, return_inverse=True, return_counts=True)
        contributions.append(d * d.size / (counts.size * counts[stratum]))
        strata.append(stratum)
    return contributions, strata


def _centred(e: np.ndarray, stratum: np.ndarray) -> np.ndarray:
    """`e` minus its mean within each stratum."""
    sums = np.bincount(stratum, weights=e)
    return e - (sums / np.bincount(stratum))[stratum]


def _crossed_components(per_seed: np.ndarray, x: np.ndarray, k: int) -> tuple[float, float, float]:
    """(seed variance, test-set variance of the mean, degrees of freedom) of a seeds x samples
    table `x` (centred per seed and stratum), by the two-way ANOVA without replication.

    With P = sum x^2 and C = sum over samples of the cross products of different seeds, the mean
    squares for samples and residual are MS_i = (P + C) / (S (n-K)) and MS_r = ((S-1) P - C) /
    (S (S-1) (n-K)); (MS_i - MS_r) / S = C / (S (S-1) (n-K)) estimates the samples' variance
    component, MS_r the residual one, and a seed's difference varies by at least MS_r / n
    (negative components truncated at 0: Searle, Casella & McCulloch 1992, Variance
    Components, section 4.7). The degrees of freedom are Satterthwaite's for that sum of mean
    squares, with the seed variance taken at its median upper bound s^2 (S-1) / chi2_{0.5, S-1}:
    plugged in as estimated from 2 or 3 seeds, an underestimate inflates them (benchmarks/
    calibration.py measured 6.9 % false positives at 3 seeds where seeds dominate; 6.1 % so).
    """
    from scipy import stats

    s, n = x.shape
    dof = max(1, n - k)
    p = float(np.einsum("ij,ij->", x, x))
    column = x.sum(axis=0)
    c = float(column @ column) - p
    ms_items, ms_residual = (p + c) / (s * dof), ((s - 1) * p - c) / (s * (s - 1) * dof)
    seed_var = max(float(per_seed.var(ddof=1)), ms_residual / n)
    test_var = max(0.0, c / (s * (s - 1) * dof) / n)
    if test_var == 0:
        return seed_var, 0.0, float(s - 1)
    seed_term = max(seed_var * (s - 1) / float(stats.chi2.ppf(0.5, s - 1)), ms_residual / n) / s
    test_terms = (ms_items / (n * s)) ** 2 / dof + (ms_residual / (n * s)) ** 2 / ((s - 1) * dof)
    return seed_var, test_var, float((seed_term + test_var) ** 2 / (seed_term**2 / (s - 1) + test_terms))


def _result(
    *, metric, per_seed, design, basis, seed_var, test_var, df, test_samples, strata, confidence
) -> PairedDifference:
    """The interval and p-value of Student's t on `df` degrees of freedom for the mean of `per_seed`."""
    from scipy import stats

    difference = float(np.mean(per_seed))
    se = math.sqrt(seed_var / len(per_seed) + test_var)
    p_value = math.nan
    if not math.isfinite(se):  # one seed's value: no spread at all
        low = high = math.nan
    elif se == 0:  # every sample of every seed the same difference
        low = high = difference
    else:
        half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
        low, high = difference - half, difference + half
        if basis in JUDGED:
            p_value = float(2 * stats.t.sf(abs(difference) / se, df))
    return PairedDifference(
        metric, difference, float(low), float(high), p_value, per_seed, design, basis,
        float(seed_var), float(test_var), float(df), int(test_samples), int(strata), confidence,
    )  # fmt: skip


def paired_t(
    a_values: Sequence[float], r_values: Sequence[float], metric: str, *, shared: bool = False,
    confidence: float = 0.95,
) -> PairedDifference:  # fmt: skip
    """Paired difference from per-seed metric values only: the paired t test and interval.

    For runs without a predictions file (older runs keep only their report.json): the mean of the
    per-seed differences, its Student-t interval (`mean_interval`) and the two-sided p-value (as
    scipy.stats.ttest_rel). It sees the seeds' spread but not the test samples: exact where each
    seed has its own test set, liberal where every seed shares one (it leaves out that test
    set's variance: benchmarks/calibration.py measured 10 % false positives at 5 seeds, 18 % at
    10), so with `shared` it draws no verdict (basis BLIND). One seed, or seeds whose
    differences all agree (common with discrete accuracies), carry no verdict either: NaN p-value.
    """
    a, r = np.asarray(a_values, dtype=float), np.asarray(r_values, dtype=float)
    if a.ndim != 1 or a.shape != r.shape or a.size == 0:
        raise GaalError(
            f"expected per-seed values of A and R paired by seed, got {a.shape} and {r.shape}", field="seeds"
        )
    d = a - r
    base = {"metric": metric, "per_seed": tuple(float(x) for x in d), "design": VALUES, "test_var": 0.0,
            "test_samples": 0, "strata": 1, "confidence": confidence}  # fmt: skip
    if d.size == 1:
        return _result(**base, basis=ONE_SEED, seed_var=math.nan, df=math.nan)
    if np.ptp(d) < SAME:
        return _result(**base, basis=NOTHING if abs(d[0]) < SAME else NO_SPREAD, seed_var=0.0, df=d.size - 1)
    return _result(**base, basis=BLIND if shared else SEED_VALUES, seed_var=float(d.var(ddof=1)), df=d.size - 1)


# ---------------------------------------------------------------- how many seeds a difference needs

#: the power a plan aims at, and the most seeds it searches
POWER = 0.8
MAX_SEEDS = 1000


@dataclass(frozen=True)
class SeedPlan:
    """What a difference of the observed size would need to be told from 0.

    Attributes:
        seeds: the seeds needed on this test set; None where no number would do (`test_samples`
            then says what would) or where it cannot be said (`why`).
        test_samples: where the shared test set itself is too small: the test size at which
            enough seeds could.
        alpha: the level the plan is for (the verdict's own, Holm's step for the row).
        why: why nothing can be said (one seed, a difference of 0, no spread), else "".
    """

    seeds: int | None
    test_samples: int | None
    alpha: float
    why: str = ""

    def short(self) -> str:
        """For a table cell: `~14 seeds`, `>1000 seeds`, `test set too small: ~9,000 samples`, or ""."""
        if self.why:
            return ""
        if self.seeds is not None:
            return f">{MAX_SEEDS} seeds" if self.seeds > MAX_SEEDS else f"~{self.seeds} seeds"
        return f"test set too small: ~{self.test_samples:,} samples"

    def text(self, n_test: int = 0) -> str:
        if self.why:
            return self.why
        if self.seeds is not None:
            more = f"more than {MAX_SEEDS}" if self.seeds > MAX_SEEDS else f"~{self.seeds}"
            return f"{more} seeds"
        here = f" of {n_test:,} samples" if n_test else ""
        return f"no number of seeds on this test set{here}; ~{self.test_samples:,} test samples could"


def seeds_needed(d: PairedDifference, alpha: float = 0.05, power: float = POWER) -> SeedPlan:
    """The seeds a true difference of the observed size would need for the paired test of
    `paired_difference` to find it with probability `power` at level `alpha`.

    The exact power of the paired t test: with S seeds the statistic follows a noncentral t with
    noncentrality |d| / sqrt(var_seed / S + var_test) on the design's degrees of freedom (S - 1,
    or Satterthwaite's with a shared test set), and the power is P(|T| > t_{1-alpha/2})
    (scipy.stats.nct; e.g. Chow, Shao & Wang 2008, Sample Size Calculations in Clinical
    Research, 2nd ed., section 3.1). The smallest S >= 2 with that power is returned.

    A shared test set puts a floor under the variance (var_test does not shrink with seeds):
    where even infinitely many seeds would not reach the power, `seeds` is None and
    `test_samples` is the test size n' at which they could, (z_{1-alpha/2} + z_power)^2 ·
    var_test · n / d^2. It is a planning figure, not a promise: the variances come from the few
    seeds at hand, and the true difference may be smaller or larger than the observed.
    """
    from scipy import stats

    if d.n_seeds < 2:
        return SeedPlan(None, None, alpha, "1 seed: its spread over seeds is unknown")
    if d.difference == 0 or d.basis == NOTHING:
        return SeedPlan(None, None, alpha, "no difference to separate")
    if d.basis == NO_SPREAD:
        return SeedPlan(None, None, alpha, "no spread over seeds to plan from")
    effect = abs(d.difference)
    z = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)
    if d.test_variance and effect**2 <= z**2 * d.test_variance:
        floor = math.ceil(z**2 * d.test_variance * d.test_samples / effect**2)
        return SeedPlan(None, floor + 1, alpha)
    seeds = np.arange(2, MAX_SEEDS + 1)
    seed_term = d.seed_variance / seeds
    var = seed_term + d.test_variance
    if d.test_variance:
        test_dof = max(1, d.test_samples - d.strata)
        df = var**2 / (seed_term**2 / (seeds - 1) + d.test_variance**2 / test_dof)
    else:
        df = seeds - 1.0
    critical = stats.t.ppf(1 - alpha / 2, df)
    noncentrality = effect / np.sqrt(var)
    reached = stats.nct.sf(critical, df, noncentrality) + stats.nct.cdf(-critical, df, noncentrality) >= power
    return SeedPlan(int(seeds[np.argmax(reached)]) if reached.any() else MAX_SEEDS + 1, None, alpha)


# ---------------------------------------------------------------- multiple rows: Holm


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm 1979, Scand. J. Statist. 6:65-70).

    With the m p-values sorted, p_(1) <= ... <= p_(m), the adjusted value of the i-th is
    max_{j <= i} min(1, (m - j + 1) · p_(j)): monotone in the sorted order, and rejecting where
    it is <= alpha controls the family-wise error at alpha. NaN entries (rows with no test,
    e.g. one seed) stay NaN and do not count in m.
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


def holm_levels(p_values: Sequence[float], alpha: float) -> np.ndarray:
    """The level Holm's procedure compares each raw p-value with: alpha / (m - j + 1) for the
    j-th smallest of the m tested (NaN for the untested)."""
    p = np.asarray(p_values, dtype=float)
    levels = np.full(p.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    levels[order] = alpha / (order.size - np.arange(order.size))
    return levels


#: the rule the report prints under a table that `mark_rows` marked
RULE = (
    "Each row is compared with the reference row on the same seeds (and, where both kept their predictions, the "
    "same test samples): the difference is the mean over seeds; its 95 % interval and p-value are Student's t on "
    "the per-seed differences, plus, where every seed shares one test set, that test set's own variance "
    "(benchmarks/calibration.py, README). The p-value is corrected with Holm's method across the rows of the "
    "table. A row is marked better (▲) or worse (▼) only where the corrected p-value is at most {alpha:g} and "
    "at least two seeds differ; with one seed, or seeds that all give the same difference, the interval is the "
    "test samples' noise alone and the row gets no mark (·). Otherwise it ties with the reference (=), and the "
    "cell gives the seeds a difference of the observed size would need at the row's Holm level (80 % power)."
)


@dataclass(frozen=True)
class RowVerdict:
    """One row of a table against the reference: its difference, Holm-corrected p and the word for it.

    Attributes:
        verdict: "better", "worse", "tie" or "no verdict".
        plan: for a tie, the seeds (or test samples) a difference of this size would need.
        note: for a tie or no verdict, what it rests on or needs; else "".
    """

    difference: PairedDifference
    adjusted_p: float
    verdict: str
    plan: SeedPlan | None
    note: str


def mark_rows(differences: dict[str, PairedDifference], alpha: float = 0.05) -> dict[str, RowVerdict]:
    """Holm's correction across a table's rows (`holm`) and the verdict of each row under `RULE`;
    a tie's plan is made at the level Holm compared that row's p-value with (`holm_levels`)."""
    names = list(differences)
    raw = [differences[n].p_value if differences[n].judged else math.nan for n in names]
    adjusted, levels = holm(raw), holm_levels(raw, alpha)
    verdicts = {}
    for name, p, level in zip(names, adjusted, levels):
        d = differences[name]
        if not d.judged:
            verdicts[name] = RowVerdict(d, float(p), "no verdict", None, d.basis)
        elif p <= alpha:
            verdicts[name] = RowVerdict(d, float(p), "better" if d.difference > 0 else "worse", None, "")
        else:
            plan = seeds_needed(d, float(level))
            verdicts[name] = RowVerdict(d, float(p), "tie", plan, plan.text(d.test_samples))
    return verdicts
