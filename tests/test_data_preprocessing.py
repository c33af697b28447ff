"""Column typing, encoding with training statistics, the preprocessing record (versions 1 and 2),
and the seeded stratified split."""

import numpy as np
import pandas as pd
import pytest
from raw_datasets import make_table

from gaal_cli.config import DataConfig
from gaal_cli.data import build_data
from gaal_cli.data.column_roles import check_named_columns, infer_roles
from gaal_cli.data.preprocessing import STATE_FORMAT, TableState, apply_state, encode, fit_encoding, read_record
from gaal_cli.data.problems import Problems
from gaal_cli.data.splits import stratified_split
from gaal_cli.data.table_file import read_table
from gaal_cli.foundation.errors import GaalError


def test_split_reproduces_the_dvm_split_sizes():
    """286 classes, 176,414 ads: 70,565 / 17,642 / 88,207 as in the MMCL recipe."""
    rng = np.random.default_rng(0)
    sizes = rng.integers(150, 1050, 286)
    short = 176_414 - sizes.sum()
    sizes += short // 286
    sizes[: short % 286] += 1
    assert sizes.sum() == 176_414 and sizes.min() >= 100
    labels = np.repeat(np.arange(286), sizes)
    split = stratified_split(labels, 0.5, 0.2, 2022)
    counts = {s: int((split == s).sum()) for s in ("train", "val", "test")}
    assert counts == {"train": 70_565, "val": 17_642, "test": 88_207}
    for cls in (0, 100, 285):  # stratified: each class split in the same proportions
        rows = labels == cls
        assert abs((split[rows] == "test").mean() - 0.5) <= 1 / rows.sum()


def test_split_is_deterministic_per_seed():
    labels = np.repeat(np.arange(5), 20)
    a, b, c = (stratified_split(labels, 0.2, 0.2, s) for s in (1, 1, 2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_plain_roles_and_overrides():
    frame = pd.DataFrame(
        {"price": [1.5, 2.0, 3.5, 4.0], "doors": [2, 3, 4, 5], "flag": [0, 1, 0, 1], "colour": ["r", "g", "b", "r"]}
    )
    cols = list(frame.columns)
    assert infer_roles(frame, cols).types() == (["price", "doors"], ["flag", "colour"])
    overridden = infer_roles(frame, cols, categorical=["doors"], continuous=["flag"])
    assert overridden.types() == (["price", "flag"], ["doors", "colour"])
    with pytest.raises(GaalError, match="nosuch"):
        check_named_columns({"data.categorical": ["nosuch"]}, cols, "t.csv")


def test_encoding_uses_training_statistics_and_numeric_category_order():
    train = pd.DataFrame({"x": [1.0, 3.0], "size": [2, 10]})
    enc = fit_encoding(train, ["x"], ["size"])
    assert enc.mean == (2.0,) and enc.std == (1.0,)
    assert enc.categories["size"] == ["2", "10"] and enc.field_lengths == (1, 2)
    rows = pd.DataFrame({"x": [5.0, 2.0], "size": [10, 2]})
    problems = Problems("t.csv", ["line 2", "line 3"])
    assert np.array_equal(encode(rows, enc, problems), np.array([[3.0, 1.0], [0.0, 0.0]], dtype=np.float32))
    assert not problems.bad


def test_unseen_category_is_a_named_error():
    enc = fit_encoding(pd.DataFrame({"c": ["a", "b"]}), [], ["c"])
    problems = Problems("t.csv", ["line 2", "line 3"])
    encode(pd.DataFrame({"c": ["a", "z"]}), enc, problems)
    with pytest.raises(GaalError) as err:
        problems.raise_or_keep()
    assert "line 3" in str(err.value) and "'z'" in str(err.value) and err.value.field == "c"
    skipping = Problems("t.csv", ["line 2", "line 3"], skip=True, bad=dict(problems.bad))
    assert skipping.raise_or_keep().tolist() == [True, False]


def test_text_in_a_continuous_column_is_a_named_bad_row():
    enc = fit_encoding(pd.DataFrame({"x": [1.0, 3.0]}), ["x"], [], impute=True)
    problems = Problems("t.csv", ["line 2", "line 3"])
    encode(pd.DataFrame({"x": ["2.5", "heavy"]}), enc, problems)
    assert problems.bad == {1: ("'heavy' is not a number", "x", None)}


def test_a_version_1_record_still_reads_and_encodes_as_version_2(tmp_path):
    """Runs saved before column roles (format_version 1) keep predicting: every feature is read
    as it is, which is what version 2 records for a table of plain numbers and categories."""
    table = make_table(tmp_path / "user", split=True)
    cfg = DataConfig(name=str(table), target="species", image_column="photo", image_size=16, cache=False)
    saved = build_data(cfg, 0).preprocessing
    assert saved["format"] == STATE_FORMAT and saved["format_version"] == 2
    old = {k: v for k, v in saved.items() if k != "roles"} | {"format_version": 1}
    v1, v2 = read_record(old, "old"), read_record(saved, "new")
    assert isinstance(v1, TableState) and {r.reason for r in v1.roles.columns.values()} == {"format_version 1"}
    assert v1.roles.types() == v2.roles.types() and v1.field_lengths == v2.field_lengths
    frame = read_table(table)
    assert np.array_equal(apply_state(v1, frame, table).tabular, apply_state(v2, frame, table).tabular)
    assert v1.to_json()["format_version"] == 2  # saved again, a record is of the current version


@pytest.mark.parametrize("record", [None, {}, {"format": "gaal-table-preprocessing", "format_version": 3}])
def test_no_usable_record_is_a_named_error(record):
    with pytest.raises(GaalError, match="preprocessing|format_version"):
        read_record(record, "run/checkpoint.pt")
