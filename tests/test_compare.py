"""Is a difference real, end to end: the predictions file every run writes, `gaal eval
--write-predictions`, `gaal compare`, and the report's intervals, paired differences and
critical-difference diagram."""

import json
import shutil

import numpy as np
import pytest
from conftest import TINY
from scipy import stats as scipy_stats
from test_report import fake_run
from typer.testing import CliRunner

from gaal_cli.analysis.compare import compare_runs, comparison_lines, same_test_set
from gaal_cli.analysis.report import write_report
from gaal_cli.analysis.stats import PER_SEED, RULE, SHARED, mean_interval, paired_difference
from gaal_cli.cli import app
from gaal_cli.config import load_config
from gaal_cli.data import build_data
from gaal_cli.runs.predictions_file import FILE_NAME, read_predictions, write_predictions
from gaal_cli.training.engine import train

runner = CliRunner()
SEEDS = (1, 2)


@pytest.fixture(scope="module")
def groups(tmp_path_factory):
    """Two tiny methods, two seeds each, trained as `gaal train` trains: root/<method>/seed<k>."""
    root = tmp_path_factory.mktemp("runs")
    for method in ("gaal", "concat"):
        for seed in SEEDS:
            config = load_config(overrides=[*TINY, f"method={method}", f"seed={seed}", "train.threads=1"])
            train(config, root / method / f"seed{seed}", show_progress=False)
    return root


def correct_vectors(a_runs, b_runs, head):
    a_correct, b_correct, labels = [], [], []
    for a, b in zip(a_runs, b_runs):
        pa, pb = read_predictions(a / FILE_NAME), read_predictions(b / FILE_NAME)
        assert pa.ids == pb.ids  # the same seed's split: the same samples in the same order
        a_correct.append(pa.correct(head))
        b_correct.append(pb.correct(head))
        labels.append(pa.labels)
    return a_correct, b_correct, labels


def test_every_run_keeps_its_test_predictions_with_the_reported_accuracy(groups):
    for method in ("gaal", "concat"):
        for seed in SEEDS:
            folder = groups / method / f"seed{seed}"
            report = json.loads((folder / "report.json").read_text())
            predictions = read_predictions(folder / FILE_NAME)
            assert report["predictions"] == FILE_NAME
            assert set(predictions.heads) == set(report["metrics"]["test"])
            for head in predictions.heads:
                reported = report["metrics"]["test"][head]["acc"]
                assert predictions.correct(head).mean() == pytest.approx(reported, abs=1e-6), (folder, head)
            # the embedded set: each sample named by its index in the whole generated set
            config = load_config(overrides=[*TINY, f"seed={seed}"])
            data = build_data(config.data, seed)
            first = 96 + 48  # n_train + n_val
            assert predictions.ids == tuple(str(i) for i in range(first, first + 48))
            assert predictions.labels.tolist() == data.test.labels.tolist()
            assert predictions.meta["method"] == method and predictions.meta["seed"] == seed


def test_eval_writes_the_predictions_of_an_older_run_and_nothing_else(groups, tmp_path):
    run = tmp_path / "old"
    shutil.copytree(groups / "gaal" / "seed1", run)
    (run / FILE_NAME).unlink()  # a run from before runs kept their predictions
    def files():  # the lock file names its last holder: not the run's content
        return {p.name: p.read_bytes() for p in run.iterdir() if p.name not in (FILE_NAME, ".lock")}

    before = files()
    result = runner.invoke(app, ["eval", str(run), "--write-predictions"])
    assert result.exit_code == 0, result.output
    assert files() == before
    # recomputed from the checkpoint: the very bytes training wrote
    assert (run / FILE_NAME).read_bytes() == (groups / "gaal" / "seed1" / FILE_NAME).read_bytes()
    again = runner.invoke(app, ["eval", str(run), "--write-predictions"])
    assert again.exit_code == 0 and "already there" in again.output


def test_eval_refuses_to_write_predictions_the_report_does_not_back(groups, tmp_path):
    run = tmp_path / "other"
    shutil.copytree(groups / "gaal" / "seed1", run)
    (run / FILE_NAME).unlink()
    report = json.loads((run / "report.json").read_text())
    report["metrics"]["test"]["multi"]["acc"] += 0.25  # not what this checkpoint scores
    (run / "report.json").write_text(json.dumps(report))
    result = runner.invoke(app, ["eval", str(run), "--write-predictions"])
    assert result.exit_code == 2 and "not this run's result" in result.output
    assert "metrics.test.multi.acc" in result.output and "Traceback" not in result.output
    assert not (run / FILE_NAME).exists()


def test_compare_two_groups_matches_the_statistics_called_directly(groups):
    a, b = groups / "gaal", groups / "concat"
    result = runner.invoke(app, ["compare", str(a), str(b), "--json", "--metric", "acc"])
    assert result.exit_code == 0, result.output
    lines = json.loads(result.output)["comparisons"]
    assert [line["head"] for line in lines] == ["multi", "image", "tabular"]
    for line in lines:
        a_runs = [a / f"seed{s}" for s in SEEDS]
        b_runs = [b / f"seed{s}" for s in SEEDS]
        # the embedded set draws each seed's samples: ids 144.. in every seed, other labels
        direct = paired_difference(*correct_vectors(a_runs, b_runs, line["head"]), "accuracy", shared=False)
        assert line["difference"] == pytest.approx(direct.difference, abs=1e-12)
        assert line["low"] == pytest.approx(direct.low) and line["high"] == pytest.approx(direct.high)
        assert line["p_value"] is None if direct.p_value != direct.p_value else line["p_value"] == pytest.approx(
            direct.p_value
        )
        assert line["seeds"] == 2 and line["samples"] == 48 and line["design"] == PER_SEED
    table = runner.invoke(app, ["compare", str(a), str(b)])
    assert table.exit_code == 0, table.output
    multi = next(r for r in table.output.splitlines() if r.startswith("| multi | acc |"))
    assert f"{lines[0]['difference']:+.4f} | [{lines[0]['low']:+.4f}, {lines[0]['high']:+.4f}]" in multi
    assert f"Test set: {PER_SEED}" in table.output


def test_compare_pairs_every_seed_on_a_shared_test_set_by_id(tmp_path):
    # one test set for both seeds, written in another order by each run: aligned by id across seeds
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, size=300)
    ids = [f"img{i}" for i in range(300)]
    flags = {}
    for method, skill in (("gaal", 0.85), ("concat", 0.7)):
        for seed in (1, 2, 3):
            correct = rng.random(300) < skill
            fake_run(tmp_path, "t1", method, seed, [f"method={method}"], (float(correct.mean()), None, None))
            order = rng.permutation(300)
            folder = tmp_path / "t1" / method / f"seed{seed}"
            give_predictions(folder, labels[order], correct[order], [ids[i] for i in order])
            flags[(method, seed)] = correct
    files = [read_predictions(tmp_path / "t1" / "gaal" / f"seed{s}" / FILE_NAME) for s in (1, 2, 3)]
    assert same_test_set(files) and not same_test_set([files[0], _renamed(tmp_path, files[0])])
    rows = compare_runs(tmp_path / "t1" / "gaal", tmp_path / "t1" / "concat")
    direct = paired_difference(
        [flags[("gaal", s)] for s in (1, 2, 3)], [flags[("concat", s)] for s in (1, 2, 3)], [labels] * 3, shared=True
    )
    assert rows[0].design == SHARED and rows[0].difference == pytest.approx(direct.difference)
    assert (rows[0].low, rows[0].high, rows[0].p_value) == pytest.approx((direct.low, direct.high, direct.p_value))
    text = "\n".join(comparison_lines(rows, "A", "B"))
    assert f"Test set: {SHARED} (every seed's predictions files hold the same 300 sample ids" in text


def _renamed(tmp_path, file):
    """The same samples under other ids: another test set."""
    path = tmp_path / "renamed.safetensors"
    logits = {h: file.logits(h) for h in file.heads}
    write_predictions(path, [f"other{i}" for i in range(len(file.ids))], file.labels, logits, file.meta)
    return read_predictions(path)


def test_compare_refuses_unpaired_runs_with_a_clear_error(groups, tmp_path):
    a, b = groups / "gaal", groups / "concat"
    seeds = runner.invoke(app, ["compare", str(a / "seed1"), str(b)])
    assert seeds.exit_code == 2 and "same seeds" in seeds.output and "Traceback" not in seeds.output

    older = tmp_path / "older"
    shutil.copytree(b / "seed1", older)
    (older / FILE_NAME).unlink()
    missing = runner.invoke(app, ["compare", str(a / "seed1"), str(older)])
    assert missing.exit_code == 2 and f"gaal eval {older} --write-predictions" in missing.output

    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(b / "seed1", elsewhere)
    original = read_predictions(elsewhere / FILE_NAME)
    ids = [str(int(i) + 1000) for i in original.ids]  # another split's samples
    logits = {h: original.logits(h) for h in original.heads}
    write_predictions(elsewhere / FILE_NAME, ids, original.labels, logits, original.meta)
    other = runner.invoke(app, ["compare", str(a / "seed1"), str(elsewhere)])
    assert other.exit_code == 2 and "different samples" in other.output


# ---------------------------------------------------------------- the report


def give_predictions(folder, labels, correct, ids=None):
    """A predictions file whose multi head gets exactly the samples `correct` marks right."""
    labels = np.asarray(labels)
    predicted = np.where(correct, labels, (labels + 1) % 2)
    logits = np.eye(2, dtype=np.float32)[predicted]
    ids = ids if ids is not None else [f"s{i}" for i in range(len(labels))]
    write_predictions(folder / FILE_NAME, ids, labels, {"multi": logits})


def test_report_pairs_rows_with_the_reference_by_t_without_predictions(tmp_path):
    root = tmp_path / "results"
    values = {"gaal": (0.80, 0.90, 0.86), "concat": (0.70, 0.85, 0.75)}
    for seed in (1, 2, 3):
        fake_run(root, "t1", "gaal", seed, [], (values["gaal"][seed - 1], None, None))
        fake_run(root, "t1", "concat", seed, ["method=concat"], (values["concat"][seed - 1], None, None))
    write_report(root, tmp_path / "out")
    md = (tmp_path / "out" / "table1.md").read_text()
    cell = mean_interval(values["gaal"])
    assert f"0.8533 ± 0.0503 [{cell.low:.4f}, {cell.high:.4f}]" in md
    d = np.subtract(values["gaal"], values["concat"])
    low, high = mean_interval(d).low, mean_interval(d).high
    p = scipy_stats.ttest_rel(values["gaal"], values["concat"]).pvalue  # one row: Holm leaves it as it is
    gaal_line = next(line for line in md.split("\n\n")[2].splitlines() if line.startswith("| gaal |"))
    assert f"{d.mean():+.4f}ᵗ [{low:+.4f}, {high:+.4f}] p {p:.3f}" in gaal_line
    assert p < 0.05 and "▲" in gaal_line  # t = 4.67 on 2 degrees of freedom
    assert RULE.format(alpha=0.05) in md and "ᵗ: a run of the pair kept no predictions file" in md


def test_report_pairs_samples_where_runs_kept_predictions_and_marks_by_holm(tmp_path):
    root = tmp_path / "results"
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=200)
    a_correct, r_correct = [], []
    for seed in (1, 2, 3):
        a = rng.random(200) < 0.9
        r = rng.random(200) < 0.6
        w = rng.random(200) < 0.58
        for method, correct, extra in (("gaal", a, []), ("concat", r, ["method=concat"]), ("max", w, ["method=max"])):
            fake_run(root, "t1", method, seed, extra, (float(correct.mean()), None, None))
            give_predictions(root / "t1" / method / f"seed{seed}", labels, correct)
        a_correct.append(a), r_correct.append(r)
    write_report(root, tmp_path / "out")
    table = (tmp_path / "out" / "table1.md").read_text()
    paired = table.split("\n\n")[2].splitlines()
    gaal = next(line for line in paired if line.startswith("| gaal |"))
    # the same ids and labels in every seed: one shared test set, found in the files and said so
    direct = paired_difference(a_correct, r_correct, [labels] * 3, "accuracy", shared=True)
    assert f"{direct.difference:+.4f} [{direct.low:+.4f}, {direct.high:+.4f}]" in gaal and "ᵗ" not in gaal
    assert "▲" in gaal  # 0.9 against 0.6 on 3 seeds of 200 paired samples: real after Holm's factor 2
    assert f"Test sets (from the runs' predictions files: the same sample ids with the same labels in every seed, or " \
        f"not): synthetic: {SHARED}" in table
    other = next(line for line in paired if line.startswith("| max |"))
    assert "=" in other and "▲" not in other and "▼" not in other  # 0.58 against 0.6: a tie
    again = tmp_path / "again"
    write_report(root, again)
    assert (again / "table1.md").read_bytes() == (tmp_path / "out" / "table1.md").read_bytes()


def test_report_gives_the_t_fallback_no_verdict_where_seeds_share_a_test_set(tmp_path):
    root = tmp_path / "results"
    labels = np.arange(100) % 2
    for seed, (g, c) in zip((1, 2, 3), ((0.80, 0.50), (0.90, 0.52), (0.86, 0.49))):
        fake_run(root, "t1", "gaal", seed, [], (g, None, None))  # an older run: no predictions file
        fake_run(root, "t1", "concat", seed, ["method=concat"], (c, None, None))
        give_predictions(root / "t1" / "concat" / f"seed{seed}", labels, np.arange(100) < c * 100)
    write_report(root, tmp_path / "out")
    paired = (tmp_path / "out" / "table1.md").read_text().split("\n\n")[2].splitlines()
    gaal = next(line for line in paired if line.startswith("| gaal |"))
    # per-seed values alone are blind to the test set every seed shares: liberal, so no mark
    assert "ᵗ" in gaal and "·, shared test set" in gaal and "▲" not in gaal


def test_report_draws_the_critical_difference_diagram_over_regime_levels(tmp_path):
    root = tmp_path / "results"
    sets = ["data.synthetic.regime=table_dominant"]
    skill = {"concat": 0.70, "max": 0.72, "mla": 0.80, "gaal": 0.78}
    for level, d in enumerate((0.0, 0.5, 1.0)):
        for method, acc in skill.items():
            extra = [*sets, f"data.synthetic.dominance={d}", f"method={method}"]
            fake_run(root, "regime", f"{method}_d{d}", 1, extra, (acc - 0.01 * level, 0.5, 0.6), classes=10)
    written = write_report(root, tmp_path / "out")
    for suffix in (".png", ".pdf", ".svg"):
        assert tmp_path / "out" / f"cd_regime{suffix}" in written
    report = (tmp_path / "out" / "report.md").read_text()
    ranks = scipy_stats.rankdata([-np.array(list(skill.values()))] * 3, axis=1).mean(axis=0)
    assert "over 3 conditions" in report and "mla 1.00, gaal 2.00, max 3.00, concat 4.00" in report
    assert ranks.tolist() == [4.0, 3.0, 1.0, 2.0]
    chi2 = scipy_stats.friedmanchisquare(*np.array([list(skill.values())] * 3).T).statistic
    assert f"Friedman χ² = {chi2:.2f}" in report and "![cd_regime](cd_regime.png)" in report
    # 3 conditions: the exact permutation p (1 of the 4!^2 arrangements agrees as fully), not chi-square's
    assert f"exact permutation test's: p = {1 / 24**2:.3g}" in report
    assert "share a generator and the training seeds (3 dominance levels of synthetic, table-dominant)" in report
    svg = (tmp_path / "out" / "cd_regime.svg").read_bytes()
    write_report(root, tmp_path / "again")
    assert (tmp_path / "again" / "cd_regime.svg").read_bytes() == svg


def test_report_over_several_folders_ranks_table1_across_their_datasets(tmp_path):
    skill = {"concat": 0.70, "max": 0.72, "mla": 0.80, "gaal": 0.78}
    for root, extra in ((tmp_path / "a", []), (tmp_path / "b", ["data.name=ham10000", "data.dir=prep"])):
        for method, acc in skill.items():
            fake_run(root, "t1", method, 1, [f"method={method}", *extra], (acc, 0.5, 0.6))
    alone = runner.invoke(app, ["report", str(tmp_path / "a"), str(tmp_path / "b")])
    assert alone.exit_code == 2 and "--out" in alone.output
    result = runner.invoke(app, ["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "out" / "report.md").read_text()
    assert "over 2 conditions (each dataset; 1 = best): mla 1.00, gaal 2.00, max 3.00, concat 4.00" in report
    # N = 2: Nemenyi's CD for 4 methods (3.32) is beyond any rank difference (3): no diagram, and why
    assert not (tmp_path / "out" / "cd_table1.png").exists() and "cd_table1" not in report
    why = "No critical-difference diagram: with 2 conditions Nemenyi's critical difference for 4 methods is 3.32"
    assert why in report
    assert "synthetic Multi" in report and "ham10000 Multi" in report


def test_report_draws_no_diagram_where_friedman_does_not_reject(tmp_path):
    root = tmp_path / "results"
    sets = ["data.synthetic.regime=table_dominant"]
    # 4 levels on which the four methods swap places: no consistent order
    orders = ((0.70, 0.72, 0.80, 0.78), (0.80, 0.78, 0.70, 0.72), (0.72, 0.80, 0.78, 0.70), (0.78, 0.70, 0.72, 0.80))
    for d, accs in zip((0.0, 0.25, 0.5, 1.0), orders):
        for method, acc in zip(("concat", "max", "mla", "gaal"), accs):
            extra = [*sets, f"data.synthetic.dominance={d}", f"method={method}"]
            fake_run(root, "regime", f"{method}_d{d}", 1, extra, (acc, 0.5, 0.6), classes=10)
    write_report(root, tmp_path / "out")
    report = (tmp_path / "out" / "report.md").read_text()
    assert "No critical-difference diagram: the test does not reject that the methods rank alike (p = 1 >" in report
    assert not (tmp_path / "out" / "cd_regime.png").exists()
