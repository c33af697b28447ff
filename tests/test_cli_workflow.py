"""A practitioner's workflow on their own tables (issue 30): a separate labelled test file evaluated
as it is, predictions named and scored, the head chosen on validation, dry runs that check the
data, run folders that never collide, sweeps and ablations on a table, and the messages that
answer a mistake."""

import json
import re
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import TABLE_TINY as TINY
from PIL import Image
from typer.testing import CliRunner

from gaal_cli.cli import app
from gaal_cli.config import load_config
from gaal_cli.data.images import decode
from gaal_cli.foundation.display import EpochProgress
from gaal_cli.runs.folder import RunFolder, default_run_folder

runner = CliRunner()
COLOURS = {"a": (200, 40, 40), "b": (40, 200, 40), "c": (40, 40, 200)}


def sets(options):
    return [arg for o in options for arg in ("--set", o)]


def write_rows(folder, name, labels, first, seed=0):
    """A table of one row per label, each with its own PNG under folder/img; returns its path."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, label in enumerate(labels, start=first):
        pixels = np.clip(rng.normal(COLOURS[label], 30, (12, 12, 3)), 0, 255).astype(np.uint8)
        (folder / "img").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / "img" / f"{i}.png")
        weight = {"a": 1.0, "b": 2.0, "c": 3.0}[label] + rng.normal(0, 0.8)
        rows.append({"image": f"img/{i}.png", "kind": label, "weight": round(weight, 3), "tag": ["x", "y"][i % 2]})
    pd.DataFrame(rows).to_csv(folder / name, index=False)
    return folder / name


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny GAAL run on a table without an id column, and a separate labelled test file in which
    class 'c' has 2 rows (too few to re-split)."""
    root = tmp_path_factory.mktemp("workflow")
    table = write_rows(root / "data", "train.csv", ["a", "b", "c"] * 30, 0)
    test = write_rows(root / "data", "test.csv", ["a"] * 8 + ["b"] * 8 + ["c"] * 2, 1000, seed=1)
    run = root / "run"
    args = ["train", "--dataset", str(table), "--target", "kind", "--image-column", "image", "-q", "--out", str(run)]
    result = runner.invoke(app, [*args, *sets(TINY)])
    assert result.exit_code == 0, result.output
    return run, table, test


def test_eval_scores_a_separate_file_as_it_is_with_every_metric_per_class_and_confusion(trained, tmp_path):
    run, _, test = trained
    figure = tmp_path / "confusion.png"
    result = runner.invoke(app, ["eval", str(run), "--data", str(test), "--json", "--out", str(figure)])
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert found["rows"] == 18 and "not re-split" in found["where"]  # class 'c' has 2 rows: no refusal
    assert set(found["metrics"]) == {"multi", "image", "tabular"}
    assert {"acc", "bal_acc", "f1"} <= set(found["metrics"]["multi"])
    matrix = np.array(found["confusion"]["rows_true_columns_predicted"])
    assert matrix.sum() == 18 and matrix.sum(1).tolist() == [8, 8, 2]
    head = found["head"]
    assert np.trace(matrix) / 18 == pytest.approx(found["metrics"][head]["acc"])
    assert [row["rows"] for row in found["per_class"]] == [8, 8, 2]
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shown = runner.invoke(app, ["eval", str(run), "--data", str(test)])
    assert "per class" in shown.output and "confusion matrix" in shown.output


def test_eval_on_its_own_table_moved_elsewhere_is_split_as_training_split_it(trained, tmp_path):
    run, table, _ = trained
    copy = tmp_path / "copy.csv"
    pd.read_csv(table).assign(image=lambda f: str(table.parent) + "/" + f["image"]).to_csv(copy, index=False)
    own = runner.invoke(app, ["eval", str(run), "--data", str(table), "--json"])
    assert own.exit_code == 0, own.output
    report = RunFolder(run).read_report()
    assert json.loads(own.stdout)["metrics"]["multi"]["acc"] == pytest.approx(report["metrics"]["test"]["multi"]["acc"])


def test_predict_on_labelled_rows_scores_them_and_warns_only_when_it_cannot_tell(trained, tmp_path):
    run, table, test = trained
    result = runner.invoke(app, ["predict", str(run), "--data", str(test), "--out", str(tmp_path / "p.csv")])
    assert result.exit_code == 0, result.output
    assert "per class" in result.output and "may be among" not in result.output
    assert pd.read_csv(tmp_path / "p.csv").columns[0] == "image"  # named by the unique image path, not a row number
    own = runner.invoke(app, ["predict", str(run), "--data", str(table), "--out", str(tmp_path / "q.csv")])
    assert own.exit_code == 0, own.output
    assert "whose image the run trained on" in own.output  # its training rows are left out, and counted
    moved = table.with_name("gone.csv")
    table.rename(moved)
    try:
        blind = runner.invoke(app, ["predict", str(run), "--data", str(test), "--out", str(tmp_path / "r.csv")])
    finally:
        moved.rename(table)
    assert blind.exit_code == 0 and "may be among" in blind.output


def test_predict_uses_the_head_best_on_validation_and_says_which(trained, tmp_path):
    run, _, test = trained
    val = RunFolder(run).read_report()["metrics"]["val"]
    best = max(("multi", "image", "tabular"), key=lambda h: (val[h]["acc"], h == "multi"))
    result = runner.invoke(app, ["predict", str(run), "--data", str(test), "--out", str(tmp_path / "p.csv")])
    assert f"predicted by the {best} head (the best on validation" in " ".join(result.output.split())
    told = runner.invoke(
        app, ["predict", str(run), "--data", str(test), "--out", str(tmp_path / "q.csv"), "--head", "image"]
    )
    assert "predicted by the image head (asked for with --head)" in " ".join(told.output.split())


def test_a_dry_run_checks_the_data_and_writes_nothing(trained, tmp_path):
    _, table, _ = trained
    out = tmp_path / "run"
    base = ["train", "--dataset", str(table), "--image-column", "image", "--out", str(out), "--dry-run"]
    wrong = runner.invoke(app, [*base, "--target", "knid"])
    assert wrong.exit_code == 2 and "did you mean 'kind'" in wrong.output and "--target" in wrong.output
    right = runner.invoke(app, [*base, "--target", "kind", *sets(TINY)])
    assert right.exit_code == 0, right.output
    assert (
        "method: gaal" in right.output
        and "classes per split" in right.output
        and "dry run, nothing written" in right.output
    )
    assert not out.exists()


def test_two_tables_of_one_name_never_share_a_default_folder_and_no_refusal_suggests_replacing(trained, tmp_path):
    run, table, _ = trained
    other = write_rows(tmp_path / "elsewhere", "train.csv", ["a", "b", "c"] * 30, 0, seed=5)
    flags = {"data.target": "kind", "data.image_column": "image"}
    first = default_run_folder(load_config(flags={**flags, "data.name": str(table)}))
    second = default_run_folder(load_config(flags={**flags, "data.name": str(other)}))
    assert first != second and re.fullmatch(r"train-[0-9a-f]{8}", second.parts[2])
    result = runner.invoke(
        app,
        [
            "train",
            "--dataset",
            str(other),
            "--target",
            "kind",
            "--image-column",
            "image",
            "--out",
            str(run),
            *sets(TINY),
        ],
    )
    assert (
        result.exit_code == 2
        and "another dataset" in result.output
        and "--restart" not in result.output.replace("(--restart would replace that run)", "")
    )


def test_sweep_and_ablate_on_a_table_check_it_and_write_under_its_folder(trained, tmp_path):
    _, table, _ = trained
    base = ["--dataset", str(table), "--image-column", "image", "--results", str(tmp_path / "r"), "--dry-run"]
    wrong = runner.invoke(app, ["sweep", "synthetic/lambda", *base, "--target", "knid"])
    assert wrong.exit_code == 2 and "no such column 'knid'" in wrong.output
    sweep = runner.invoke(app, ["sweep", "synthetic/lambda", *base, "--target", "kind"], env={"COLUMNS": "300"})
    assert sweep.exit_code == 0, sweep.output
    assert re.search(r"lambda/train-[0-9a-f]{8}/\S+/seed\d+", sweep.output)
    ablate = runner.invoke(
        app, ["ablate", "cgs", "ugg", *base, "--target", "kind", "--seeds", "2022"], env={"COLUMNS": "300"}
    )
    assert ablate.exit_code == 0, ablate.output
    assert re.search(r"table2_ablation/train-[0-9a-f]{8}/cgs-false_ugg-false/seed2022", ablate.output)
    assert "synthetic" not in ablate.output.split("runs from")[0]
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "args, says",
    [
        (["eval", "run", "--missing", "table"], "did you mean 'tabular'"),
        (["eval", "run", "--split", "tset"], "did you mean 'test'"),
        (["predict", "run", "--data", "x.csv", "--out", "o.csv", "--head", "fused"], "unknown head 'fused'"),
        (["train", "--lr", "3e-4"], "--set train.lr=VALUE"),
        (["train", "--dataset", "nope.csv"], "--dataset (data.name): no such table file"),
        (["train", "--dataset", "dvmm"], "--dataset (data.name): unknown dataset 'dvmm' (did you mean 'dvm'?)"),
        (["check-method", "gaaal"], "gaal check-method gaaal: unknown method 'gaaal' (did you mean 'gaal'?)"),
    ],
)
def test_a_mistake_is_answered_with_what_to_type(args, says):
    result = runner.invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert says in " ".join(result.output.replace("│", " ").split())


def test_a_setting_of_another_method_is_said_to_change_nothing(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["train", "-m", "concat", "--set", "methods.gaal.epsilon=0.3", "--dry-run", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "methods.gaal.epsilon=0.3 sets gaal's settings, but the method trained is concat" in " ".join(
        result.output.split()
    )


def test_the_data_group_and_the_method_list_read_as_a_user_would():
    assert "inspect a table" in runner.invoke(app, ["data", "--help"]).output
    listing = runner.invoke(app, ["methods"]).output
    assert "seeds/" not in listing and "GAAL" in listing


def test_a_palette_png_with_transparency_decodes_without_warnings(tmp_path):
    path = tmp_path / "sprite.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8) + 90).convert("P", palette=Image.ADAPTIVE, colors=4).save(
        path, transparency=bytes([0, 255, 128, 255])
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pixels = decode(path, 8)
    assert pixels.shape == (3, 8, 8) and int(pixels[0, 0, 0]) == 90


def test_the_progress_display_estimates_the_run_from_its_first_steps():
    now = [0.0]
    bar = EpochProgress(enabled=True, clock=lambda: now[0])
    bar.progress.disable = True
    bar.start_epoch(1, 2, steps=10)  # 20 steps in the run
    for _ in range(6):
        now[0] += 0.5
        bar.step(lambda: {}, force=False)
    # 5 steps timed after the first, 0.5 s each; 14 steps left
    assert bar.run_left() == pytest.approx(7.0)
    assert bar.progress.tasks[0].fields["run"] == "run ~0:00:07 left"
