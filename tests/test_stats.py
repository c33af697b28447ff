"""Statistics (gaal_cli/analysis/stats.py), the predictions file (gaal_cli/runs/predictions_file.py) and the
critical-difference diagram (gaal_cli/analysis/cd_diagram.py), on cases whose answers are known by hand
or published."""

from __future__ import annotations

import json
import math
import os
import struct

import numpy as np
import pytest
import safetensors
import safetensors.numpy
from scipy import stats as sp

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


# ---------------------------------------------------------------- the paired bootstrap


def _seeds(n_seeds, n, value):
    return [np.full(n, value, dtype=bool) for _ in range(n_seeds)]


def test_identical_runs_differ_by_exactly_nothing():
    rng = np.random.default_rng(0)
    runs = [rng.random(300) < 0.7 for _ in range(3)]
    labels = [rng.integers(5, size=300) for _ in range(3)]
    for metric in stats.METRICS:
        d = stats.paired_bootstrap(runs, runs, labels, metric, resamples=500)
        assert (d.difference, d.low, d.high, d.p_value) == (0.0, 0.0, 0.0, 1.0)
        assert d.seeds_needed is None and not d.significant


def test_always_right_against_never_right_is_certain():
    labels = [np.zeros(50, dtype=int)] * 4
    d = stats.paired_bootstrap(_seeds(4, 50, True), _seeds(4, 50, False), labels, resamples=999)
    assert (d.difference, d.low, d.high) == (1.0, 1.0, 1.0)
    # no replicate on the other side of 0: the smallest p-value B resamples can give
    assert d.p_value == pytest.approx(2 / 1000)
    assert d.significant and d.seeds_needed is None


def test_one_seed_follows_the_binomial():
    # one seed, 400 samples: A and R agree except on 60 samples that only A gets right, so a
    # replicate's difference is Binomial(400, 0.15) / 400 and its 95 % interval is that
    # distribution's 2.5 % and 97.5 % quantiles
    n = 400
    r = np.arange(n) % 2 == 0
    a = r.copy()
    a[1:121:2] = True
    d = stats.paired_bootstrap([a], [r], [np.zeros(n, dtype=int)], resamples=20000, seed=3)
    assert d.difference == pytest.approx(0.15)
    low, high = sp.binom.ppf([0.025, 0.975], n, 0.15) / n
    assert d.low == pytest.approx(low, abs=1.5 / n) and d.high == pytest.approx(high, abs=1.5 / n)
    assert d.p_value == pytest.approx(2 / 20001)


def test_seeds_are_resampled_too():
    # seed 0: A = R; seed 1: A right everywhere, R nowhere. A replicate draws two seeds: its mean
    # difference is 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4 whatever the test samples drawn
    labels = [np.zeros(40, dtype=int)] * 2
    a = [np.ones(40, dtype=bool), np.ones(40, dtype=bool)]
    r = [np.ones(40, dtype=bool), np.zeros(40, dtype=bool)]
    d = stats.paired_bootstrap(a, r, labels, resamples=4000, seed=1)
    assert d.difference == 0.5 and d.per_seed == (0.0, 1.0)
    assert (d.low, d.high) == (0.0, 1.0)
    assert d.p_value == pytest.approx(2 * 0.25, abs=0.03)
    # n = ((z_0.975 + z_0.8) · sd / |d|)^2 with sd = sqrt(0.5), d = 0.5: (2.80158 · 1.41421)^2 = 15.7
    assert d.seeds_needed == 16


def test_balanced_accuracy_weighs_classes_equally():
    # 90 samples of class 0 that both get right, 10 of class 1 that only A gets right: accuracy
    # differs by 0.1 but balanced accuracy by 0.5, in every replicate that draws class 1 at all
    labels = np.array([0] * 90 + [1] * 10)
    a, r = np.ones(100, dtype=bool), labels == 0
    acc = stats.paired_bootstrap([a], [r], [labels], "accuracy", resamples=2000)
    bal = stats.paired_bootstrap([a], [r], [labels], "balanced_accuracy", resamples=2000)
    assert acc.difference == pytest.approx(0.1) and acc.low < 0.1 < acc.high
    assert (bal.difference, bal.low, bal.high) == (0.5, 0.5, 0.5)


def test_bootstrap_is_deterministic_for_a_seed():
    rng = np.random.default_rng(7)
    a = [rng.random(200) < 0.8 for _ in range(3)]
    r = [rng.random(200) < 0.75 for _ in range(3)]
    y = [rng.integers(4, size=200) for _ in range(3)]
    first = stats.paired_bootstrap(a, r, y, "balanced_accuracy", resamples=300, seed=5)
    assert stats.paired_bootstrap(a, r, y, "balanced_accuracy", resamples=300, seed=5) == first
    assert stats.paired_bootstrap(a, r, y, "balanced_accuracy", resamples=300, seed=6).low != first.low


def test_bootstrap_refuses_unpaired_inputs():
    with pytest.raises(GaalError, match="same number"):
        stats.paired_bootstrap(_seeds(2, 10, True), _seeds(3, 10, True), [np.zeros(10)] * 2)
    with pytest.raises(GaalError, match="seed 1"):
        stats.paired_bootstrap(_seeds(2, 10, True), [np.ones(10, bool), np.ones(9, bool)], [np.zeros(10)] * 2)
    with pytest.raises(GaalError, match="unknown metric 'f1'"):
        stats.paired_bootstrap(_seeds(1, 10, True), _seeds(1, 10, True), [np.zeros(10)], "f1")


def test_seeds_needed_is_undefined_without_spread_or_difference():
    assert stats.seeds_needed([0.02]) is None
    assert stats.seeds_needed([0.01, -0.01]) is None
    assert stats.seeds_needed([0.02, 0.02]) == 2


def test_paired_t_from_per_seed_values():
    d = stats.paired_t([0.80, 0.82, 0.79], [0.78, 0.80, 0.79], "accuracy")
    # differences 0.02, 0.02, 0: t = 2 on 2 degrees of freedom, whose two-sided p is 1 - 2 / sqrt(6)
    assert d.difference == pytest.approx(0.02 * 2 / 3) and d.resamples == 0
    assert d.p_value == pytest.approx(1 - 2 / math.sqrt(6))
    cell = stats.mean_interval([0.02, 0.02, 0.0])
    assert (d.low, d.high) == pytest.approx((cell.low, cell.high))
    # ((z_0.975 + z_0.8) · sd / d)^2 = (2.80158 · 0.011547 / 0.013333)^2 = 5.89
    assert d.seeds_needed == 6
    assert math.isnan(stats.paired_t([0.8], [0.7], "accuracy").p_value)
    assert stats.paired_t([0.75, 0.5], [0.5, 0.25], "accuracy").p_value == 0.0
    assert stats.paired_t([0.8, 0.9], [0.8, 0.9], "accuracy").p_value == 1.0


def _difference(value, p, seeds=3, needed=None):
    return stats.PairedDifference(
        "accuracy", value, value - 0.01, value + 0.01, p, (value,) * seeds, 1000, 0.95, needed
    )


def test_mark_rows_applies_holm_then_the_rule():
    rows = {
        "gaal": _difference(0.02, 0.001),
        "mla": _difference(0.01, 0.04, needed=12),
        "daft": _difference(-0.03, 0.002),
        "one_seed": _difference(0.01, 0.5, seeds=1),
    }
    marked = stats.mark_rows(rows)
    # Holm over 4: 0.001 x4 = 0.004, 0.002 x3 = 0.006, 0.04 x2 = 0.08, 0.5 x1 -> 0.5
    assert {name: round(v.adjusted_p, 6) for name, v in marked.items()} == {
        "gaal": 0.004, "mla": 0.08, "daft": 0.006, "one_seed": 0.5,
    }  # fmt: skip
    assert [marked[n].verdict for n in rows] == ["better", "tie", "worse", "tie"]
    assert "12 seeds" in marked["mla"].note and "one seed" in marked["one_seed"].note
    assert "Holm" in stats.RULE.format(alpha=0.05)


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
    result = stats.friedman(DEMSAR_AUC)
    # section 3.2.2: average ranks 3.143, 2.000, 2.893, 1.964; chi2_F = 9.28; F_F = 3.69
    np.testing.assert_allclose(result.average_ranks, [3.143, 2.000, 2.893, 1.964], atol=5e-4)
    # the paper's chi2_F has no correction for ties; scipy's divides it by 1 - sum(t^3 - t) / (N k (k^2 - 1)),
    # here with a tie of 4 (mushroom) and three ties of 2 (iris, lung cancer, primary tumor)
    ties = 1 - (4**3 - 4 + 3 * (2**3 - 2)) / (14 * 4 * (4**2 - 1))
    assert result.chi2 * ties == pytest.approx(9.28, abs=0.005)
    assert result.p_value == pytest.approx(sp.chi2.sf(result.chi2, 3))
    f, f_p = stats.iman_davenport(9.28, 14, 4)
    assert f == pytest.approx(3.69, abs=0.005)
    assert f_p == pytest.approx(sp.f.sf(f, 3, 39))
    assert result.f == pytest.approx(stats.iman_davenport(result.chi2, 14, 4)[0])


def test_nemenyi_critical_difference_of_demsar_2006():
    # q_0.05 = 2.569 for k = 4 (Demšar's table 5a), CD = 2.569 sqrt(4 · 5 / (6 · 14)) = 1.25
    assert stats.nemenyi_cd(4, 14) / math.sqrt(4 * 5 / (6 * 14)) == pytest.approx(2.569, abs=5e-4)
    assert stats.nemenyi_cd(4, 14) == pytest.approx(1.25, abs=0.005)
    # q_0.10 = 2.291: CD = 1.12
    assert stats.nemenyi_cd(4, 14, alpha=0.10) == pytest.approx(1.12, abs=0.005)


def test_cliques_of_demsar_2006():
    ranks = stats.friedman(DEMSAR_AUC).average_ranks
    # at 0.05 the largest gap (C4.5 against C4.5+m+cf, 1.18) is under CD = 1.25: one group
    assert stats.cliques(ranks, stats.nemenyi_cd(4, 14)) == [(3, 1, 2, 0)]
    # at 0.10 (CD = 1.12) C4.5 falls out of the best two's group
    assert stats.cliques(ranks, stats.nemenyi_cd(4, 14, alpha=0.10)) == [(3, 1, 2), (2, 0)]
    assert stats.cliques([1.0, 2.0, 3.0], 0.5) == []


def test_friedman_edge_cases():
    assert stats.friedman(np.ones((3, 4))).p_value == 1.0
    with pytest.raises(GaalError, match="at least 3 methods"):
        stats.friedman(DEMSAR_AUC[:, :2])
    with pytest.raises(GaalError, match="finite"):
        stats.friedman(np.full((3, 3), np.nan))
    assert stats.iman_davenport(14 * 3, 14, 4) == (math.inf, 0.0)


# ---------------------------------------------------------------- the CD diagram


def test_cd_diagram_of_demsar_2006(tmp_path):
    ranks = stats.friedman(DEMSAR_AUC).average_ranks
    cd = stats.nemenyi_cd(4, 14, alpha=0.10)
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
