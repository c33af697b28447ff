"""A user table's target and its leaks (issue 30), without training: a numeric target that is a
measurement is said to be one, with quantile bins offered and working; images shared between
splits, a copy of the target under a lookalike header and repeated rows are counted in a warning,
and `data.leakage` groups or drops them."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from gaal_cli.cli import app
from gaal_cli.config import load_config
from gaal_cli.data.leakage import lookalike
from gaal_cli.data.target import TargetBins, continuous_reason
from gaal_cli.data.user_table import inspect_table, load_table
from gaal_cli.foundation.errors import GaalError

runner = CliRunner()


def write_png(path, colour, seed):
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(colour, 20, (12, 12, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def table(tmp_path, n=120, share_images=0, extra=None, name="t.csv"):
    """n rows, 3 classes, a numeric target `price`; rows past `n - share_images` reuse the first rows' images."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        label = i % 3
        source = i - (n - share_images) if i >= n - share_images else i
        image = f"img/{source}.png"
        if not (tmp_path / image).exists():
            write_png(tmp_path / image, [(200, 40, 40), (40, 200, 40), (40, 40, 200)][label], i)
        rows.append(
            {
                "image": image,
                "kind": ["a", "b", "c"][label],
                "size": round(float(rng.uniform(10, 90)), 2),
                "colour": ["red", "tan"][i % 2],
                "price": round(float(rng.uniform(1e4, 9e5)), 2),
            }
        )
    frame = pd.DataFrame(rows)
    for column, values in (extra or {}).items():
        frame[column] = values(frame)
    frame.to_csv(tmp_path / name, index=False)
    return tmp_path / name


def config(path, target="kind", **data):
    sets = [f"data.{k}={v}" for k, v in data.items()]
    return load_config(
        overrides=sets, flags={"data.name": str(path), "data.target": target, "data.image_column": "image"}
    )


# ------------------------------------------------------------------ continuous targets


def test_a_measurement_is_recognised_and_class_codes_are_not():
    assert "distinct fractional numbers" in continuous_reason(pd.Series(np.linspace(0, 1, 300)))
    assert "whole numbers" in continuous_reason(pd.Series(np.arange(300) * 1000))  # prices in whole units
    assert continuous_reason(pd.Series(np.arange(300) % 10)) is None  # digits: 10 classes
    assert continuous_reason(pd.Series(np.repeat(np.arange(200), 30))) is None  # 200 species, 30 images each
    assert continuous_reason(pd.Series(["x", "y"] * 200)) is None  # text labels are classes


def test_a_continuous_target_is_refused_in_one_short_paragraph_naming_the_setting(tmp_path):
    path = table(tmp_path)
    with pytest.raises(GaalError) as err:
        load_table(config(path, target="price").data)
    message = err.value.render()
    assert "looks continuous" in message and "data.target_bins=5" in message and "data.target_bins=0" in message
    assert len(message) < 600  # one paragraph, not a list of 120 classes


def test_quantile_bins_are_the_classes_and_named_by_their_ranges(tmp_path):
    path = table(tmp_path)
    loaded = load_table(config(path, target="price", target_bins=4).data)
    assert len(loaded.class_names) == 4 and loaded.class_names[0].startswith("below ")
    assert loaded.class_names[-1].endswith(" and above")
    assert sorted(np.bincount(loaded.labels).tolist()) == [30, 30, 30, 30]  # quantiles: equal shares
    bins = loaded.bins
    assert bins.labels(pd.Series([-1e9, 1e9, np.nan])).tolist() == [0, 3, -1]  # new values beyond: the end bins
    assert TargetBins.from_json(bins.to_json(), "x") == bins


def test_bins_travel_with_the_run_so_new_labels_are_binned_alike(tmp_path):
    path = table(tmp_path)
    found, error = inspect_table(config(path, target="price", target_bins=3).data)
    assert error is None and found["target_bins"] is not None and len(found["classes"]) == 3
    result = runner.invoke(app, ["data", "inspect", str(path), "--target", "price", "--image-column", "image"])
    assert result.exit_code == 2 and "looks continuous" in result.output


def test_keeping_values_as_classes_is_still_possible(tmp_path):
    path = table(tmp_path, n=60, extra={"code": lambda f: np.arange(len(f)) % 30})
    loaded = load_table(config(path, target="code", target_bins=0, rare_classes="train").data)
    assert len(loaded.class_names) == 30


def test_a_long_list_of_rare_classes_is_cut_with_a_count(tmp_path):
    path = table(tmp_path, extra={"code": lambda f: np.arange(len(f)) % 40})
    result = runner.invoke(
        app,
        ["data", "inspect", str(path), "--target", "code", "--image-column", "image", "--set", "data.target_bins=0"],
    )
    assert result.exit_code == 2
    assert "more of the 40 classes" in result.output and result.output.count("class '") <= 10


# ------------------------------------------------------------------ leakage


def test_lookalike_headers_read_alike():
    assert lookalike("label ") == lookalike("Label") == lookalike("lаbel") == lookalike("LABEL_") == "label"
    assert lookalike("labels") != "label"


def test_images_shared_across_splits_are_counted_with_what_to_do(tmp_path):
    path = table(tmp_path, share_images=60)
    found, error = inspect_table(config(path).data)
    assert error is None
    shared = found["leakage"]["shared_images"]
    assert shared and sum(v["rows"] for v in shared.values()) > 0
    assert "share their image" in found["leakage_warning"] and "data.leakage=group" in found["leakage_warning"]


def test_identical_bytes_under_another_name_count_as_one_image(tmp_path):
    path = table(tmp_path, n=90)
    frame = pd.read_csv(path)
    for i in range(60, 90):  # copies of the first rows' images, under new names
        shutil.copy(tmp_path / frame.loc[i - 60, "image"], tmp_path / f"img/copy{i}.png")
        frame.loc[i, "image"] = f"img/copy{i}.png"
    frame.to_csv(path, index=False)
    found, _ = inspect_table(config(path).data)
    assert found["leakage"]["same_bytes"] > 0


@pytest.mark.parametrize("header", ["kind ", "Kind", "kіnd"])  # a trailing blank, another case, a Cyrillic і
def test_a_copy_of_the_target_under_a_lookalike_header_is_named(tmp_path, header):
    path = table(tmp_path, extra={header: lambda f: f["kind"]})
    found, _ = inspect_table(config(path).data)
    assert header in found["leakage"]["target_copies"]
    warning = found["leakage_warning"]
    assert "gives the target away" in warning and f"data.exclude=[{json.dumps(header, ensure_ascii=False)}]" in warning
    if header == "kіnd":
        assert "CYRILLIC" in warning  # two headers that print alike are told apart by name


def test_a_feature_that_determines_the_target_is_named_whatever_its_header(tmp_path):
    path = table(tmp_path, extra={"code": lambda f: f["kind"].map({"a": "x1", "b": "x2", "c": "x3"})})
    found, _ = inspect_table(config(path).data)
    assert "code" in found["leakage"]["target_copies"]
    assert "colour" not in found["leakage"]["target_copies"]


def test_a_clean_table_has_no_warning(tmp_path):
    found, _ = inspect_table(config(table(tmp_path)).data)
    assert found["leakage_warning"] is None


def test_leakage_group_keeps_shared_images_in_one_split_and_drop_drops_them(tmp_path):
    path = table(tmp_path, share_images=60)
    grouped, _ = inspect_table(config(path, leakage="group").data)
    assert grouped["leakage_warning"] is None and "shared images" in grouped["split"]
    dropped, _ = inspect_table(config(path, leakage="drop").data)
    assert any("data.leakage=drop" in reason for reason in dropped["dropped"])
    assert dropped["leakage"]["shared_images"] == {} and dropped["leakage_warning"] is None


def test_rows_repeating_an_earlier_splits_row_are_counted_and_grouped(tmp_path):
    def repeat_five(frame):  # rows 115-119 copy rows 0-4 in every column but target and image
        for column in ("size", "colour", "price"):
            frame.loc[115:, column] = frame.loc[:4, column].to_numpy()
        return frame["size"]

    path = table(tmp_path, extra={"size": repeat_five})
    found, _ = inspect_table(config(path).data)
    repeated = found["leakage"]["duplicate_rows"]
    assert repeated and sum(v["rows"] for v in repeated.values()) <= 5
    assert "repeat an earlier split's row in every column" in found["leakage_warning"]
    grouped, _ = inspect_table(config(path, leakage="group").data)
    assert grouped["leakage_warning"] is None
