"""Reports on a user's tables (issue 30): columns and panels labelled by the table's stem (two of one
stem told apart), a comparison figure with intervals, a confusion matrix of each dataset's best
row, a figure for a one-dimensional sweep, and titles that never run into each other."""

import json
import warnings

import numpy as np
import pandas as pd
from test_report import PNG, fake_run

from gaal_cli.analysis.collect import short_dataset_names
from gaal_cli.analysis.figures import _figure, wrap_titles
from gaal_cli.analysis.health_marks import below_one_modality
from gaal_cli.analysis.report import write_report
from gaal_cli.runs.predictions_file import write_predictions


def with_predictions(folder, classes, correct):
    """Give a fake run a predictions file whose multi head is right on `correct` of 4 samples per class."""
    labels = np.repeat(np.arange(len(classes)), 4)
    logits = np.zeros((len(labels), len(classes)), dtype=np.float32)
    for i, label in enumerate(labels):
        logits[i, label if i % 4 < correct else (label + 1) % len(classes)] = 5.0
    write_predictions(
        folder / "predictions.safetensors", [f"s{i}" for i in range(len(labels))], labels, {"multi": logits}
    )
    report = json.loads((folder / "report.json").read_text())
    report["data"] = {"classes": len(classes), "class_names": classes}
    (folder / "report.json").write_text(json.dumps(report))


def test_tables_are_labelled_by_their_stem_and_two_of_one_stem_by_their_folder(tmp_path):
    root = tmp_path / "results"
    tables = {
        "a": tmp_path / "shop" / "train.csv",
        "b": tmp_path / "clinic" / "train.csv",
        "c": tmp_path / "houses.csv",
    }
    for seed in (1, 2):
        for key, path in tables.items():
            for method, acc in (("gaal", 0.8), ("concat", 0.7)):
                fake_run(
                    root,
                    "t1",
                    f"{key}/{method}",
                    seed,
                    [f"method={method}", f"data.name={path}"],
                    (acc + seed / 100, 0.5, 0.4),
                )
    out = tmp_path / "report"
    write_report(root, out)
    table = (out / "table1.md").read_text()
    assert "train (shop) Multi" in table and "train (clinic) Multi" in table and "houses Multi" in table
    assert str(tmp_path) not in table.splitlines()[0]  # no path in the header
    assert (out / "methods_table1.png").read_bytes()[:4] == PNG
    runs = (out / "runs.csv").read_text()
    assert str(tables["a"]) in runs  # the path is kept, in data.name


def test_a_stem_that_names_another_dataset_is_told_apart():
    import pandas as pd

    runs = pd.DataFrame({"dataset": ["synthetic", "/x/synthetic.csv", "/y/houses.csv"]})
    assert short_dataset_names(runs)["dataset"].tolist() == ["synthetic", "synthetic (table)", "houses"]


def test_the_best_rows_confusion_matrix_is_drawn_from_their_predictions(tmp_path):
    root = tmp_path / "results"
    classes = ["cat", "dog", "fox"]
    for seed in (1, 2):
        for method, acc, correct in (("gaal", 0.75, 3), ("concat", 0.5, 2)):
            fake_run(root, "t1", method, seed, [f"method={method}"], (acc, 0.5, 0.4))
            with_predictions(root / "t1" / method / f"seed{seed}", classes, correct)
    out = tmp_path / "report"
    write_report(root, out)
    assert (out / "confusion_table1.png").read_bytes()[:4] == PNG
    assert "confusion_table1.png" in (out / "report.md").read_text()


def test_a_one_dimensional_sweep_gets_a_figure(tmp_path):
    root = tmp_path / "results"
    for seed in (1, 2, 3):
        for li in (0.1, 0.5, 0.9):
            sw = [f"methods.gaal.lambda_image={li}"]
            fake_run(root, "lam", f"li{li}", seed, sw, (0.7 + li / 10 + seed / 100, 0.5, 0.4))
    out = tmp_path / "report"
    write_report(root, out)
    figure = next(out.glob("sweep_*.png"))
    assert figure.read_bytes()[:4] == PNG and figure.name in (out / "report.md").read_text()


def test_titles_are_wrapped_to_their_panel():
    fig, axes = _figure(4)
    for ax in axes:
        ax.set_title("/a/very/long/folder/name/of/someone's/table/houses_with_prices_2024.csv: GAAL training loss")
    wrap_titles(fig)
    widths = [max(len(line) for line in ax.get_title().split("\n")) for ax in axes]
    assert all(w <= 4.5 * 12 for w in widths) and all("\n" in ax.get_title() for ax in axes)


def test_a_dataset_without_a_one_modality_run_is_checked_without_warnings():
    runs = pd.DataFrame(
        {
            "folder": ["a", "b"],
            "method": ["tabular", "gaal"],
            "dataset": ["clinic", "houses"],
            "multi": [np.nan, 0.6],
            "image": [np.nan, 0.4],
            "tabular": [1.0, 0.5],
            "n_test": [95, 80],
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        below = below_one_modality(runs, ["method"])
    assert below.tolist() == ["", ""]
