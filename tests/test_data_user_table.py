"""A user's table: imputation fitted on train, unknown categories, grouped splits, the fitted
preprocessing that travels with a run, class weights and `gaal data inspect`."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from raw_datasets import make_table
from typer.testing import CliRunner

from gaal_cli.cli import app
from gaal_cli.config import DataConfig
from gaal_cli.data import build_data
from gaal_cli.data.preprocessing import MISSING, UNKNOWN, TableState, apply_state, encode, fit_encoding
from gaal_cli.data.problems import Problems
from gaal_cli.data.splits import grouped_split
from gaal_cli.data.table_file import read_table

runner = CliRunner()


def data_config(table, **kw):
    return DataConfig(name=str(table), target="species", image_column="photo", image_size=16, **kw)


def test_imputation_and_indicators_are_fitted_on_train_only():
    train = pd.DataFrame({"w": [1.0, 2.0, np.nan, 10.0], "v": [1.0, 2.0, 3.0, 4.0], "c": ["a", None, "b", "a"]})
    enc = fit_encoding(train, ["w", "v"], ["c"], impute=True)
    assert enc.fill == (2.0, 2.5) and enc.mean[0] == pytest.approx(13 / 3)  # median / mean of the seen values
    assert enc.indicators == ("w",) and enc.missing_code == ("c",)  # v has no gap in train: no indicator
    assert enc.codes("c") == ["a", "b", MISSING, UNKNOWN] and enc.field_lengths == (1, 1, 4, 2)
    test = pd.DataFrame({"w": [np.inf, 1000.0], "v": [np.nan, 1000.0], "c": [None, "zzz"]})
    out = encode(test, enc, Problems("t.csv", ["line 2", "line 3"]))
    std_w, std_v = enc.std
    assert out[0, 0] == pytest.approx((2.0 - enc.mean[0]) / std_w)  # inf is a gap, filled with the train median
    assert out[0, 1] == pytest.approx((2.5 - 2.5) / std_v)
    assert out[:, 2].tolist() == [2.0, 3.0] and out[:, 3].tolist() == [1.0, 0.0]  # missing / unknown codes; flag
    # the test split's extreme values change nothing fitted
    assert fit_encoding(train, ["w", "v"], ["c"], impute=True) == enc


def test_missing_values_are_imputed_by_default_and_counted(tmp_path):
    table = make_table(tmp_path / "user", split=True)
    frame = pd.read_csv(table)
    train_rows = frame.index[frame["split"] == "train"]
    frame.loc[train_rows[:2], "weight"] = np.nan
    frame.loc[frame.index[frame["split"] == "test"][:3], "weight"] = np.inf
    frame.loc[5, "species"] = np.nan  # no label: dropped and counted
    frame.to_csv(table, index=False)
    data = build_data(data_config(table), 0)
    kept = frame.drop(index=5)
    train = kept[kept["split"] == "train"]
    assert data.info["dropped"] == {"no label (column 'species')": 1} and sum(data.info["counts"].values()) == 47
    assert data.info["imputed"] == {"weight": 5}
    enc = data.preprocessing["encoding"]
    assert enc["indicators"] == ["weight"] and enc["fill"][0] == pytest.approx(train["weight"].median())
    assert data.schema.names[-1] == "weight missing" and data.schema.field_lengths[-1] == 2
    assert data.train.tabular[:, -1].sum() == 2 and data.test.tabular[:, -1].sum() == 3
    dropped = build_data(data_config(table, missing="drop"), 0)
    assert dropped.info["dropped"] == {"no label (column 'species')": 1, "missing value (data.missing=drop)": 5}


def test_unseen_category_at_test_time_is_coded_unknown_and_counted(tmp_path):
    table = make_table(tmp_path / "user", split=True)
    frame = pd.read_csv(table)
    test_rows = frame.index[frame["split"] == "test"]
    frame.loc[test_rows[:2], "colour"] = "green"
    frame.to_csv(table, index=False)
    data = build_data(data_config(table), 0)
    assert data.info["unknown_categories"] == {"train": {}, "val": {}, "test": {"colour": 2}}
    column = data.schema.names.index("colour")
    codes = data.preprocessing["encoding"]["categories"]["colour"]
    assert codes == ["red", "tan"] and data.schema.field_lengths[column] == 3
    assert (data.test.tabular[:, column] == 2).sum() == 2 and (data.train.tabular[:, column] < 2).all()


def test_grouped_split_keeps_every_group_in_one_split():
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 60, 400)
    labels = (groups % 4 + (rng.random(400) < 0.2)) % 4  # a group mostly of one class
    split = grouped_split(labels, groups, 0.2, 0.2, 2022)
    for g in np.unique(groups):
        assert len(set(split[groups == g])) == 1
    assert 0.1 < (split == "test").mean() < 0.3 and set(split) == {"train", "val", "test"}
    assert np.array_equal(split, grouped_split(labels, groups, 0.2, 0.2, 2022))


def test_group_column_through_the_table_and_a_leaking_split_column(tmp_path):
    table = make_table(tmp_path / "user", n=60)
    frame = pd.read_csv(table)
    frame["lesion"] = [f"L{i % 20}" for i in range(60)]  # each lesion photographed three times, one class
    frame.to_csv(table, index=False)
    data = build_data(data_config(table, group_column="lesion"), 0)
    assert "lesion" not in data.schema.names and "group 'lesion'" in data.info["split"]
    state = TableState.from_json(data.preprocessing, "p")
    rows = {s: set() for s in ("train", "val", "test")}
    for name in rows:
        split = data.split(name)
        rows[name] = {p for p in split.paths}
    lesion_of = {str(table.parent / p): g for p, g in zip(frame["photo"], frame["lesion"])}
    seen = {s: {lesion_of[p] for p in rows[s]} for s in rows}
    assert not (seen["train"] & seen["val"] or seen["train"] & seen["test"] or seen["val"] & seen["test"])
    assert state.features == ["weight", "colour", "indoor"]
    frame["split"] = ["train", "val", "test"] * 20  # a user's split that puts a lesion in two splits
    frame.to_csv(table, index=False)
    with pytest.raises(Exception, match="group 'L0' is in more than one split"):
        build_data(data_config(table, group_column="lesion"), 0)


def test_preprocessing_state_round_trips_and_encodes_like_training(tmp_path):
    table = make_table(tmp_path / "user", split=True)
    frame = pd.read_csv(table)
    frame.loc[0, "weight"] = np.nan
    frame.to_csv(table, index=False)
    data = build_data(data_config(table), 0)
    saved = json.loads(json.dumps(data.preprocessing))  # plain JSON, as preprocessing.json holds it
    state = TableState.from_json(saved, "preprocessing.json")
    assert state.class_names == data.class_names and state.image_size == 16
    new = read_table(table)
    encoded = apply_state(state, new, table)
    test = (new["split"] == "test").to_numpy()
    assert torch.equal(torch.from_numpy(encoded.tabular[test]), data.test.tabular)
    assert encoded.labels[test].tolist() == data.test.labels.tolist() and not encoded.problems.bad
    assert encoded.ids == [str(i) for i in range(48)]
    new.loc[[0, 1], "colour"] = "purple"  # a category no run has seen, as at predict time
    again = apply_state(state, new, table)
    column = list(data.schema.names).index("colour")
    assert again.tabular[:2, column].tolist() == [2.0, 2.0] and again.notes.counts()["unknown_categories"] == {
        "colour": 2
    }
    with pytest.raises(Exception, match="lacks column"):
        apply_state(state, new.drop(columns=["colour"]), table)


def test_train_saves_the_preprocessing_and_bal_acc(tmp_path, tiny):
    table = make_table(tmp_path / "user", split=True)
    out = tmp_path / "run"
    args = ["train", "--dataset", str(table), "--target", "species", "--image-column", "photo", "-q", "--out", str(out)]
    sets = [a for o in [*tiny, "train.class_weights=balanced"] for a in ("--set", o)]
    result = runner.invoke(app, [*args, *sets])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "preprocessing.json").read_text())
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["preprocessing"] == saved and saved["class_names"] == ["cat", "dog", "fox"]
    report = json.loads((out / "report.json").read_text())
    assert 0 <= report["metrics"]["test"]["multi"]["bal_acc"] <= 1


def test_balanced_class_weights():
    from gaal_cli.data.base import DataBundle, TabularSchema, TensorSplit
    from gaal_cli.methods.base import cross_entropy, weighted_classes
    from gaal_cli.training.engine import class_weights

    labels = torch.tensor([0, 0, 0, 1])
    split = TensorSplit(torch.zeros(4, 3, 2, 2, dtype=torch.uint8), torch.zeros(4, 1), labels)
    data = DataBundle(split, split, split, TabularSchema(("x",), (1,)), ["a", "b", "c"])
    weights = class_weights(data, "balanced", torch.device("cpu"))
    assert weights.tolist() == pytest.approx([4 / 9, 4 / 3, 4 / 3])  # n / (C * n_c), absent class as if 1 row
    assert class_weights(data, "none", torch.device("cpu")) is None
    logits = torch.randn(4, 3)
    plain = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    with weighted_classes(weights):
        weighted = cross_entropy(logits, labels)
    expected = (plain * weights[labels]).sum() / weights[labels].sum()
    assert weighted == pytest.approx(expected.item()) and cross_entropy(logits, labels) == pytest.approx(plain.mean())


def test_data_inspect_reports_and_writes_nothing(tmp_path):
    table = make_table(tmp_path / "user", n=24)
    frame = pd.read_csv(table)
    frame.loc[2, "weight"] = np.nan
    frame.loc[3, "photo"] = "photos/none.jpg"
    frame.to_csv(table, index=False)
    before = sorted(p.name for p in table.parent.rglob("*"))
    args = ["data", "inspect", str(table), "--target", "species", "--image-column", "photo", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output  # training fails on the missing image: so does inspect
    found = json.loads(result.stdout)
    assert "line 5" in found["error"] and "line 5" in result.stderr
    assert found["continuous"] == ["weight"] and found["categorical"] == ["colour", "indoor"]
    assert found["classes"] == {"cat": 8, "dog": 8, "fox": 8} and found["missing"]["weight"] == 1
    assert found["distinct"]["colour"] == 2
    assert found["bad_rows"][0]["row"] == "line 5" and "not found" in found["bad_rows"][0]["reason"]
    assert sum(found["split_counts"]["test"].values()) == 5
    assert sorted(p.name for p in table.parent.rglob("*")) == before
    result = runner.invoke(app, args[:-1])
    assert result.exit_code == 2 and "continuous" in result.output and "line 5" in result.output
    result = runner.invoke(app, [*args, "--skip-bad"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["dropped"] == {"image file not found": 1}
