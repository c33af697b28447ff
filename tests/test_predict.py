"""`gaal predict`: a finished run predicts a new table from anywhere, in a fresh process; bad rows
and crafted checkpoints are refused as in training; `gaal eval` encodes with the saved preprocessing."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TABLE_TINY as TINY
from raw_datasets import make_celeba, make_table
from typer.testing import CliRunner

from gaal_cli.cli import app
from gaal_cli.data import build_data
from gaal_cli.runs.predictions_file import FILE_NAME, read_predictions
from gaal_cli.training.evaluation import predict_split
from gaal_cli.training.trained_run import TrainedRun

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
CLASSES = ["cat", "dog", "fox"]


def sets(options):
    return [arg for o in options for arg in ("--set", o)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run on a user table with an id column; the table is then copied elsewhere."""
    root = tmp_path_factory.mktemp("predict")
    table = make_table(root / "user", split=True)
    frame = pd.read_csv(table)
    frame.insert(0, "uid", [f"a{i}" for i in range(len(frame))])
    frame.to_csv(table, index=False)
    run = root / "run"
    args = ["train", "--dataset", str(table), "--target", "species", "--image-column", "photo", "-q", "--out", str(run)]
    result = runner.invoke(app, [*args, *sets([*TINY, "data.id_column=uid"])])
    assert result.exit_code == 0, result.output
    return run, table


@pytest.fixture
def moved(trained, tmp_path):
    """The run's table and photos copied to another folder (the training folder is left as it was)."""
    _, table = trained
    shutil.copytree(table.parent, tmp_path / "moved", ignore=shutil.ignore_patterns(".gaal_cache"))
    return tmp_path / "moved" / "table.csv"


def predict(run, data, out, *extra):
    return runner.invoke(app, ["predict", str(run), "--data", str(data), "--out", str(out), *extra])


def eval_path_probabilities(run, table):
    """Softmax of the fused head on the test split, as `gaal eval` computes it (saved preprocessing)."""
    trained = TrainedRun.load(run, {"data.name": str(table)})
    config, state = trained.config, trained.state
    data = build_data(config.data, config.seed, preprocessing=state["preprocessing"])
    method = trained.method(data.schema.field_lengths, data.num_classes)
    logits, labels = predict_split(method, data.test, torch.device("cpu"), 64)
    return torch.softmax(logits["multi"].double(), 1).numpy(), labels.numpy()


def test_predict_round_trip_in_a_fresh_process_from_another_directory(trained, moved, tmp_path):
    run, _ = trained
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    out = tmp_path / "predictions" / "p.csv"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "gaal_cli", "predict", str(run), "--data", str(moved), "--out", str(out)]
    command += ["--head", "multi"]  # the fused head, which the eval path below computes
    done = subprocess.run(command, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    predicted = pd.read_csv(out)
    source = pd.read_csv(moved)
    assert list(predicted.columns) == ["uid", "prediction", *(f"prob_{c}" for c in CLASSES)]
    assert predicted["uid"].tolist() == source["uid"].tolist()  # one row per input row, ids kept
    probs = predicted[[f"prob_{c}" for c in CLASSES]].to_numpy()
    assert np.allclose(probs.sum(1), 1, atol=1e-6)
    assert predicted["prediction"].tolist() == [CLASSES[i] for i in probs.argmax(1)]
    # the test rows: the probabilities and the accuracy of the eval path; accuracy per split
    test = (source["split"] == "test").to_numpy()
    for name in ("train", "val", "test"):
        assert f"on the {int((source['split'] == name).sum())} labelled {name} rows" in done.stdout
    expected, labels = eval_path_probabilities(run, moved)
    assert np.allclose(probs[test], expected, atol=1e-6)
    kept = read_predictions(run / FILE_NAME)  # the run's own test predictions: named as predict names rows
    assert list(kept.ids) == source["uid"][test].tolist() and kept.labels.tolist() == labels.tolist()
    result = runner.invoke(app, ["eval", str(run), "--data", str(moved), "--json"])
    assert result.exit_code == 0, result.output
    accuracy = float(np.mean(probs[test].argmax(1) == labels))
    assert json.loads(result.stdout)["metrics"]["multi"]["acc"] == pytest.approx(accuracy)


def test_unseen_categories_map_to_unknown_and_are_counted(trained, moved, tmp_path):
    run, _ = trained
    frame = pd.read_csv(moved).drop(columns=["species"])  # pure prediction: no target column
    frame.loc[[3, 7], "colour"] = "purple"
    frame.loc[4, "weight"] = np.nan
    frame.to_csv(moved, index=False)
    result = predict(run, moved, tmp_path / "p.csv")
    assert result.exit_code == 0, result.output
    assert "coded unknown: colour 2" in result.output and "imputed: weight 1" in result.output
    assert "accuracy" not in result.output
    assert len(pd.read_csv(tmp_path / "p.csv")) == 48


def test_bad_row_is_named_exit_2_nothing_written_and_skip_bad_counts(trained, moved, tmp_path):
    run, _ = trained
    frame = pd.read_csv(moved, dtype={"weight": str})
    frame.loc[5, "weight"] = "heavy"
    frame.to_csv(moved, index=False)
    out = tmp_path / "out" / "p.csv"
    result = predict(run, moved, out)
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert str(moved) in message and "line 7" in message and "'weight'" in message and "not a number" in message
    assert not out.exists() and not out.parent.exists()
    (moved.parent / "photos" / "p9.jpg").unlink()  # a second bad row: its image is gone
    result = predict(run, moved, out, "--skip-bad")
    assert result.exit_code == 0, result.output
    assert "skipped 2 bad rows" in result.output
    ids = pd.read_csv(out)["uid"].tolist()
    assert len(ids) == 46 and "a5" not in ids and "a9" not in ids
    assert sorted(p.name for p in out.parent.iterdir()) == ["p.csv"]  # no temporary file left


def test_missing_tabular_predicts_from_the_image_alone(trained, moved, tmp_path):
    run, _ = trained
    frame = pd.read_csv(moved)
    result = predict(run, moved, tmp_path / "image.csv", "--head", "image")
    assert result.exit_code == 0, result.output
    frame.drop(columns=["weight", "colour", "indoor"]).to_csv(moved, index=False)  # the table is not read
    result = predict(run, moved, tmp_path / "missing.csv", "--missing", "tabular")
    assert result.exit_code == 0, result.output
    image_head = pd.read_csv(tmp_path / "image.csv")
    missing = pd.read_csv(tmp_path / "missing.csv")
    assert np.allclose(missing.filter(like="prob_"), image_head.filter(like="prob_"), atol=1e-6)


class Planted:
    """Unpickling this would create a folder: a stand-in for code a crafted checkpoint runs."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_crafted_checkpoints_are_refused(trained, moved, tmp_path):
    run, _ = trained
    saved = torch.load(run / "checkpoint.pt", weights_only=True)
    crafted = tmp_path / "crafted.pt"
    marker = tmp_path / "code-ran"
    torch.save({**saved, "extra": Planted(marker)}, crafted)
    out = tmp_path / "p.csv"
    result = predict(crafted, moved, out)
    assert result.exit_code == 2 and "refused" in result.output and "mkdir" in result.output
    assert not marker.exists() and not out.exists()
    result = runner.invoke(app, ["eval", str(crafted)])
    assert result.exit_code == 2 and not marker.exists()
    model = dict(saved["model"])
    model.pop(next(iter(model)))
    torch.save({**saved, "model": model}, crafted)
    result = predict(crafted, moved, out)
    assert result.exit_code == 2 and "does not match" in result.output and not out.exists()
    torch.save({**saved, "config": ["not", "a", "mapping"]}, crafted)
    result = predict(crafted, moved, out)
    assert result.exit_code == 2 and "expected a mapping" in result.output and not out.exists()
    torch.save({**saved, "preprocessing": None}, crafted)  # a run on the synthetic data carries none
    result = predict(crafted, moved, out)
    assert result.exit_code == 2 and "no preprocessing record" in result.output and not out.exists()
    torch.save({**saved, "preprocessing": {**saved["preprocessing"], "features": 3}}, crafted)
    result = predict(crafted, moved, out)
    assert result.exit_code == 2 and "malformed" in result.output and not out.exists()


def test_eval_encodes_with_the_saved_preprocessing(trained, moved):
    run, _ = trained
    report = json.loads((run / "report.json").read_text())
    frame = pd.read_csv(moved)
    train = frame["split"] == "train"
    frame.loc[train, "weight"] = frame.loc[train, "weight"] * 10  # a refit would move the mean and std
    frame.to_csv(moved, index=False)
    trained = TrainedRun.load(run, {"data.name": str(moved)})
    state, config = trained.state, trained.config
    data = build_data(config.data, config.seed, preprocessing=state["preprocessing"])
    refit = build_data(config.data, config.seed)
    assert data.preprocessing["encoding"] == state["preprocessing"]["encoding"]
    assert refit.preprocessing["encoding"] != state["preprocessing"]["encoding"]
    result = runner.invoke(app, ["eval", str(run), "--data", str(moved), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)["metrics"]
    assert metrics["multi"]["acc"] == pytest.approx(report["metrics"]["test"]["multi"]["acc"])


def test_prepared_dataset_run_predicts_on_its_table(tmp_path):
    raw = make_celeba(tmp_path / "raw")
    prep = tmp_path / "prep"
    result = runner.invoke(app, ["data", "prepare", "celeba", "--raw", str(raw), "--out", str(prep)])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    args = ["train", "--dataset", "celeba", "--data-dir", str(prep), "-q", "--out", str(run)]
    result = runner.invoke(app, [*args, *sets([*TINY, "train.epochs=1"])])
    assert result.exit_code == 0, result.output
    out = tmp_path / "p.csv"
    result = predict(run, prep / "table.csv", out)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(prep / "table.csv")
    predicted = pd.read_csv(out)
    assert predicted["image"].tolist() == table["image"].tolist()  # the image names the row, first
    test = (table["split"] == "test").to_numpy()
    accuracy = float(np.mean(predicted.filter(like="prob_").to_numpy()[test].argmax(1) == table["label"][test]))
    report = json.loads((run / "report.json").read_text())
    assert report["metrics"]["test"]["multi"]["acc"] == pytest.approx(accuracy)
    kept = read_predictions(run / FILE_NAME)  # a prepared table's test rows, named by their image cell
    assert list(kept.ids) == table["image"][test].tolist()
    assert kept.correct("multi").mean() == pytest.approx(accuracy)
    output = " ".join(result.output.split())
    assert f"accuracy {accuracy:.4f} on the {int(test.sum())} labelled test rows" in output
    assert "labelled train rows (the run trained on these rows)" in output
    raw_table = tmp_path / "raw.csv"
    pd.DataFrame({"image": table["image"]}).to_csv(raw_table, index=False)
    result = predict(run, raw_table, tmp_path / "q.csv")
    assert result.exit_code == 2 and "prepared format" in " ".join(result.output.split())
