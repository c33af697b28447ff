"""Bad data: each problem is an error naming file, row and column (exit 2, nothing written),
or, with --skip-bad, dropped and counted."""

import json

import numpy as np
import pandas as pd
import pytest
from raw_datasets import make_celeba, make_table, write_jpeg
from typer.testing import CliRunner

from gaal_cli.cli import app
from gaal_cli.config import DataConfig
from gaal_cli.data import build_data

runner = CliRunner()
SMALL = [
    arg
    for o in ("data.image_size=16", "data.batch_size=8", "model.feature_dim=16", "model.tabular_hidden=[16]",
              "train.epochs=1", "train.device=cpu")
    for arg in ("--set", o)
]  # fmt: skip


def run(tmp_path, table, *extra):
    out = tmp_path / "run"
    args = ["train", "--dataset", str(table), "--target", "species", "--image-column", "photo", "--out", str(out)]
    return runner.invoke(app, [*args, "-q", *SMALL, *extra]), out


def edit(table, row, column, value):
    frame = pd.read_csv(table)
    frame[column] = frame[column].astype(object)
    frame.loc[row, column] = value
    frame.to_csv(table, index=False)


def corrupt_missing(table):
    (table.parent / "photos" / "p5.jpg").unlink()
    return "line 7", "image file not found", "p5.jpg", None


def corrupt_not_an_image(table):
    (table.parent / "photos" / "p6.jpg").write_bytes(b"this is no jpeg")
    return "line 8", "unreadable image", "p6.jpg", None


def corrupt_truncated(table):
    path = table.parent / "photos" / "p9.jpg"
    path.write_bytes(path.read_bytes()[:200])  # header intact, pixels cut: found when decoding
    return "line 11", "unreadable image", "p9.jpg", None


def corrupt_nan(table):
    edit(table, 3, "weight", None)
    return "line 5", "missing value", None, "weight"


def corrupt_inf(table):
    edit(table, 6, "weight", "inf")  # pandas reads it as a float infinity: a non-finite cell is a missing one
    return "line 8", "missing value", None, "weight"


def corrupt_empty_image_cell(table):
    edit(table, 2, "photo", None)
    return "line 4", "empty image cell", None, "photo"


def corrupt_parent_path(table):
    write_jpeg(table.parent.parent / "x.png", (1, 2, 3), np.random.default_rng(0))
    edit(table, 4, "photo", "../x.png")
    return "line 6", "leaves the table's folder", None, "photo"


def corrupt_absolute_path(table):
    outside = table.parent.parent / "x.png"
    write_jpeg(outside, (1, 2, 3), np.random.default_rng(0))
    edit(table, 4, "photo", str(outside))
    return "line 6", "leaves the table's folder", None, "photo"


def corrupt_etc_passwd(table):
    edit(table, 5, "photo", "../../../../../../../../etc/passwd")
    return "line 7", "leaves the table's folder", None, "photo"


def corrupt_absent_class(table):
    frame = pd.read_csv(table)
    fox = frame["species"] == "fox"
    frame.loc[fox, "split"] = "train"
    frame.to_csv(table, index=False)
    first = int(frame.index[fox][0])
    return f"line {first + 2}", "class 'fox' has 16 rows (train 16, val 0, test 0;", None, "species"


CASES = [corrupt_missing, corrupt_not_an_image, corrupt_truncated, corrupt_nan, corrupt_inf, corrupt_absent_class,
         corrupt_empty_image_cell, corrupt_parent_path, corrupt_absolute_path, corrupt_etc_passwd]  # fmt: skip
# a missing feature value is imputed by default; it is a bad row with data.missing=error
SETTINGS = {corrupt_nan: {"missing": "error"}, corrupt_inf: {"missing": "error"}}


@pytest.mark.parametrize("corrupt", CASES)
def test_bad_row_is_named_and_nothing_is_written(tmp_path, corrupt):
    table = make_table(tmp_path / "user", split=True)
    row, reason, file, column = corrupt(table)
    sets = [arg for k, v in SETTINGS.get(corrupt, {}).items() for arg in ("--set", f"data.{k}={v}")]
    result, out = run(tmp_path, table, *sets)
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert str(table) in text and (f"{row}:" in text or f"{row}," in text) and reason in text, text
    if file:
        assert file in text
    if column:
        assert f"field '{column}'" in text
    assert "Traceback" not in result.output and not out.exists()
    assert not (table.parent / ".gaal_cache").exists() or column != "photo"  # refused paths fail before any cache


@pytest.mark.parametrize("corrupt", CASES)
def test_skip_bad_drops_and_counts(tmp_path, corrupt):
    table = make_table(tmp_path / "user", split=True)
    corrupt(table)
    settings = SETTINGS.get(corrupt, {})
    cfg = DataConfig(name=str(table), target="species", image_column="photo", image_size=16, skip_bad=True, **settings)
    data = build_data(cfg, 0)
    dropped = sum(data.info["dropped"].values())
    assert dropped >= 1 and len(data.train) + len(data.val) + len(data.test) == 48 - dropped
    assert data.info["counts"] == {"train": len(data.train), "val": len(data.val), "test": len(data.test)}
    assert data.preprocessing["class_names"] == data.class_names
    if corrupt in (corrupt_parent_path, corrupt_absolute_path, corrupt_etc_passwd):
        assert any("leaves the table's folder" in reason for reason in data.info["dropped"])  # refused, never read
    if corrupt is corrupt_absent_class:
        assert data.class_names == ["cat", "dog"] and set(data.test.labels.tolist()) == {0, 1}


def test_skip_bad_through_the_cli_records_the_count(tmp_path):
    table = make_table(tmp_path / "user", split=True)
    corrupt_missing(table)
    result, out = run(tmp_path, table, "--skip-bad")
    assert result.exit_code == 0, result.output
    data = json.loads((out / "report.json").read_text())["data"]
    assert data["dropped"] == {"image file not found": 1} and sum(data["counts"].values()) == 47


def test_missing_target_flag_and_column(tmp_path):
    table = make_table(tmp_path / "user")
    result = runner.invoke(app, ["train", "--dataset", str(table), "--image-column", "photo"])
    assert result.exit_code == 2 and "--target" in result.output
    result = runner.invoke(app, ["train", "--dataset", str(table), "--target", "kind", "--image-column", "photo"])
    assert result.exit_code == 2 and "data.target" in result.output and "species" in result.output


def test_prepare_reports_bad_raw_rows_and_writes_nothing(tmp_path):
    raw = make_celeba(tmp_path / "raw")
    (raw / "img_align_celeba" / "000004.jpg").unlink()
    out = tmp_path / "prep"
    result = runner.invoke(app, ["data", "prepare", "celeba", "--raw", str(raw), "--out", str(out)])
    assert result.exit_code == 2 and "line 6" in result.output and "000004.jpg" in result.output
    assert not out.exists()

    lines = (raw / "list_attr_celeba.txt").read_text().splitlines()
    lines[4] = lines[4][:-2] + " 0"  # third image, last attribute (Young) neither 1 nor -1
    (raw / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["data", "prepare", "celeba", "--raw", str(raw), "--out", str(out)])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "line 5" in text and "field 'Young'" in text and not out.exists()

    result = runner.invoke(app, ["data", "prepare", "celeba", "--raw", str(raw), "--out", str(out), "--skip-bad"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert sum(manifest["counts"].values()) == 38 and sum(manifest["dropped"].values()) == 2


def test_duplicated_target_column_is_refused_before_it_leaks(tmp_path):
    table = make_table(tmp_path / "user", split=True)
    lines = table.read_text().splitlines()
    # a second 'species' column: pandas would rename it 'species.1' and train on it as a feature
    table.write_text("\n".join([lines[0] + ",species"] + [f"{x},{x.split(',')[1]}" for x in lines[1:]]) + "\n")
    result, out = run(tmp_path, table)
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "column 2 and column 7 are both named 'species'" in text, text
    assert "Traceback" not in result.output and not out.exists()


@pytest.mark.parametrize("content", ["", "photo,species,weight,colour,indoor\n"])
def test_empty_and_header_only_tables_write_nothing(tmp_path, content):
    table = tmp_path / "user" / "table.csv"
    table.parent.mkdir()
    table.write_text(content)
    result, out = run(tmp_path, table)
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and str(table) in text and ("empty" in text or "no rows" in text), text
    assert "Traceback" not in result.output and not out.exists() and not (table.parent / ".gaal_cache").exists()


def test_one_class_in_train_is_refused(tmp_path):
    table = make_table(tmp_path / "user", split=True)
    frame = pd.read_csv(table)
    frame["species"] = "cat"
    frame.to_csv(table, index=False)
    result, out = run(tmp_path, table)
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "train split holds 1 class ('cat')" in text, text
    assert "Traceback" not in result.output and not out.exists()


def test_an_empty_split_is_refused(tmp_path):
    table = make_table(tmp_path / "user", split=True)
    frame = pd.read_csv(table)
    frame.loc[frame["split"] == "val", "split"] = "train"
    frame.to_csv(table, index=False)
    result, out = run(tmp_path, table)
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "the val split has no rows" in text, text
    assert "Traceback" not in result.output and not out.exists()


def test_decompression_bomb_is_a_bad_row(tmp_path, monkeypatch):
    from PIL import Image

    table = make_table(tmp_path / "user", split=True)
    bomb = table.parent / "photos" / "bomb.png"
    Image.new("RGB", (40, 40)).save(bomb)  # 1600 pixels: a bomb under the limit set below
    edit(table, 7, "photo", "photos/bomb.png")
    for limit in (1000, 500):  # over the limit (a warning) and over twice the limit (an error) in PIL
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        result, out = run(tmp_path, table)
        text = " ".join(result.output.split())
        assert result.exit_code == 2 and "line 9" in text and "bomb.png" in text and "unreadable image" in text, text
        assert "Traceback" not in result.output and not out.exists()


def test_outside_paths_are_read_when_allowed(tmp_path):
    table = make_table(tmp_path / "user", split=True)
    corrupt_parent_path(table)
    corrupt_absolute_path(table)
    data = build_data(DataConfig(name=str(table), target="species", image_column="photo", image_size=16,
                                 allow_outside_paths=True), 0)  # fmt: skip
    assert sum(data.info["counts"].values()) == 48 and not data.info["dropped"]


def test_a_failed_cache_build_leaves_no_temp_file(tmp_path, monkeypatch):
    from gaal_cli.data import images

    table = make_table(tmp_path / "user", n=12)

    def broken(path, size):
        raise RuntimeError("disk went away")

    monkeypatch.setattr(images, "decode", broken)
    cfg = DataConfig(name=str(table), target="species", image_column="photo", image_size=16)
    with pytest.raises(RuntimeError):
        build_data(cfg, 0)
    assert not [p for p in (table.parent / ".gaal_cache").rglob("*") if "tmp" in p.name]
