"""Statistics (gaal_cli/analysis/stats.py), the predictions file (gaal_cli/runs/predictions_file.py) and the
critical-difference diagram (gaal_cli/analysis/cd_diagram.py), on cases whose answers are known by hand
or published."""

from __future__ import annotations

import itertools
import json
import math
import os
import struct

import numpy as np
import pytest
import safetensors
import safetensors.numpy
from scipy import stats as sp

from gaal_cli.analysis import friedman as rank_tests
from gaal_cli.analysis import stats
from gaal_cli.analysis.cd_diagram import cd_diagram
from gaal_cli.foundation.errors import GaalError
from gaal_cli.runs import predictions_file as pf

# ---------------------------------------------------------------- intervals over seeds


def test_mean_interval_is_the_t_interval():
    cell = stats.mean_interval([1.0, 2.0, 3.0])
    # s = 1, t_{0.975, 2} = 4.302653 (any t table): 2 ± 4.302653 / sqrt(3)
    assert cell.mean == 2.0 and cell.n == 3
    assert cell.low == pytest.approx(2 - 4.302653 / math.sqrt(3), abs=1e-6)
    assert cell.high == pytest.approx(2 + 4.302653 / math.sqrt(3), abs=1e-6)
    one = stats.mean_interval([0.7])
    assert one.mean == 0.7 and math.isnan(one.low) and math.isnan(one.high)


def test_metrics_from_correct_flags():
    labels = np.array([0, 0, 0, 1])
    correct = np.array([True, True, False, False])
    assert stats.accuracy(correct, labels) == 0.5
    assert stats.balanced_accuracy(correct, labels) == pytest.approx((2 / 3 + 0) / 2)


# ---------------------------------------------------------------- the paired difference


def _seeds(n_seeds, n, value):
    return [np.full(n, value, dtype=bool) for _ in range(n_seeds)]


def _experiment(seeds, n, shared, seed=0, shift=0.0):
    """Correct flags of A and R: a sample's difficulty shared by both (and by every seed when
    `shared`), each method's own noise."""
    rng = np.random.default_rng(seed)
    item = rng.normal(0, 1.3, (1 if shared else seeds, n))
    a = [(0.9 + shift + item[s % item.shape[0]] + rng.normal(0, 0.45, n)) > 0 for s in range(seeds)]
    r = [(0.9 + item[s % item.shape[0]] + rng.normal(0, 0.45, n)) > 0 for s in range(seeds)]
    return a, r, [rng.integers(3, size=n)] * seeds if shared else [rng.integers(3, size=n) for _ in range(seeds)]


def test_identical_runs_differ_by_exactly_nothing_and_carry_no_verdict():
    a, _, labels = _experiment(3, 300, shared=True)
    for metric in stats.METRICS:
        d = stats.paired_difference(a, a, labels, metric, shared=True)
        assert (d.difference, d.low, d.high) == (0.0, 0.0, 0.0) and math.isnan(d.p_value)
        assert d.basis == stats.NOTHING and not d.judged and not d.significant
        assert stats.seeds_needed(d).seeds is None


def test_a_new_test_set_per_seed_is_the_paired_t_test_on_per_seed_differences():
    a, r, labels = _experiment(4, 200, shared=False, shift=0.1)
    d = stats.paired_difference(a, r, labels, "accuracy", shared=False)
    per_a, per_r = [x.mean() for x in a], [x.mean() for x in r]
    reference = sp.ttest_rel(per_a, per_r)
    interval = reference.confidence_interval(0.95)
    assert d.p_value == pytest.approx(reference.pvalue) and d.df == 3
    assert (d.low, d.high) == pytest.approx((interval.low, interval.high))
    assert d.design == stats.PER_SEED and d.basis == stats.SEEDS and d.test_variance == 0


def _two_way_anova(x):
    """Mean squares of a seeds x samples table by the textbook two-way ANOVA without replication."""
    s, n = x.shape
    grand, seed_means, item_means = x.mean(), x.mean(axis=1), x.mean(axis=0)
    ms_seed = n * ((seed_means - grand) ** 2).sum() / (s - 1)
    ms_item = s * ((item_means - grand) ** 2).sum() / (n - 1)
    residual = x - seed_means[:, None] - item_means[None, :] + grand
    return ms_seed, ms_item, (residual**2).sum() / ((s - 1) * (n - 1))


def test_a_shared_test_set_adds_its_variance_component_from_the_two_way_anova():
    a, r, labels = _experiment(5, 400, shared=True, seed=3)
    d = stats.paired_difference(a, r, labels, "accuracy", shared=True)
    x = np.array(a, dtype=float) - np.array(r, dtype=float)
    ms_seed, ms_item, ms_residual = _two_way_anova(x)
    s, n = x.shape
    assert ms_item > ms_residual and ms_seed > ms_residual  # neither component truncated here
    # var(mean) = sigma2_seed / S + sigma2_item / n + sigma2_e / (nS) = (MS_s + MS_i - MS_r) / (nS)
    assert d.seed_variance / s + d.test_variance == pytest.approx((ms_seed + ms_item - ms_residual) / (n * s))
    assert d.test_variance == pytest.approx((ms_item - ms_residual) / (n * s))
    assert d.design == stats.SHARED and d.basis == stats.SEEDS_AND_TEST_SET and 4 < d.df
    se = math.sqrt(d.seed_variance / s + d.test_variance)
    assert d.p_value == pytest.approx(2 * sp.t.sf(abs(d.difference) / se, d.df))


def test_a_shared_test_set_without_a_sample_effect_falls_back_to_the_seeds():
    rng = np.random.default_rng(1)
    labels = [np.zeros(500, dtype=int)] * 4
    a = [rng.random(500) < 0.8 for _ in range(4)]  # each seed's samples right or wrong at random
    r = [rng.random(500) < 0.8 for _ in range(4)]
    d = stats.paired_difference(a, r, labels, shared=True)
    x = np.array(a, dtype=float) - np.array(r, dtype=float)
    if _two_way_anova(x)[1] <= _two_way_anova(x)[2]:  # no sample effect: truncated at 0
        assert d.test_variance == 0 and d.df == 3


def test_one_seed_rests_on_the_test_samples_and_carries_no_verdict():
    n = 400
    r = np.arange(n) % 2 == 0
    a = r.copy()
    a[1:121:2] = True  # 60 samples only A gets right: d = 0.15, var(d) = 0.15 · 0.85
    d = stats.paired_difference([a], [r], [np.zeros(n, dtype=int)], shared=False)
    assert d.difference == pytest.approx(0.15) and d.basis == stats.ONE_SEED
    half = sp.t.ppf(0.975, n - 1) * math.sqrt(0.15 * 0.85 / (n - 1))
    assert (d.low, d.high) == pytest.approx((0.15 - half, 0.15 + half))
    assert math.isnan(d.p_value) and not d.significant
    assert "1 seed" in stats.seeds_needed(d).text()


def test_seeds_that_all_agree_carry_no_verdict():
    # both seeds: A right on the first 40 of 100 samples, R on the first 30: the same +0.1 twice
    a = [np.arange(100) < 40] * 2
    r = [np.arange(100) < 30] * 2
    for shared in (True, False):
        d = stats.paired_difference(a, r, [np.zeros(100, dtype=int)] * 2, shared=shared)
        assert d.difference == pytest.approx(0.1) and d.basis == stats.NO_SPREAD
        assert math.isnan(d.p_value) and not d.significant and d.low < 0.1 < d.high
    verdict = stats.mark_rows({"gaal": d})["gaal"]
    assert verdict.verdict == "no verdict" and "same difference" in verdict.note


def test_balanced_accuracy_weighs_classes_equally():
    # 90 samples of class 0 that both get right, 10 of class 1 that only A gets right
    labels = np.array([0] * 90 + [1] * 10)
    a, r = np.ones(100, dtype=bool), labels == 0
    acc = stats.paired_difference([a, a], [r, r], [labels, labels], "accuracy", shared=True)
    bal = stats.paired_difference([a, a], [r, r], [labels, labels], "balanced_accuracy", shared=True)
    assert acc.difference == pytest.approx(0.1) and bal.difference == pytest.approx(0.5)
    a2, r2, y2 = _experiment(3, 300, shared=False, seed=4)
    d = stats.paired_difference(a2, r2, y2, "balanced_accuracy", shared=False)
    expected = [stats.balanced_accuracy(x, y) - stats.balanced_accuracy(z, y) for x, z, y in zip(a2, r2, y2)]
    assert d.per_seed == pytest.approx(tuple(expected)) and d.strata == 3


def test_paired_difference_refuses_unpaired_inputs():
    with pytest.raises(GaalError, match="same number"):
        stats.paired_difference(_seeds(2, 10, True), _seeds(3, 10, True), [np.zeros(10)] * 2, shared=False)
    with pytest.raises(GaalError, match="seed 1"):
        stats.paired_difference(
            _seeds(2, 10, True), [np.ones(10, bool), np.ones(9, bool)], [np.zeros(10)] * 2, shared=False
        )
    with pytest.raises(GaalError, match="unknown metric 'f1'"):
        stats.paired_difference(_seeds(1, 10, True), _seeds(1, 10, True), [np.zeros(10)], "f1", shared=False)
    with pytest.raises(GaalError, match="same labels"):
        stats.paired_difference(_seeds(2, 3, True), _seeds(2, 3, True), [np.zeros(3), np.ones(3)], shared=True)


def test_the_work_is_linear_in_seeds_and_samples():
    # 3,000 seeds (issue 29: the bootstrap took 286 s and 0.9 GB there); a few vectorised passes
    # over the seeds x samples table, whatever the number of seeds
    rng = np.random.default_rng(2)
    a = list(rng.random((3000, 500)) < 0.8)
    d = stats.paired_difference(a, a[::-1], [np.zeros(500, dtype=int)] * 3000, shared=True)
    assert d.n_seeds == 3000 and abs(d.difference) < 1e-12


def test_paired_t_from_per_seed_values():
    d = stats.paired_t([0.80, 0.82, 0.79], [0.78, 0.80, 0.79], "accuracy")
    # differences 0.02, 0.02, 0: t = 2 on 2 degrees of freedom, whose two-sided p is 1 - 2 / sqrt(6)
    assert d.difference == pytest.approx(0.02 * 2 / 3) and d.design == stats.VALUES
    assert d.p_value == pytest.approx(1 - 2 / math.sqrt(6))
    cell = stats.mean_interval([0.02, 0.02, 0.0])
    assert (d.low, d.high) == pytest.approx((cell.low, cell.high))
    assert math.isnan(stats.paired_t([0.8], [0.7], "accuracy").p_value)
    # every seed the same difference (discrete accuracies do this): no spread, so no p-value, never 0
    zero_spread = stats.paired_t([0.75, 0.5], [0.5, 0.25], "accuracy")
    assert math.isnan(zero_spread.p_value) and zero_spread.basis == stats.NO_SPREAD
    assert stats.mark_rows({"gaal": zero_spread})["gaal"].verdict == "no verdict"
    # 0.80 - 0.78 and 0.82 - 0.80 differ in the 17th digit: still the same difference
    assert math.isnan(stats.paired_t([0.80, 0.82], [0.78, 0.80], "accuracy").p_value)
    assert stats.paired_t([0.8, 0.9], [0.8, 0.9], "accuracy").basis == stats.NOTHING
    # on a test set every seed shares, per-seed values cannot see it: no verdict
    blind = stats.paired_t([0.80, 0.85, 0.90], [0.70, 0.72, 0.71], "accuracy", shared=True)
    assert blind.basis == stats.BLIND and math.isnan(blind.p_value) and not blind.significant


# ---------------------------------------------------------------- the seeds a difference needs


def _per_seed(effect_over_sd, seeds=3, test_variance=0.0, n=0):
    sd = 0.01
    return stats.PairedDifference(
        "accuracy", effect_over_sd * sd, -1.0, 1.0, 0.5, (effect_over_sd * sd,) * seeds, stats.PER_SEED,
        stats.SEEDS, sd**2, test_variance, seeds - 1.0, n, 1, 0.95,
    )  # fmt: skip


@pytest.mark.parametrize(("effect", "seeds"), [(1.0, 10), (1.5, 6), (2.0, 5)])
def test_seeds_needed_is_the_exact_paired_t_sample_size(effect, seeds):
    # the smallest n whose two-sided paired t test at 0.05 has power 0.8 against effect / sd, from
    # the noncentral t (the normal approximation the issue found said 8, 4 and 2)
    def power(n):
        critical = sp.t.ppf(0.975, n - 1)
        return sp.nct.sf(critical, n - 1, effect * math.sqrt(n)) + sp.nct.cdf(-critical, n - 1, effect * math.sqrt(n))

    assert power(seeds) >= 0.8 > power(seeds - 1)
    plan = stats.seeds_needed(_per_seed(effect))
    assert plan.seeds == seeds and plan.test_samples is None and plan.text() == f"~{seeds} seeds"
    # at a Holm-adjusted level (the first of 3 rows: 0.05 / 3) more seeds are needed
    assert stats.seeds_needed(_per_seed(effect), alpha=0.05 / 3).seeds > seeds


def test_a_test_set_too_small_for_any_number_of_seeds_says_what_test_size_would_do():
    # HAM10000-sized: 2,002 test samples shared by every seed leave a standard error of 0.0037 that
    # no number of seeds removes; a difference of 0.0015 (GAAL - CF, Multi) cannot be separated
    d = _per_seed(0.15, test_variance=0.0037**2, n=2002)
    plan = stats.seeds_needed(d)
    z = sp.norm.ppf(0.975) + sp.norm.ppf(0.8)
    assert plan.seeds is None and plan.test_samples == math.ceil(z**2 * 0.0037**2 * 2002 / 0.0015**2) + 1
    assert plan.text(2002).startswith("no number of seeds on this test set of 2,002 samples; ~")
    assert plan.short().startswith("test set too small: ~")
    # with a test set that size (its variance n / n' as large) seeds could: the plan gives their number
    larger = _per_seed(0.15, test_variance=0.0037**2 * 2002 / (2 * plan.test_samples), n=2 * plan.test_samples)
    assert stats.seeds_needed(larger).seeds is not None


def _difference(value, p, seeds=3, basis=stats.SEEDS):
    return stats.PairedDifference(
        "accuracy", value, value - 0.01, value + 0.01, p, (value, value + 0.01, value - 0.01)[:seeds],
        stats.PER_SEED, basis, 1e-4, 0.0, seeds - 1.0, 200, 1, 0.95,
    )  # fmt: skip


def test_mark_rows_applies_holm_then_the_rule():
    rows = {
        "gaal": _difference(0.02, 0.001),
        "mla": _difference(0.01, 0.04),
        "daft": _difference(-0.03, 0.002),
        "one_seed": _difference(0.01, math.nan, seeds=1, basis=stats.ONE_SEED),
    }
    marked = stats.mark_rows(rows)
    # Holm over the 3 rows with a verdict: 0.001 x3 = 0.003, 0.002 x2 = 0.004, 0.04 x1 -> 0.04
    assert {name: round(v.adjusted_p, 6) for name, v in marked.items() if v.verdict != "no verdict"} == {
        "gaal": 0.003, "mla": 0.04, "daft": 0.004,
    }  # fmt: skip
    assert [marked[n].verdict for n in rows] == ["better", "better", "worse", "no verdict"]
    assert "one seed" in marked["one_seed"].note
    tie = stats.mark_rows({"gaal": _difference(0.02, 0.001), "mla": _difference(0.01, 0.3)})["mla"]
    # the tie's plan is made at the level Holm compared its p with (the second of 2: 0.05 / 1)
    assert tie.verdict == "tie" and tie.plan.alpha == 0.05 and tie.note == tie.plan.text(200)
    assert "Holm" in stats.RULE.format(alpha=0.05)


def test_holm_levels_are_the_step_down_thresholds():
    np.testing.assert_allclose(stats.holm_levels([0.01, 0.04, 0.03, math.nan], 0.05)[:3], [0.05 / 3, 0.05, 0.05 / 2])


# ---------------------------------------------------------------- Holm


def test_holm_by_hand():
    # sorted: 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 = 0.04 -> 0.06 (monotone)
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005, math.nan])
    np.testing.assert_allclose(adjusted[:4], [0.03, 0.06, 0.06, 0.02])
    assert math.isnan(adjusted[4])
    np.testing.assert_allclose(stats.holm([0.5, 0.6]), [1.0, 1.0])


def test_holm_matches_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = np.random.default_rng(0).random(12) ** 3
    np.testing.assert_allclose(stats.holm(p), multitest.multipletests(p, method="holm")[1])


# ---------------------------------------------------------------- Friedman and Nemenyi, Demšar 2006

# Demšar 2006 (JMLR 7:1-30), table 6: AUC of C4.5 with default settings, with m tuned, with cf tuned
# and with both, on 14 data sets (the values as printed, checked against four independent public
# transcriptions of the table). The printed values are rounded to 3 decimals: on 'voting' C4.5+cf
# and C4.5+m+cf both print as 0.975, but the paper's ranks (2.893 and 1.964) count C4.5+cf ahead
# there, so its value is written 0.97501 to break the tie as the unrounded AUCs did.
DEMSAR_METHODS = ["C4.5", "C4.5+m", "C4.5+cf", "C4.5+m+cf"]
DEMSAR_AUC = np.array([
    [0.763, 0.768, 0.771, 0.798],  # adult (sample)
    [0.599, 0.591, 0.590, 0.569],  # breast cancer
    [0.954, 0.971, 0.968, 0.967],  # breast cancer wisconsin
    [0.628, 0.661, 0.654, 0.657],  # cmc
    [0.882, 0.888, 0.886, 0.898],  # ionosphere
    [0.936, 0.931, 0.916, 0.931],  # iris
    [0.661, 0.668, 0.609, 0.685],  # liver disorders
    [0.583, 0.583, 0.563, 0.625],  # lung cancer
    [0.775, 0.838, 0.866, 0.875],  # lymphography
    [1.000, 1.000, 1.000, 1.000],  # mushroom
    [0.940, 0.962, 0.965, 0.962],  # primary tumor
    [0.619, 0.666, 0.614, 0.669],  # rheum
    [0.972, 0.981, 0.97501, 0.975],  # voting
    [0.957, 0.978, 0.946, 0.970],  # wine
])  # fmt: skip


def test_friedman_reproduces_demsar_2006():
    result = rank_tests.friedman(DEMSAR_AUC)
    # section 3.2.2: average ranks 3.143, 2.000, 2.893, 1.964; chi2_F = 9.28; F_F = 3.69
    np.testing.assert_allclose(result.average_ranks, [3.143, 2.000, 2.893, 1.964], atol=5e-4)
    # the paper's chi2_F has no correction for ties; scipy's divides it by 1 - sum(t^3 - t) / (N k (k^2 - 1)),
    # here with a tie of 4 (mushroom) and three ties of 2 (iris, lung cancer, primary tumor)
    ties = 1 - (4**3 - 4 + 3 * (2**3 - 2)) / (14 * 4 * (4**2 - 1))
    assert result.chi2 * ties == pytest.approx(9.28, abs=0.005)
    assert result.chi2_p == pytest.approx(sp.chi2.sf(result.chi2, 3))
    # N = 14 > 10: the verdict uses Iman-Davenport's F, as Demšar recommends; no permutation test
    assert result.p_value == result.f_p and math.isnan(result.permutation_p)
    f, f_p = rank_tests.iman_davenport(9.28, 14, 4)
    assert f == pytest.approx(3.69, abs=0.005)
    assert f_p == pytest.approx(sp.f.sf(f, 3, 39))
    assert result.f == pytest.approx(rank_tests.iman_davenport(result.chi2, 14, 4)[0])


def test_nemenyi_critical_difference_of_demsar_2006():
    # q_0.05 = 2.569 for k = 4 (Demšar's table 5a), CD = 2.569 sqrt(4 · 5 / (6 · 14)) = 1.25
    assert rank_tests.nemenyi_cd(4, 14) / math.sqrt(4 * 5 / (6 * 14)) == pytest.approx(2.569, abs=5e-4)
    assert rank_tests.nemenyi_cd(4, 14) == pytest.approx(1.25, abs=0.005)
    # q_0.10 = 2.291: CD = 1.12
    assert rank_tests.nemenyi_cd(4, 14, alpha=0.10) == pytest.approx(1.12, abs=0.005)


def test_cliques_of_demsar_2006():
    ranks = rank_tests.friedman(DEMSAR_AUC).average_ranks
    # at 0.05 the largest gap (C4.5 against C4.5+m+cf, 1.18) is under CD = 1.25: one group
    assert rank_tests.cliques(ranks, rank_tests.nemenyi_cd(4, 14)) == [(3, 1, 2, 0)]
    # at 0.10 (CD = 1.12) C4.5 falls out of the best two's group
    assert rank_tests.cliques(ranks, rank_tests.nemenyi_cd(4, 14, alpha=0.10)) == [(3, 1, 2), (2, 0)]
    assert rank_tests.cliques([1.0, 2.0, 3.0], 0.5) == []


def test_friedman_with_few_conditions_counts_every_arrangement():
    # 2 conditions x 3 methods: with the first row fixed, the 3! = 6 orders of the second; the
    # statistic sum_j (rank sum_j)^2 is largest (= 2^2 + 4^2 + 6^2) only when both rows agree
    scores = np.array([[0.9, 0.8, 0.7], [0.95, 0.85, 0.6]])
    result = rank_tests.friedman(scores)
    assert result.exact and result.arrangements == 6 and result.permutation_p == pytest.approx(1 / 6)
    assert result.p_value == result.permutation_p and result.p_name == "exact permutation"
    by_hand = [sum(x**2 for x in np.add([1, 2, 3], order)) for order in itertools.permutations([1, 2, 3])]
    assert result.permutation_p == pytest.approx(np.mean(np.array(by_hand) >= 56))
    # 3 conditions x 14 methods: (14!)^2 arrangements, so random ones; a fixed generator, the same p
    rng = np.random.default_rng(0)
    many = rng.random((3, 14))
    drawn = rank_tests.friedman(many)
    assert not drawn.exact and drawn.arrangements == rank_tests.PERMUTATIONS
    assert drawn.permutation_p == rank_tests.friedman(many).permutation_p and 0.05 < drawn.permutation_p < 1
    agreeing = rank_tests.friedman(np.tile(np.arange(14.0), (3, 1)))
    assert agreeing.permutation_p == pytest.approx(1 / (1 + rank_tests.PERMUTATIONS))


def test_friedman_edge_cases():
    assert rank_tests.friedman(np.ones((3, 4))).p_value == 1.0
    with pytest.raises(GaalError, match="at least 3 methods"):
        rank_tests.friedman(DEMSAR_AUC[:, :2])
    with pytest.raises(GaalError, match="finite"):
        rank_tests.friedman(np.full((3, 3), np.nan))
    assert rank_tests.iman_davenport(14 * 3, 14, 4) == (math.inf, 0.0)
    # 2 conditions: for 14 methods the critical difference (14.03) exceeds any rank difference (13)
    assert not rank_tests.cd_reachable(rank_tests.nemenyi_cd(14, 2), 14)
    assert rank_tests.cd_reachable(rank_tests.nemenyi_cd(4, 14), 4)


# ---------------------------------------------------------------- the CD diagram


def test_cd_diagram_of_demsar_2006(tmp_path):
    ranks = rank_tests.friedman(DEMSAR_AUC).average_ranks
    cd = rank_tests.nemenyi_cd(4, 14, alpha=0.10)
    first = cd_diagram(DEMSAR_METHODS, ranks, cd, tmp_path / "a" / "cd", title="Demšar 2006")
    second = cd_diagram(DEMSAR_METHODS, ranks, cd, tmp_path / "b" / "cd.png", title="Demšar 2006")
    assert first.groups == (("C4.5+m+cf", "C4.5+m", "C4.5+cf"), ("C4.5+cf", "C4.5"))
    for suffix in (".png", ".pdf", ".svg"):
        assert (tmp_path / "a" / f"cd{suffix}").stat().st_size > 1000
    svg = (tmp_path / "a" / "cd.svg").read_bytes()
    assert svg == (tmp_path / "b" / "cd.svg").read_bytes()
    assert b"C4.5+m+cf (1.96)" in svg and first.png == tmp_path / "a" / "cd.png" and second.png.exists()


def test_cd_diagram_takes_the_callers_writer(tmp_path):
    written = []

    def save(fig, path):
        written.append((len(fig.axes), path))
        return path

    out = cd_diagram(["a", "b", "c"], [1.0, 2.5, 2.5], 1.0, tmp_path / "cd", save=save)
    assert written == [(1, tmp_path / "cd")] and out.groups == (("b", "c"),)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- the predictions file

HEADS = ("multi", "image", "tabular")


def _write(path, n=200, n_classes=10, seed=0, ids=None, **meta):
    rng = np.random.default_rng(seed)
    ids = [f"images/ISIC_{i:07d}.jpg" for i in range(n)] if ids is None else ids
    labels = np.arange(n) % n_classes
    logits = {h: rng.normal(scale=3, size=(n, n_classes)) for h in HEADS}
    pf.write_predictions(path, ids, labels, logits, {"split": "test", **meta})
    return ids, labels, logits


def test_predictions_round_trip(tmp_path):
    path = tmp_path / pf.FILE_NAME
    ids, labels, logits = _write(path, method="gaal", seed_of_run=3)
    read = pf.read_predictions(path)
    assert read.ids == tuple(ids) and read.heads == HEADS and read.split == "test" and read.n_classes == 10
    assert read.meta == {"method": "gaal", "seed_of_run": 3}
    np.testing.assert_array_equal(read.labels, labels)
    for head in HEADS:
        np.testing.assert_allclose(read.logits(head), logits[head], rtol=1e-3, atol=1e-3)
        np.testing.assert_array_equal(read.correct(head), logits[head].argmax(1) == labels)


def test_predicted_class_survives_float16(tmp_path):
    # 1.0 and 1.0001 are the same float16: the arg-max is kept from the full-precision logits
    path = tmp_path / "p.safetensors"
    pf.write_predictions(path, ["a", "b"], np.array([1, 0]), {"multi": np.array([[1.0, 1.0001], [2.0, 0.0]])})
    read = pf.read_predictions(path)
    assert read.logits("multi")[0, 0] == read.logits("multi")[0, 1]
    np.testing.assert_array_equal(read.correct("multi"), [True, True])


def test_predictions_are_read_lazily(tmp_path, monkeypatch):
    path = tmp_path / pf.FILE_NAME
    _write(path)
    loaded = []
    real = safetensors.safe_open

    class Recording:
        def __init__(self, *args, **kwargs):
            self.inner = real(*args, **kwargs)

        def __enter__(self):
            self.fh = self.inner.__enter__()
            return self

        def __exit__(self, *exc):
            return self.inner.__exit__(*exc)

        def get_tensor(self, name):
            loaded.append(name)
            return self.fh.get_tensor(name)

        def __getattr__(self, name):
            return getattr(self.fh, name)

    monkeypatch.setattr(safetensors, "safe_open", Recording)
    read = pf.read_predictions(path)
    assert len(read.ids) == 200 and loaded == ["labels"]
    read.correct("image")
    read.logits("tabular")
    assert loaded == ["labels", "predicted.image", "logits.tabular"]


def test_predictions_file_size(tmp_path):
    # HAM10000's test split (2,002 samples, 7 classes) and the embedded set's (200, 10), 3 heads each
    ham, embedded = tmp_path / "ham.safetensors", tmp_path / "embedded.safetensors"
    _write(ham, n=2002, n_classes=7)
    _write(embedded, n=200, n_classes=10, ids=[str(i) for i in range(200)])
    print(f"predictions file: HAM10000 {ham.stat().st_size} bytes, embedded {embedded.stat().st_size} bytes")
    assert ham.stat().st_size < 200_000 and embedded.stat().st_size < 20_000


def test_writer_refuses_what_the_reader_would(tmp_path):
    path = tmp_path / "p.safetensors"
    good = {"multi": np.zeros((3, 2))}
    with pytest.raises(GaalError, match="'a' appears more than once"):
        pf.write_predictions(path, ["a", "b", "a"], np.zeros(3, int), good)
    with pytest.raises(GaalError, match=r"shape \(3, 3\); expected \(3, 2\)"):
        pf.write_predictions(path, "abc", np.zeros(3, int), {"multi": np.zeros((3, 2)), "image": np.zeros((3, 3))})
    with pytest.raises(GaalError, match="not finite"):
        pf.write_predictions(path, "abc", np.zeros(3, int), {"multi": np.array([[0, np.nan]] * 3)})
    with pytest.raises(GaalError, match=r"labels of shape \(2,\); expected \(3,\)"):
        pf.write_predictions(path, "abc", np.zeros(2, int), good)
    with pytest.raises(GaalError, match=r"outside \[0, 2\)"):
        pf.write_predictions(path, "abc", np.array([0, 1, 2]), good)
    assert not list(tmp_path.iterdir())


def _forge(path, tensors, **header):
    """A file built by hand, as an attacker or a damaged disk would."""
    base = {"format": pf.FORMAT, "version": pf.VERSION, "split": "test", "n_classes": "2", "heads": '["multi"]',
            "ids": '["a", "b"]', "meta": "{}"}  # fmt: skip
    path.write_bytes(safetensors.numpy.save(tensors, metadata={**base, **header}))
    return path


def _good_tensors():
    return {"labels": np.array([0, 1], np.int16), "predicted.multi": np.array([0, 1], np.int16),
            "logits.multi": np.zeros((2, 2), np.float16)}  # fmt: skip


def _refused(path, field):
    with pytest.raises(GaalError) as caught:
        pf.read_predictions(path).correct("multi")
    message = str(caught.value)
    assert message.startswith(str(path)) and field in message and "\n" not in message
    return message


class Evil:
    """Unpickling this would create a file: proof that loading ran code."""

    marker = None

    def __reduce__(self):
        return (open, (str(Evil.marker), "w"))


def test_hostile_predictions_files_are_refused(tmp_path, monkeypatch):
    # a pickle inside an npz, named as a predictions file: refused, and its code never ran
    Evil.marker = tmp_path / "ran"
    npz = tmp_path / "pickle.safetensors"
    with open(npz, "wb") as fh:
        np.savez(fh, labels=np.array([Evil()], dtype=object))
    _refused(npz, "not a readable safetensors file")
    assert not Evil.marker.exists()
    # a header claiming 2^62 bytes, and a tensor claiming far more data than the file has
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    _refused(huge, "not a readable safetensors file")
    lying = tmp_path / "lying.safetensors"
    header = json.dumps({"labels": {"dtype": "I16", "shape": [10**12], "data_offsets": [0, 2 * 10**12]}}).encode()
    lying.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    _refused(lying, "not a readable safetensors file")
    # a file over the size bound is not opened at all
    big = _forge(tmp_path / "big.safetensors", _good_tensors())
    monkeypatch.setattr(pf, "MAX_BYTES", 100)
    _refused(big, "a predictions file is at most 100")
    monkeypatch.undo()
    # fields of the header
    _refused(_forge(tmp_path / "tag.safetensors", _good_tensors(), format="other"), "field 'format'")
    _refused(_forge(tmp_path / "dup.safetensors", _good_tensors(), ids='["a", "a"]'), "field 'ids'")
    _refused(_forge(tmp_path / "classes.safetensors", _good_tensors(), n_classes="99999999"), "field 'n_classes'")
    _refused(_forge(tmp_path / "head.safetensors", _good_tensors(), heads='["../x"]'), "field 'heads'")
    _refused(_forge(tmp_path / "json.safetensors", _good_tensors(), ids="[not json"), "JSON")
    # tensors: a wrong shape, a wrong dtype, one missing, NaN logits, classes out of range
    wrong = {**_good_tensors(), "logits.multi": np.zeros((2, 3), np.float16)}
    _refused(_forge(tmp_path / "shape.safetensors", wrong), "field 'logits.multi'")
    wrong = {**_good_tensors(), "labels": np.array([0, 1], np.float32)}
    _refused(_forge(tmp_path / "dtype.safetensors", wrong), "field 'labels'")
    wrong = {k: v for k, v in _good_tensors().items() if k != "predicted.multi"}
    _refused(_forge(tmp_path / "missing.safetensors", wrong), "missing ['predicted.multi']")
    wrong = {**_good_tensors(), "labels": np.array([0, 7], np.int16)}
    _refused(_forge(tmp_path / "label.safetensors", wrong), "field 'labels'")
    wrong = {**_good_tensors(), "predicted.multi": np.array([0, -1], np.int16)}
    _refused(_forge(tmp_path / "pred.safetensors", wrong), "field 'predicted.multi'")
    nan = _forge(tmp_path / "nan.safetensors", {**_good_tensors(), "logits.multi": np.full((2, 2), np.nan, np.float16)})
    with pytest.raises(GaalError, match="field 'logits.multi'.*finite"):
        pf.read_predictions(nan).logits("multi")
    # not a regular file, or not there
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    _refused(fifo, "not a regular file")
    _refused(tmp_path / "absent.safetensors", "cannot be read")


def _pair(tmp_path, name, ids, labels, split="test"):
    path = tmp_path / f"{name}.safetensors"
    pf.write_predictions(path, ids, np.asarray(labels), {"multi": np.eye(3)[labels]}, {"split": split})
    return pf.read_predictions(path)


def test_align_pairs_samples_by_id(tmp_path):
    a = _pair(tmp_path, "a", ["x", "y", "z"], [0, 1, 2])
    b = _pair(tmp_path, "b", ["z", "x", "y"], [2, 0, 1])
    ia, ib = pf.align(a, b)
    assert [a.ids[i] for i in ia] == [b.ids[i] for i in ib] == ["x", "y", "z"]
    np.testing.assert_array_equal(a.labels[ia], b.labels[ib])
    with pytest.raises(GaalError, match="different samples.*'z' is only in .*a.safetensors"):
        pf.align(a, _pair(tmp_path, "c", ["x", "y", "w"], [0, 1, 2]))
    with pytest.raises(GaalError, match="3 and 4 samples.*'w' is only in .*d.safetensors"):
        pf.align(a, _pair(tmp_path, "d", ["x", "y", "z", "w"], [0, 1, 2, 0]))
    with pytest.raises(GaalError, match="1 samples have different labels.*'z'"):
        pf.align(a, _pair(tmp_path, "e", ["x", "y", "z"], [0, 1, 0]))
    with pytest.raises(GaalError, match="split 'val'"):
        pf.align(a, _pair(tmp_path, "f", ["x", "y", "z"], [0, 1, 2], split="val"))
