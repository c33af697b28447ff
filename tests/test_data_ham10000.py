"""The HAM10000 recipe on a miniature release: layouts, the lesion-grouped split, dx_type, bad rows.

`--skip-bad` is passed where a test is about something else: until the shared missing-value
policy imputes, the rows with an empty age are bad rows too.
"""

import json

import numpy as np
import pandas as pd
from raw_datasets import make_ham10000
from typer.testing import CliRunner

from gaal_cli.cli import app
from gaal_cli.data.ham10000 import read_metadata
from gaal_cli.data.splits import grouped_split

runner = CliRunner()
HAM_BAD_ROWS_REASONS = [  # one row each in the miniature made with bad=True
    "not one of the 7 HAM10000 diagnoses",
    "no image ISIC_9000002.jpg in HAM10000_images_part_1/ or HAM10000_images_part_2/",
    "no lesion_id",
    "age is not a number",
    "image_id listed on an earlier line too",
]


def prepare(raw, out, *extra):
    result = runner.invoke(app, ["data", "prepare", "ham10000", "--raw", str(raw), "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    return json.loads((out / "manifest.json").read_text()), pd.read_csv(out / "table.csv")


def lesion_of_each_row(raw, table):
    meta = pd.read_csv(raw / "HAM10000_metadata.csv", dtype=str).drop_duplicates("image_id")
    image_id = table["image"].str.split("/").str[-1].str.removesuffix(".jpg")
    return image_id.map(meta.set_index("image_id")["lesion_id"])


def test_no_lesion_in_two_splits_and_every_class_in_every_split(tmp_path):
    raw = make_ham10000(tmp_path / "raw", missing_age=False)
    manifest, table = prepare(raw, tmp_path / "prep")
    lesions = lesion_of_each_row(raw, table)
    assert lesions.notna().all()
    assert table.groupby(lesions)["split"].nunique().max() == 1
    assert manifest["class_names"] == ["bcc", "bkl", "mel", "nv"]
    assert (pd.crosstab(table["label"], table["split"]) > 0).all().all()
    assert "lesion_id" in manifest["split"] and manifest["recipe"]["params"]["seed"] == 2022


def test_dx_type_is_left_out_unless_asked_for(tmp_path):
    raw = make_ham10000(tmp_path / "raw")
    manifest, _ = prepare(raw, tmp_path / "prep", "--skip-bad")
    assert "dx_type" not in manifest["columns"] and {"age", "sex", "localization"} <= set(manifest["columns"])
    manifest, table = prepare(raw, tmp_path / "with", "--skip-bad", "--include-dx-type")
    assert "dx_type" in manifest["columns"] and manifest["recipe"]["params"]["include_dx_type"] is True
    assert table["dx_type"].nunique() == 2


def test_two_part_folders_and_one_folder_give_the_same_table(tmp_path):
    parts = make_ham10000(tmp_path / "parts")
    assert (parts / "HAM10000_images_part_2").is_dir()
    one = make_ham10000(tmp_path / "one", folders=("images",))
    _, from_parts = prepare(parts, tmp_path / "p1", "--skip-bad")
    _, from_one = prepare(one, tmp_path / "p2", "--skip-bad")
    assert from_parts["image"].str.startswith("HAM10000_images_part_").all()
    assert from_one["image"].str.startswith("images/").all()
    names = from_parts["image"].str.split("/").str[-1]
    assert names.tolist() == from_one["image"].str.split("/").str[-1].tolist()
    pd.testing.assert_frame_equal(from_parts.drop(columns="image"), from_one.drop(columns="image"))


def test_empty_age_is_missing_and_unknown_is_a_category(tmp_path):
    raw = make_ham10000(tmp_path / "raw")
    meta = read_metadata(raw / "HAM10000_metadata.csv")
    assert meta["age"].isna().sum() == 2 + 3  # lesion 4 of nv (2 images), lesion 2 of mel (3 images)
    assert (meta["sex"] == "unknown").any() and meta["sex"].notna().all()
    assert (meta["localization"] == "unknown").any()


def test_bad_rows_are_reported_then_dropped_and_counted_with_skip_bad(tmp_path):
    raw = make_ham10000(tmp_path / "raw", bad=True)
    result = runner.invoke(app, ["data", "prepare", "ham10000", "--raw", str(raw), "--out", str(tmp_path / "prep")])
    assert result.exit_code == 2 and "HAM10000_metadata.csv" in result.output
    assert "line 2 (ISIC_9000001)" in result.output and "'xyz'" in result.output
    assert not (tmp_path / "prep").exists()
    manifest, table = prepare(raw, tmp_path / "prep", "--skip-bad")
    for reason in HAM_BAD_ROWS_REASONS:
        assert sum(n for key, n in manifest["dropped"].items() if reason in key) == 1, (reason, manifest["dropped"])
    assert not table["image"].str.contains("ISIC_90000").any()


def test_grouped_split_keeps_groups_whole_and_is_stratified():
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(300), rng.integers(1, 5, 300))
    labels = (groups % 3 == 0).astype(int) + (groups % 7 == 0)  # three classes of unequal size
    split = grouped_split(labels, groups, 0.2, 0.25, seed=5)
    frame = pd.DataFrame({"group": groups, "label": labels, "split": split})
    assert frame.groupby("group")["split"].nunique().max() == 1
    share = pd.crosstab(frame["label"], frame["split"], normalize="index")
    assert np.allclose(share["test"], 0.2, atol=0.05) and np.allclose(share["val"], 0.8 * 0.25, atol=0.05)
    assert np.array_equal(split, grouped_split(labels, groups, 0.2, 0.25, seed=5))
    assert not np.array_equal(split, grouped_split(labels, groups, 0.2, 0.25, seed=6))


def test_prepared_ham10000_trains_one_epoch(tmp_path):
    prepare(make_ham10000(tmp_path / "raw"), tmp_path / "prep", "--skip-bad")
    options = ["data.image_size=16", "data.batch_size=8", "model.feature_dim=16", "model.tabular_hidden=[16]",
               "train.epochs=1", "train.device=cpu"]  # fmt: skip
    args = ["train", "--dataset", "ham10000", "--data-dir", str(tmp_path / "prep"), "--out", str(tmp_path / "run")]
    result = runner.invoke(app, [*args, "-q", *[a for o in options for a in ("--set", o)]])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["data"]["recipe"]["name"] == "ham10000" and report["epochs_run"] == 1


def test_ablate_on_ham10000_uses_its_own_ablation_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the file's data.dir, as a user has it: a dry run checks the inputs are there
    (tmp_path / "data" / "ham10000").mkdir(parents=True)
    (tmp_path / "data" / "ham10000" / "manifest.json").write_text("{}")
    args = ["ablate", "cgs", "ugg", "--dataset", "ham10000", "--dry-run", "--results", str(tmp_path / "runs")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "ham10000/table2_ablation: 9 runs" in result.output
