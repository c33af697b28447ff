"""Hostile input, round four (issue 29), second group: wrong results shown as right.

- `gaal compare` and `gaal report` pair only runs whose predictions files are their runs' own
  (method, config, dataset and its generator settings, split, report.json's metrics recomputed
  from the file) and hold finite logits; runs of different datasets are never paired.
- `gaal report` says how many seeds a mean is over when a seed's metric is NaN, and names a
  method whose every seed is NaN.
- A run whose outputs are NaN stops naming where (as a NaN loss does) and check-method fails it;
  logits beyond float16's range are kept (float32), not dropped.
- `gaal predict` writes cells a spreadsheet would run as formulas as text.
- Smaller: `compare A A` says so; the report names the file it could not pair; `eval
  --write-predictions` repairs a file that fails its checks.
"""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hostile import TINY_RUN, assert_refused, invoke, train_tiny
from raw_datasets import make_table
from test_report import fake_run

from gaal_cli.config import load_config
from gaal_cli.foundation.errors import GaalError
from gaal_cli.runs.folder import RunFolder
from gaal_cli.runs.predictions_file import FILE_NAME, read_predictions, write_predictions


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny runs of seed 1: concat and gaal on the default embedded set, gaal on a noisier one
    (the same sample ids and labels, another dataset)."""
    root = tmp_path_factory.mktemp("runs")
    train_tiny(root / "concat" / "seed1", "method=concat", "seed=1")
    train_tiny(root / "gaal" / "seed1", "method=gaal", "seed=1")
    train_tiny(root / "noisy" / "seed1", "method=gaal", "seed=1", "data.synthetic.tabular_noise=1.5")
    return root


def copy(runs, name, tmp_path):
    return Path(shutil.copytree(runs / name, tmp_path / name))


def rewrite(file: Path, change) -> None:
    """Write the predictions file again with `change(ids, labels, logits, meta)` applied."""
    p = read_predictions(file)
    logits = {head: p.logits(head) for head in p.heads}
    ids, labels, meta = list(p.ids), p.labels.copy(), dict(p.meta, split=p.split)
    change(ids, labels, logits, meta)
    file.unlink()
    write_predictions(file, ids, labels, logits, meta)


# ---------------------------------------------------------------- pairing only what can be paired


def test_compare_never_pairs_runs_of_different_datasets_that_share_ids_and_labels(runs):
    a = read_predictions(runs / "noisy" / "seed1" / FILE_NAME)
    b = read_predictions(runs / "concat" / "seed1" / FILE_NAME)
    assert a.ids == b.ids and (a.labels == b.labels).all()  # what made them look pairable
    result = invoke("compare", runs / "noisy", runs / "concat")
    assert_refused(result, "data.synthetic.tabular_noise", "different data")


def test_compare_refuses_another_runs_predictions_file(runs, tmp_path):
    gaal = copy(runs, "gaal", tmp_path)
    shutil.copy(runs / "concat" / "seed1" / FILE_NAME, gaal / "seed1" / FILE_NAME)
    result = invoke("compare", gaal, runs / "concat")
    assert_refused(result, str(gaal / "seed1" / FILE_NAME), "not this run's predictions file", "--write-predictions")


def test_compare_refuses_a_crafted_predicted_array(runs, tmp_path):
    gaal = copy(runs, "gaal", tmp_path)
    file = gaal / "seed1" / FILE_NAME

    def perfect(ids, labels, logits, meta):
        for values in logits.values():
            values[:] = 0
            values[np.arange(len(labels)), labels] = 1  # every sample right

    rewrite(file, perfect)
    result = invoke("compare", gaal, runs / "concat")
    assert_refused(result, str(file), "report.json says", "predicted.")
    assert "1.0000 |" not in result.output


def test_compare_refuses_non_finite_logits(runs, tmp_path):
    from safetensors.numpy import load, save

    gaal = copy(runs, "gaal", tmp_path)
    file = gaal / "seed1" / FILE_NAME
    tensors = load(file.read_bytes())
    with open(file, "rb") as fh:
        header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))["__metadata__"]
    tensors["logits.multi"][3, 1] = np.nan
    file.write_bytes(save(tensors, metadata=header))
    result = invoke("compare", gaal, runs / "concat")
    assert_refused(result, str(file), "logits.multi", "NaN or infinite")


def test_report_names_the_file_it_could_not_pair(runs, tmp_path):
    root = tmp_path / "results"
    for name in ("gaal", "concat"):
        shutil.copytree(runs / name, root / "t" / name)
    bad = root / "t" / "gaal" / "seed1" / FILE_NAME
    shutil.copy(runs / "concat" / "seed1" / FILE_NAME, bad)
    result = invoke("report", root, "--out", tmp_path / "rep")
    assert result.exit_code == 0, result.output
    assert "warning:" in result.output and str(bad) in result.output
    table = (tmp_path / "rep" / "table1.md").read_text()
    assert "ᵗ" in table and "Not paired by sample" in table and str(bad) in table


# ---------------------------------------------------------------- NaN metrics in the report


def test_report_counts_only_the_seeds_a_mean_is_over(tmp_path):
    root = tmp_path / "results"
    for seed, acc in ((1, 0.8), (2, None), (3, 0.7)):
        fake_run(root, "t1", "gaal", seed, [], (acc, 0.5, 0.5))
        fake_run(root, "t1", "concat", seed, ["method=concat"], (0.6, 0.5, 0.5))
    nan_run = root / "t1" / "gaal" / "seed2" / "report.json"
    report = json.loads(nan_run.read_text())
    report["metrics"]["test"]["multi"] = {"acc": None}  # written as null: NaN
    nan_run.write_text(json.dumps(report))
    result = invoke("report", root, "--out", tmp_path / "rep")
    assert result.exit_code == 0, result.output
    assert str(nan_run.parent) in result.output and "null" in result.output
    table = (tmp_path / "rep" / "table1.md").read_text()
    gaal_row = next(line for line in table.splitlines() if line.startswith("| gaal "))
    assert "0.7500 ± 0.0707" in gaal_row and "(2 of 3 seeds)" in gaal_row


def test_report_names_a_method_whose_every_seed_is_nan(tmp_path):
    root = tmp_path / "results"
    for dataset in ("synthetic", "t.csv"):
        for seed in (1, 2):
            for method, acc in (("concat", 0.6), ("gaal", 0.7), ("daft", 0.65), ("max", None)):
                table = [f"data.name={dataset}", "data.target=y", "data.image_column=p"]
                data = table if dataset != "synthetic" else []
                fake_run(root / dataset, "t1", method, seed, [f"method={method}", *data], (acc or 0.1, 0.5, 0.5))
                if acc is None:
                    file = root / dataset / "t1" / method / f"seed{seed}" / "report.json"
                    report = json.loads(file.read_text())
                    report["metrics"]["test"]["multi"]["acc"] = None
                    file.write_text(json.dumps(report))
    result = invoke("report", root / "synthetic", root / "t.csv", "--out", tmp_path / "rep")
    assert result.exit_code == 0, result.output
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "Average rank" in text and "NaN in every seed): max" in text


# ---------------------------------------------------------------- non-finite outputs, float16 overflow


def scaled_concat(name: str, scale: float):
    """A method registered as `name`: concat whose logits are multiplied by `scale` at prediction."""
    from gaal_cli.methods.concat import Concat, ConcatSettings
    from gaal_cli.methods.registry import METHODS, MethodSpec

    class Scaled(Concat):
        def predict(self, image, tabular):
            return type(p := super().predict(image, tabular))(*(None if x is None else x * scale for x in p))

    Scaled.__qualname__ = f"Scaled_{name}"
    return name, MethodSpec(Scaled, ConcatSettings), METHODS


@pytest.fixture
def registered(monkeypatch):
    def register(name, scale):
        name, spec, methods = scaled_concat(name, scale)
        monkeypatch.setitem(methods, name, spec)
        return name

    return register


def test_a_run_whose_logits_turn_nan_stops_naming_where(tmp_path, registered):
    from gaal_cli.training.engine import train

    name = registered("nan_logits", float("nan"))
    with pytest.raises(GaalError, match="NaN or infinite .* on the val split after epoch 1"):
        train(load_config(overrides=[*TINY_RUN, f"method={name}"]), tmp_path / "run", show_progress=False)
    assert not RunFolder(tmp_path / "run").done


def test_check_method_fails_a_method_whose_logits_are_nan(tmp_path, registered):
    from gaal_cli.training.method_checks import check_method

    name = registered("nan_logits", float("nan"))
    checks = check_method(name, tmp_path, quick=True)
    assert not checks[0].passed and "NaN or infinite" in checks[0].reason


def test_logits_beyond_float16_keep_their_predictions_file(tmp_path, registered):
    from gaal_cli.training.method_checks import check_method

    name = registered("huge_logits", 1e6)
    checks = check_method(name, tmp_path, quick=True)
    assert checks[0].passed, checks[0].reason
    run = tmp_path / "run"
    predictions = read_predictions(run / FILE_NAME)
    report = json.loads((run / "report.json").read_text())
    assert np.abs(predictions.logits("multi")).max() > 65504
    assert predictions.correct("multi").mean() == pytest.approx(report["metrics"]["test"]["multi"]["acc"])


def test_float16_overflow_is_kept_as_float32_when_written(tmp_path):
    logits = np.array([[1e6, -1e6], [3.0, 70000.0]], dtype=np.float32)
    file = write_predictions(tmp_path / FILE_NAME, ["a", "b"], np.array([0, 1]), {"multi": logits})
    assert np.array_equal(read_predictions(file).logits("multi"), logits)


# ---------------------------------------------------------------- spreadsheet formulas in predict's CSV


FORMULAS = ['=HYPERLINK("http://x","y")', "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A9)", "\t=1", "\r=1"]


def test_predict_writes_formula_cells_as_text(tmp_path):
    """Ids a spreadsheet would run (OWASP's CSV injection), and one with a carriage return that a
    reader would split the row at, come back as the text they were."""
    from hostile import TABLE_RUN, sets

    table = make_table(tmp_path / "user", n=24)
    frame = pd.read_csv(table)
    frame.insert(0, "uid", [f"{FORMULAS[i % len(FORMULAS)]}{i}" for i in range(len(frame))])
    frame.to_csv(table, index=False, quoting=csv.QUOTE_NONNUMERIC)
    run, out = tmp_path / "run", tmp_path / "predicted.csv"
    args = ["--dataset", table, "--target", "species", "--image-column", "photo", "-q", "--out", run]
    assert invoke("train", *args, *sets([*TABLE_RUN, "data.id_column=uid"])).exit_code == 0
    result = invoke("predict", run, "--data", table, "--out", out)
    assert result.exit_code == 0, result.output
    with open(out, newline="") as fh:
        rows = list(csv.reader(fh))
    assert len(rows) == 25 and [row[0] for row in rows[1:]] == ["'" + uid for uid in frame["uid"]]
    assert not [c for row in rows for c in row if c.startswith(("=", "+", "-", "@", "\t", "\r"))]


# ---------------------------------------------------------------- smaller


def test_compare_a_with_itself_says_so(runs):
    result = invoke("compare", runs / "gaal", runs / "gaal")
    assert result.exit_code == 0, result.output
    assert "compared with itself" in result.output and "+0.0000" in result.output


def test_write_predictions_repairs_a_file_that_fails_its_checks(runs, tmp_path):
    gaal = copy(runs, "gaal", tmp_path) / "seed1"
    original = (gaal / FILE_NAME).read_bytes()
    (gaal / FILE_NAME).write_bytes(original[:100])  # cut short
    result = invoke("eval", gaal, "--write-predictions")
    assert result.exit_code == 0, result.output
    assert "replaced" in result.output and "untouched" not in result.output
    assert (gaal / FILE_NAME).read_bytes() == original
    again = invoke("eval", gaal, "--write-predictions")
    assert again.exit_code == 0 and "untouched" in again.output


def test_a_predictions_file_of_another_config_is_refused(runs, tmp_path):
    gaal = copy(runs, "gaal", tmp_path) / "seed1"
    config = yaml.safe_load((gaal / "config.yaml").read_text())
    config["methods"]["gaal"]["epsilon"] = 0.123  # the run's config changed after its file was written
    (gaal / "config.yaml").write_text(yaml.safe_dump(config))
    result = invoke("compare", gaal, runs / "concat" / "seed1")
    assert_refused(result, str(gaal / FILE_NAME), "config_sha256")
