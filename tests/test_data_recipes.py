"""Each recipe on a miniature raw download in its published layout: prepare, then train one epoch."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from raw_datasets import CELEBA_ATTRIBUTES, make_celeba, make_dvm, make_sun, make_table
from typer.testing import CliRunner

from gaal_cli.cli import app

runner = CliRunner()


def small(batch_size=8):
    options = [
        "data.image_size=16",
        f"data.batch_size={batch_size}",
        "model.feature_dim=16",
        "model.tabular_hidden=[16]",
        "train.epochs=1",
        "train.device=cpu",
    ]
    return [arg for o in options for arg in ("--set", o)]


def prepare(recipe, raw, out, *extra):
    result = runner.invoke(app, ["data", "prepare", recipe, "--raw", str(raw), "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    return json.loads((out / "manifest.json").read_text()), pd.read_csv(out / "table.csv")


def train(tmp_path, *args, batch_size=8):
    out = tmp_path / "run"
    result = runner.invoke(app, ["train", *args, "--out", str(out), "-q", *small(batch_size)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["epochs_run"] == 1 and (out / "DONE").exists()
    return report


def assert_train_standardised(table, columns):
    train = table[table["split"] == "train"][columns]
    assert np.allclose(train.mean(), 0, atol=1e-5) and np.allclose(train.std(ddof=0), 1, atol=1e-4)


def test_dvm_recipe_with_physical_columns_then_one_epoch(tmp_path):
    raw = make_dvm(tmp_path / "raw")
    manifest, table = prepare("dvm", raw, tmp_path / "prep", "--physical", "--min-ads", "10")
    # 3 models keep >= 10 ads: 12 ads each, minus ad 2 of each (no price for 2010), minus one missing Engin_size
    assert manifest["class_names"] == ["2_3 Audi A1", "2_11 Audi A3", "10_1 Abarth 124 Spider"]
    assert sum(manifest["counts"].values()) == 32 and manifest["counts"] == {"train": 12, "val": 4, "test": 16}
    assert manifest["dropped"]["recipe: no entry price for (Genmodel_ID, Reg_year)"] == 4
    assert manifest["dropped"]["recipe: car model with fewer than 10 ads"] == 4
    assert manifest["columns"][:9] == [
        "Adv_year", "Adv_month", "Reg_year", "Runned_Miles", "Price", "Seat_num", "Door_num", "Entry_price",
        "Engine_size",
    ]  # fmt: skip
    assert manifest["columns"][9:] == ["Wheelbase", "Height", "Width", "Length", "Color", "Bodytype", "Gearbox",
                                       "Fuel_type"]  # fmt: skip
    assert manifest["field_lengths"] == [1] * 13 + [5, 2, 2, 2]
    # the first image of each ad, in resized_DVM/<Maker>/<Genmodel>/<Year>/<Color>/
    assert table["image"].str.endswith("image_0.jpg").all()
    assert (table["image"].str.split("/").str.len() == 5).all()
    assert_train_standardised(table, manifest["columns"][:13])
    for split in ("train", "val", "test"):  # stratified: every class in every split
        assert set(table[table["split"] == split]["label"]) == {0, 1, 2}
    # physical values are jittered: the ads of one model no longer share one wheelbase
    assert table.groupby("label")["Wheelbase"].nunique().min() > 1

    report = train(tmp_path, "--dataset", "dvm", "--data-dir", str(tmp_path / "prep"), "--set", "data.augment=true")
    assert report["data"]["classes"] == 3 and report["data"]["counts"] == manifest["counts"]
    assert report["data"]["recipe"]["params"] == {"physical": True, "min_ads": 10, "seed": 2022}


def test_dvm_without_physical_has_13_columns_and_threshold_applies(tmp_path):
    raw = make_dvm(tmp_path / "raw")
    manifest, _ = prepare("dvm", raw, tmp_path / "prep", "--min-ads", "11")
    assert len(manifest["class_names"]) == 2  # 10_1 has only 10 complete ads
    # the Convertible went with 10_1: categories come from the kept rows
    assert len(manifest["columns"]) == 13 and manifest["field_lengths"][9:] == [5, 1, 2, 2]


def test_celeba_recipe_then_one_epoch(tmp_path):
    raw = make_celeba(tmp_path / "raw")
    manifest, table = prepare("celeba", raw, tmp_path / "prep")
    assert manifest["counts"] == {"train": 24, "val": 8, "test": 8}  # the official partition file
    assert manifest["target"] == "Attractive" and "Attractive" not in manifest["columns"]
    assert len(manifest["columns"]) == 39 and manifest["field_lengths"] == [2] * 39
    assert manifest["normalize"] == "imagenet"
    attributes = pd.read_csv(raw / "list_attr_celeba.txt", sep=r"\s+", skiprows=2, header=None)
    expected = (attributes[1 + CELEBA_ATTRIBUTES.index("Attractive")] == 1).astype(int).to_numpy()
    assert np.array_equal(table["label"].to_numpy(), expected)
    assert np.array_equal(table["Young"].to_numpy(), (attributes[40] == 1).astype(int).to_numpy())

    report = train(tmp_path, "--dataset", "celeba", "--data-dir", str(tmp_path / "prep"))
    assert "auroc" in report["metrics"]["test"]["multi"]


def test_celeba_other_target(tmp_path):
    manifest, _ = prepare("celeba", make_celeba(tmp_path / "raw"), tmp_path / "prep", "--target", "Smiling")
    assert manifest["class_names"] == ["not Smiling", "Smiling"] and "Attractive" in manifest["columns"]


def test_sun_recipe_then_one_epoch(tmp_path):
    raw = make_sun(tmp_path / "raw")
    manifest, table = prepare("sun", raw, tmp_path / "prep")
    assert manifest["target"] == "open area" and len(manifest["columns"]) == 101
    assert manifest["counts"] == {"test": 8, "val": 7, "train": 25}  # ceil(0.2 * 40), ceil(0.2 * 32)
    assert set(table["label"]) == {0, 1}
    votes = pd.DataFrame(__import__("scipy.io").io.loadmat(raw / "attributeLabels_continuous.mat")["labels_cv"])
    assert np.array_equal(table["attribute 0"].to_numpy(), (votes[0] >= 0.5).astype(int).to_numpy())
    assert table["image"].iloc[0] == "a/abbey/sun_00000.jpg"
    train(tmp_path, "--dataset", "sun", "--data-dir", str(tmp_path / "prep"), batch_size=5)


def test_sun_threshold_option(tmp_path):
    raw = make_sun(tmp_path / "raw")
    _, strict = prepare("sun", raw, tmp_path / "a", "--threshold", "1.0")
    # 0.5, not lower: the target's votes are 1 or 1/3, and at 0.3 every image has it (one class, refused)
    _, loose = prepare("sun", raw, tmp_path / "b", "--threshold", "0.5")
    assert strict["attribute 0"].sum() < loose["attribute 0"].sum()


def test_csv_with_string_labels_trains_and_records_classes(tmp_path):
    table = make_table(tmp_path / "user")
    report = train(tmp_path, "--dataset", str(table), "--target", "species", "--image-column", "photo")
    data = report["data"]
    assert data["classes"] == 3 and data["counts"] == {"train": 30, "val": 8, "test": 10}
    enc = data["encoding"]
    assert enc["continuous"] == ["weight"] and enc["categorical"] == ["colour", "indoor"]
    assert enc["categories"]["colour"] == ["red", "tan"]
    assert data["class_names"] == ["cat", "dog", "fox"]


def test_csv_split_column_and_type_override(tmp_path):
    table = make_table(tmp_path / "user", split=True)
    report = train(
        tmp_path, "--dataset", str(table), "--target", "species", "--image-column", "photo",
        "--set", "data.continuous=[indoor]",
    )  # fmt: skip
    assert report["data"]["counts"] == {"train": 24, "val": 12, "test": 12}
    assert report["data"]["encoding"]["continuous"] == ["weight", "indoor"]


def test_parquet_table(tmp_path):
    pytest.importorskip("pyarrow")
    csv = make_table(tmp_path / "user")
    pd.read_csv(csv).to_parquet(csv.with_suffix(".parquet"))
    train(tmp_path, "--dataset", str(csv.with_suffix(".parquet")), "--target", "species", "--image-column", "photo")


def test_mmcl_prepared_files_import(tmp_path):
    """MMCL's .pt path lists and labels, headerless feature CSVs and field-length file."""
    user = make_table(tmp_path / "user")
    frame = pd.read_csv(user)
    raw = tmp_path / "mmcl"
    raw.mkdir()
    torch.save([1, 2, 2], raw / "tabular_lengths_all_views.pt")
    parts = {"train": frame.iloc[:30], "val": frame.iloc[30:39], "test": frame.iloc[39:]}
    for split, part in parts.items():
        torch.save([str(user.parent / p) for p in part["photo"]], raw / f"{split}_paths_all_views.pt")
        torch.save(torch.tensor(part.index % 3), raw / f"labels_model_all_{split}_all_views.pt")
        features = pd.DataFrame({"w": part["weight"], "c": (part["colour"] == "tan").astype(int), "i": part["indoor"]})
        features.to_csv(raw / f"dvm_features_{split}_noOH_all_views.csv", header=False, index=False)
    manifest, table = prepare("mmcl", raw, tmp_path / "prep")
    assert manifest["counts"] == {"train": 30, "val": 9, "test": 9}
    assert manifest["field_lengths"] == [1, 2, 2] and manifest["class_names"] == ["0", "1", "2"]
    assert np.array_equal(table["field_1"].to_numpy(), (frame["colour"] == "tan").astype(int).to_numpy())
    train(tmp_path, "--dataset", "mmcl", "--data-dir", str(tmp_path / "prep"))


def test_wrong_recipe_folder_and_foreign_option_are_errors(tmp_path):
    prepare("celeba", make_celeba(tmp_path / "raw"), tmp_path / "prep")
    result = runner.invoke(app, ["train", "--dataset", "dvm", "--data-dir", str(tmp_path / "prep"),
                                 "--out", str(tmp_path / "run")])  # fmt: skip
    assert result.exit_code == 2 and "celeba" in result.output and not (tmp_path / "run").exists()
    result = runner.invoke(app, ["data", "prepare", "celeba", "--raw", str(tmp_path / "raw"), "--out",
                                 str(tmp_path / "p2"), "--physical"])  # fmt: skip
    assert result.exit_code == 2 and "--physical" in result.output and not (tmp_path / "p2").exists()
