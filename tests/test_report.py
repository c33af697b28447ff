"""`gaal report` on hand-made run folders with known accuracies (the aggregation arithmetic)."""

import json

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from gaal_cli.cli import app
from gaal_cli.config import load_config
from gaal_cli.errors import GaalError
from gaal_cli.report import load_runs, row_keys, write_report

runner = CliRunner()
PNG = b"\x89PNG"


def fake_run(root, experiment, variant, seed, overrides, accs, *, done=True, steps=None, losses=None, inputs=None):
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
    assert concat_row.startswith("| concat | 0.5500 ± 0.0707 |")
    assert "**0.8500 ± 0.0707**" in gaal_row and "**" not in concat_row.split("|")[2]

    table2 = pd.read_csv(out / "table2.csv")
    assert len(table2) == 3 and table2["multi_mean"].tolist() == pytest.approx([0.615, 0.715, 0.765])
    assert (out / "lam.csv").exists() and (out / "eps.csv").exists() and (out / "conf.md").exists()
    for name in ("fig1a_conflict", "fig3_lam", "fig4_curves", "fig5_eps"):
        assert (out / f"{name}.png").read_bytes()[:4] == PNG
    report = (out / "report.md").read_text()
    assert "fig3_lam.png" in report and "## table2" in report


def test_two_runs_in_one_cell_are_an_error(results):
    fake_run(results, "t1_again", "gaal", 1, [], (0.1, 0.1, 0.1))
    with pytest.raises(GaalError, match="same table cell"):
        write_report(results, results / "out")


def test_no_finished_runs_is_an_error(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "no finished runs" in result.output


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
    rows = [line.split("|")[1].strip() for line in (tmp_path / "out" / "table1.md").read_text().splitlines()[2:]]
    assert rows == ["gaal", "kd", "fmr"]  # Table I's order: GAAL, then the test-time missing rows
    for method in ("kd", "fmr"):
        assert pd.isna(table.loc[method, "multi_mean"]) and table.loc[method, "image_mean"] == pytest.approx(0.65)
    assert table.loc["gaal", "multi_mean"] == pytest.approx(0.9)
