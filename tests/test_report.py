"""`gaal report` on hand-made run folders with known accuracies (the aggregation arithmetic)."""

import json

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from gaal_cli.analysis.collect import load_runs, row_keys
from gaal_cli.analysis.figures import _epsilon_axis, _figure
from gaal_cli.analysis.report import write_report
from gaal_cli.analysis.tables import BOLD_RULE
from gaal_cli.cli import app
from gaal_cli.config import load_config
from gaal_cli.foundation.errors import GaalError

runner = CliRunner()
PNG = b"\x89PNG"


def fake_run(
    root, experiment, variant, seed, overrides, accs, *, done=True, steps=None, losses=None, classes=None, inputs=None
):
    """A run folder as the engine writes it, with chosen test accuracies (multi, image, tabular)."""
    config = load_config(None, [f"name={experiment}", f"seed={seed}", *overrides])
    folder = root / experiment / variant / f"seed{seed}"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config.resolved()))
    heads = {h: {"acc": a} for h, a in zip(("multi", "image", "tabular"), accs) if a is not None}
    report = {
        "experiment": experiment,
        "method": config.method,
        "dataset": config.data.name,
        "seed": seed,
        "metrics": {"val": heads, "test": heads},
        "best_epoch": 2,
        "epochs_run": 2,
        "timings": {"total_seconds": 10.0, "seconds_per_epoch": 2.0 + seed % 2, "eval_seconds": 1.0},
        **({"inputs_at_test": inputs} if inputs else {}),
    }
    if classes:
        report["data"] = {"classes": classes}
    (folder / "report.json").write_text(json.dumps(report))
    if done:
        (folder / "DONE").write_text("")
    epochs = [{"epoch": e, "train": {"loss": 1.0 / e, **(losses or {})}, "val": heads} for e in (1, 2)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in epochs))
    if steps:
        (folder / "steps.jsonl").write_text(
            "".join(json.dumps({"epoch": 1, "step": i, **s}) + "\n" for i, s in enumerate(steps))
        )


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "results"
    for seed, (g, c) in zip((1, 2), ((0.8, 0.5), (0.9, 0.6))):
        fake_run(root, "t1", "gaal", seed, [], (g, g - 0.1, g - 0.2), losses={"loss_image": 2.0, "loss_tabular": 1.0})
        fake_run(root, "t1", "concat", seed, ["method=concat"], (c, 0.01, c))
        rows = ((False, False, 0.6), (True, False, 0.7), (True, True, 0.75))
        for cgs, ugg, acc in rows:
            sw = [f"methods.gaal.cgs={cgs}", f"methods.gaal.ugg={ugg}"]
            fake_run(root, "abl", f"c{cgs}u{ugg}", seed, sw, (acc + seed / 100, acc, acc))
        for li in (0.1, 0.5):
            for lt in (0.1, 0.5):
                sw = [f"methods.gaal.lambda_image={li}", f"methods.gaal.lambda_tabular={lt}"]
                fake_run(root, "lam", f"li{li}lt{lt}", seed, sw, (li + lt, li, lt))
        for eps in (0.0, 0.1):
            fake_run(root, "eps", f"e{eps}", seed, [f"methods.gaal.epsilon={eps}"], (0.5 + eps, 0.4, 0.3))
        steps = [{"cos_image": v} for v in (-0.5, -0.1, 0.2)]
        fake_run(
            root, "conf", "concat", seed, ["method=concat", "methods.concat.grad_cosine=true"], (0.5,) * 3, steps=steps
        )
    fake_run(root, "t1", "gaal", 3, [], (0.0, 0.0, 0.0), done=False)  # killed: never counted
    return root


def test_rows_are_the_settings_that_vary(results):
    runs = load_runs(results)
    assert len(runs) == 2 * (2 + 3 + 4 + 2 + 1)
    assert row_keys(runs[runs.experiment == "t1"]) == ["method"]
    assert row_keys(runs[runs.experiment == "abl"]) == ["methods.gaal.cgs", "methods.gaal.ugg"]
    assert row_keys(runs[runs.experiment == "lam"]) == ["methods.gaal.lambda_image", "methods.gaal.lambda_tabular"]


def test_tables_mean_std_bold_and_figures(results, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["report", str(results), "--out", str(out)])
    assert result.exit_code == 0, result.output

    table1 = pd.read_csv(out / "table1.csv").set_index("method")
    assert table1.loc["gaal", "multi_mean"] == pytest.approx(0.85)
    assert table1.loc["gaal", "multi_std"] == pytest.approx(0.0707107, abs=1e-6)  # sample std of 0.8, 0.9
    assert table1.loc["concat", "n"] == 2 and table1.loc["gaal", "sec_per_epoch_mean"] == pytest.approx(2.5)
    md = (out / "table1.md").read_text().splitlines()
    assert md[0].startswith("| method | synthetic Multi | synthetic Image | synthetic Tabular | synthetic s/epoch")
    concat_row, gaal_row = md[2], md[3]  # the paper's order: baselines first, GAAL last
    # 95 % interval of two seeds: mean ± t_{0.975, 1} · s / sqrt(2) = 0.55 ± 12.7062 · 0.05
    assert concat_row.startswith("| concat | 0.5500 ± 0.0707 [-0.0853, 1.1853] |")
    assert "**0.8500 ± 0.0707 [0.2147, 1.4853]**" in gaal_row and "**" not in concat_row.split("|")[2]

    table2 = pd.read_csv(out / "table2.csv")
    assert len(table2) == 3 and table2["multi_mean"].tolist() == pytest.approx([0.615, 0.715, 0.765])
    assert (out / "lam.csv").exists() and (out / "eps.csv").exists() and (out / "conf.md").exists()
    for name in ("fig1a_conflict", "fig3_lam", "fig4_curves", "fig5_eps"):
        assert (out / f"{name}.png").read_bytes()[:4] == PNG
    report = (out / "report.md").read_text()
    assert "fig3_lam.png" in report and "## table2" in report


def test_two_runs_in_one_cell_are_an_error(results):
    fake_run(results, "t1_again", "gaal", 1, [], (0.1, 0.1, 0.1))
    fake_run(results, "t1_again", "concat", 1, ["method=concat"], (0.1, 0.1, 0.1))  # a second Table I
    with pytest.raises(GaalError, match="same table cell"):
        write_report(results, results / "out")


def test_a_one_method_variant_of_a_table1_row_gets_its_own_table(results, tmp_path):
    fake_run(results, "t0_official", "gaal", 1, ["methods.gaal.projection=gem"], (0.1, 0.1, 0.1))
    written = {p.name for p in write_report(results, tmp_path / "out")}
    assert {"table1.md", "t0_official.md"} <= written
    main_table = (tmp_path / "out" / "table1.md").read_text().split("\n\n")[0]  # not the paired differences
    assert "0.1000" not in main_table


def test_no_finished_runs_is_an_error(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "no finished runs" in result.output


def test_figures_come_as_png_pdf_and_svg(results, tmp_path):
    written = write_report(results, tmp_path / "out")
    for name in ("fig1a_conflict", "fig3_lam", "fig4_curves", "fig5_eps"):
        assert {tmp_path / "out" / f"{name}{suffix}" for suffix in (".png", ".pdf", ".svg")} <= set(written)
        assert (tmp_path / "out" / f"{name}.pdf").read_bytes()[:4] == b"%PDF"
        svg = (tmp_path / "out" / f"{name}.svg").read_text()
        assert "<svg" in svg
    lam = (tmp_path / "out" / "fig3_lam.svg").read_text()
    assert "$\\lambda_I$" in lam and "λ" in lam  # a mathtext subscript, kept as text in the SVG


def test_one_seed_is_shown_without_spread_and_never_bold(tmp_path):
    root = tmp_path / "results"
    fake_run(root, "t1", "gaal", 1, [], (0.9, 0.5, 0.8))
    fake_run(root, "t1", "concat", 1, ["method=concat"], (0.6, 0.1, 0.6))
    write_report(root, tmp_path / "out")
    md = (tmp_path / "out" / "table1.md").read_text()
    assert "| gaal | 0.9000 | 0.5000 | 0.8000 |" in md
    assert "**" not in md and "±" not in md.split("\n\n")[0]
    assert BOLD_RULE in md


def test_ties_are_never_bold(tmp_path):
    root = tmp_path / "results"
    for seed, acc in ((1, 0.8), (2, 0.9)):
        fake_run(root, "t1", "gaal", seed, [], (acc, 0.5, acc))
        fake_run(root, "t1", "concat", seed, ["method=concat"], (acc, 0.1, acc))
    write_report(root, tmp_path / "out")
    rows = (tmp_path / "out" / "table1.md").read_text().splitlines()[2:4]
    tie = "0.8500 ± 0.0707 [0.2147, 1.4853]"
    assert all(row.split("|")[2].strip() == tie for row in rows)  # Multi: a tie, plain
    assert all(row.split("|")[4].strip() == tie for row in rows)  # Tabular: a tie, plain
    assert "**0.5000 ± 0.0000 [0.5000, 0.5000]**" in rows[1]  # Image: 0.5 vs 0.1 with no spread at all stands apart


def test_a_lead_inside_the_seeds_spread_is_not_bold(tmp_path):
    root = tmp_path / "results"
    for seed, (g, c) in ((1, (0.80, 0.79)), (2, (0.90, 0.88))):
        fake_run(root, "t1", "gaal", seed, [], (g, g, g))
        fake_run(root, "t1", "concat", seed, ["method=concat"], (c, c, c))
    write_report(root, tmp_path / "out")
    assert "**" not in (tmp_path / "out" / "table1.md").read_text()  # 0.85 vs 0.835 with std 0.07


def test_modality_diagnostics_per_run_and_per_row(tmp_path):
    root = tmp_path / "results"
    steps = [{"cos_image": v, "cos_tabular": 0.5} for v in (-0.5, -0.1, 0.2, 0.3)]
    for seed in (1, 2):
        fake_run(root, "t1", "concat", seed, ["method=concat"], (0.9, 0.5, 0.8), classes=10, steps=steps)
        fake_run(root, "t1", "image", seed, ["method=image"], (0.6, 0.6, None), classes=10)
        fake_run(root, "t1", "tabular", seed, ["method=tabular"], (0.85, None, 0.85), classes=10)
        fake_run(root, "t1", "max", seed, ["method=max"], (0.9, None, None), classes=10)
    write_report(root, tmp_path / "out")
    runs = pd.read_csv(tmp_path / "out" / "runs.csv").set_index(["method", "seed"])
    concat = runs.loc[("concat", 1)]
    # v(both) 0.9, v(image) 0.5, v(table) 0.8, v(none) 1/10
    assert concat["shapley_image_test"] == pytest.approx(0.25) and concat["shapley_tabular_val"] == pytest.approx(0.55)
    assert concat["gap_image"] == pytest.approx(0.5 - 0.6) and concat["gap_tabular"] == pytest.approx(0.8 - 0.85)
    assert concat["negcos_image"] == pytest.approx(0.5) and concat["negcos_tabular"] == pytest.approx(0.0)
    assert pd.isna(runs.loc[("max", 1), "shapley_image_test"]) and pd.isna(runs.loc[("image", 1), "gap_image"])
    diagnostics = (tmp_path / "out" / "table1_diagnostics.md").read_text()
    concat_line = next(line for line in diagnostics.splitlines() if line.startswith("| concat |"))
    assert "| 0.250 ± 0.000 | 0.550 ± 0.000 |" in concat_line and "| -0.100 ± 0.000 |" in concat_line
    max_line = next(line for line in diagnostics.splitlines() if line.startswith("| max |"))
    assert max_line.count("| - ") == 8
    assert "### Modality diagnostics" in (tmp_path / "out" / "report.md").read_text()


def test_regimes_are_datasets_of_their_own_with_a_dominance_figure(tmp_path):
    root = tmp_path / "results"
    table_dominant = ["data.synthetic.regime=table_dominant"]
    for seed in (1, 2):
        for d in (0.0, 1.0):
            for method, accs in (("concat", (0.9, 0.5 - 0.3 * d, 0.9)), ("image", (0.6, 0.6, None))):
                sets = [*table_dominant, f"data.synthetic.dominance={d}", f"method={method}"]
                fake_run(root, "regime", f"{method}_d{d}", seed, sets, accs, classes=10)
        for exp, extra in (("abl", []), ("abl_td", table_dominant)):  # Table II beside Table II: no clash
            fake_run(root, exp, "alt", seed, ["methods.gaal.cgs=false", "methods.gaal.ugg=false", *extra], (0.7,) * 3)
            fake_run(root, exp, "full", seed, extra, (0.8,) * 3)
    written = write_report(root, tmp_path / "out")
    assert tmp_path / "out" / "regime_regime.pdf" in written
    assert set(row_keys(load_runs(root).query("experiment == 'regime'"))) == {"method", "data.synthetic.dominance"}
    table2 = (tmp_path / "out" / "table2.md").read_text()
    assert "synthetic Multi" in table2 and "synthetic, table-dominant Multi" in table2
    regime = pd.read_csv(tmp_path / "out" / "regime.csv")
    image_gap = (
        pd.read_csv(tmp_path / "out" / "runs.csv")
        .query("method == 'concat'")
        .set_index("data.synthetic.dominance")["gap_image"]
    )
    assert image_gap[1.0].tolist() == pytest.approx([0.2 - 0.6] * 2)  # compared with image alone at the same level
    assert set(regime["dataset"]) == {"synthetic-table_dominant"}


@pytest.mark.parametrize(
    "eps, scale",
    [([-0.01, 0.0, 0.01, 0.1], "symlog"), ([0.001, 0.01, 0.1], "log"), ([0.0, 0.05, 0.1], "linear")],
)
def test_epsilon_axis_fits_the_values(eps, scale):
    import numpy as np

    fig, (ax,) = _figure(1)
    _epsilon_axis(ax, np.asarray(eps))
    assert ax.get_xscale() == scale


def test_test_time_missing_rows_fill_the_image_column_only(tmp_path):
    """KD and FMR read the image alone at test: Table I rows with an Image cell and no Multi cell,
    whatever teacher each seed used (a setting that names another run is no row)."""
    root = tmp_path / "results"
    for seed, acc in ((1, 0.6), (2, 0.7)):
        fake_run(root, "t1", "gaal", seed, [], (0.9, 0.8, 0.7), inputs=["image", "tabular"])
        for method, field in (("kd", "teacher"), ("fmr", "fixed_model")):
            teacher = f"methods.{method}.{field}=results/t1/concat/seed{seed}"
            fake_run(root, "t1m", method, seed, [f"method={method}", teacher], (acc, acc, None), inputs=["image"])
    written = write_report(root, tmp_path / "out")
    assert [p.name for p in written].count("table1.csv") == 1
    table = pd.read_csv(tmp_path / "out" / "table1.csv").set_index("method")
    lines = (tmp_path / "out" / "table1.md").read_text().split("\n\n")[0].splitlines()[2:]  # the table alone
    rows = [line.split("|")[1].strip() for line in lines]
    assert rows == ["gaal", "kd", "fmr"]  # Table I's order: GAAL, then the test-time missing rows
    for method in ("kd", "fmr"):
        assert pd.isna(table.loc[method, "multi_mean"]) and table.loc[method, "image_mean"] == pytest.approx(0.65)
    assert table.loc["gaal", "multi_mean"] == pytest.approx(0.9)


def test_a_multimodal_method_tested_without_the_table_is_a_starred_row(tmp_path):
    """GAAL*: GAAL trained on both modalities and tested on the image alone (data.test_missing)
    is a Table I row of its own, beside GAAL, with an Image cell only."""
    root = tmp_path / "results"
    for seed in (1, 2):
        fake_run(root, "t1", "gaal", seed, [], (0.9, 0.8, 0.7), inputs=["image", "tabular"])
        star = ["data.test_missing=tabular"]
        fake_run(root, "t1m", "gaal", seed, star, (0.75, 0.75 + seed / 100, 0.5), inputs=["image"])
        kd = ["method=kd", f"methods.kd.teacher=results/t1/concat/seed{seed}", *star]
        fake_run(root, "t1m", "kd", seed, kd, (0.6, 0.6, None), inputs=["image"])  # never reads the table
    write_report(root, tmp_path / "out")
    table = pd.read_csv(tmp_path / "out" / "table1.csv").set_index("method")
    lines = (tmp_path / "out" / "table1.md").read_text().split("\n\n")[0].splitlines()[2:]
    assert [line.split("|")[1].strip() for line in lines] == ["gaal", "kd", "gaal*"]
    assert table.loc["gaal*", "image_mean"] == pytest.approx(0.765)
    assert pd.isna(table.loc["gaal*", "multi_mean"]) and pd.isna(table.loc["gaal*", "tabular_mean"])


def test_balanced_accuracy_and_macro_f1_get_tables_of_their_own(tmp_path):
    root = tmp_path / "results"
    for seed, (acc, bal, f1) in ((1, (0.9, 0.6, 0.5)), (2, (0.8, 0.4, 0.3))):
        fake_run(root, "t1", "concat", seed, ["method=concat"], (acc, None, None))
        report = root / "t1" / "concat" / f"seed{seed}" / "report.json"
        data = json.loads(report.read_text())
        data["metrics"]["test"]["multi"].update(bal_acc=bal, f1=f1)
        report.write_text(json.dumps(data))
    write_report(root, tmp_path / "out")
    for name, mean in (("table1.md", "0.8500"), ("table1_bal_acc.md", "0.5000"), ("table1_f1.md", "0.4000")):
        assert f"{mean} ± " in (tmp_path / "out" / name).read_text(), name
    assert "### Test balanced accuracy" in (tmp_path / "out" / "report.md").read_text()
