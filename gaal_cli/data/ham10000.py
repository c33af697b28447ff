"""HAM10000: the diagnosis of a pigmented skin lesion from its dermatoscopic image and the patient's metadata.

Tschandl, Rosendahl & Kittler, "The HAM10000 dataset", Sci. Data 5, 180161 (2018); 10,015
images of 7,470 lesions, 7 diagnoses, licence CC BY-NC-SA 4.0. Raw layout (RAW = the download
folder, as published at https://doi.org/10.7910/DVN/DBW86T):

    RAW/HAM10000_metadata.csv     lesion_id, image_id, dx, dx_type, age, sex, localization
    RAW/HAM10000_images_part_1/<image_id>.jpg and RAW/HAM10000_images_part_2/<image_id>.jpg
    (or all images in one folder: RAW/HAM10000_images/, RAW/images/ or RAW itself)

Target `dx` (akiec, bcc, bkl, df, mel, nv, vasc). Table: `age` (continuous; an empty cell stays
missing and is handled by the shared missing-value policy), `sex` and `localization`
(categorical; `unknown` is an ordinary value; the codes come from all rows, since the category
lists are part of the dataset's description and carry no label information). `dx_type`, how the
diagnosis was confirmed, is left out by default: it leaks the label (follow-up is almost only
nv); `--include-dx-type` adds it as a categorical column.

Several images show the same lesion, so the split is grouped by lesion_id (no lesion in two
splits), stratified on dx over the lesions: 20 % test, then 20 % of the rest val (seed 2022).
The release has no official split. Images are ImageNet-normalised.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from gaal_cli.data.prepared import prepare_rows
from gaal_cli.data.problems import Problems
from gaal_cli.data.splits import grouped_split
from gaal_cli.foundation.errors import GaalError

VERSION = 1
METADATA = "HAM10000_metadata.csv"
COLUMNS = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]
DIAGNOSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
IMAGE_FOLDERS = ("HAM10000_images_part_1", "HAM10000_images_part_2", "HAM10000_images", "images")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
TEST_FRACTION, VAL_FRACTION = 0.2, 0.2


def read_metadata(path: Path) -> pd.DataFrame:
    """The metadata as stripped text with empty cells as NaN.

    Cells such as "NA" stay text: only an empty cell is missing, as in the release.

    Raises:
        GaalError: the file or one of its columns is missing.
    """
    if not path.is_file():
        raise GaalError(f"no {METADATA} (expected the HAM10000 release layout)", source=str(path.parent), field="--raw")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    frame.columns = frame.columns.str.strip()
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise GaalError(f"missing column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)}", source=str(path))
    return frame[COLUMNS].apply(lambda column: column.str.strip()).replace("", np.nan)


def image_folders(raw: Path) -> list[Path]:
    """The folders that hold the images: the release's two parts, or one folder."""
    folders = [raw / name for name in IMAGE_FOLDERS if (raw / name).is_dir()]
    return folders or [raw]


def index_images(folders: list[Path]) -> dict[str, Path]:
    """image_id -> file, over every folder (the first folder wins a duplicate)."""
    index: dict[str, Path] = {}
    for folder in folders:
        with os.scandir(folder) as entries:
            for entry in entries:
                stem, suffix = os.path.splitext(entry.name)
                if suffix.lower() in IMAGE_SUFFIXES and entry.is_file():
                    index.setdefault(stem, Path(entry.path))
    return index


def find_bad_rows(
    meta: pd.DataFrame, age: pd.Series, images: dict[str, Path], folders: list[Path], problems: Problems
) -> None:
    """Record rows that cannot be used: unknown diagnosis, no lesion, a repeated or absent image, a bad age."""
    problems.add_many(meta["image_id"].isna().to_numpy(), "no image_id", column="image_id")
    no_lesion = meta["lesion_id"].isna().to_numpy()
    problems.add_many(no_lesion, "no lesion_id (the split groups images by lesion)", column="lesion_id")
    for row in np.flatnonzero(~meta["dx"].isin(DIAGNOSES).to_numpy()):
        reason = f"dx {meta['dx'].iloc[row]!r} is not one of the 7 HAM10000 diagnoses"
        problems.add(row, reason, column="dx", kind="dx is not one of the 7 HAM10000 diagnoses")
    repeated = meta["image_id"].duplicated() & meta["image_id"].notna()
    problems.add_many(repeated.to_numpy(), "image_id listed on an earlier line too", column="image_id")
    where = " or ".join(f"{f.name}/" for f in folders)
    for row, image_id in enumerate(meta["image_id"]):
        if isinstance(image_id, str) and image_id not in images:
            problems.add(row, f"no image {image_id}.jpg in {where}", column="image_id")
    problems.add_many((age.isna() & meta["age"].notna()).to_numpy(), "age is not a number", column="age")


def prepare(raw: Path, out: Path, *, skip_bad: bool = False, include_dx_type: bool = False, seed: int = 2022) -> dict:
    """Prepare HAM10000 from RAW into OUT (see the module docstring).

    Args:
        include_dx_type: add `dx_type` as a feature (it leaks the label; off in the recipe).
        seed: the split seed.
    """
    metadata = raw / METADATA
    meta = read_metadata(metadata)
    folders = image_folders(raw)
    images = index_images(folders)
    names = [f"line {i + 2} ({image_id})" for i, image_id in enumerate(meta["image_id"])]
    problems = Problems(str(metadata), names, skip_bad)
    age = pd.to_numeric(meta["age"], errors="coerce")  # an empty cell stays NaN: a missing value
    find_bad_rows(meta, age, images, folders, problems)

    labels = meta["dx"].map({dx: i for i, dx in enumerate(DIAGNOSES)}).fillna(-1).to_numpy(dtype=np.int64)
    # a row without lesion_id is dropped as bad; until then it is a group of its own
    lesions = meta["lesion_id"].fillna(pd.Series([f"row {i}" for i in range(len(meta))])).to_numpy(dtype=str)
    split = grouped_split(labels, lesions, TEST_FRACTION, VAL_FRACTION, seed)
    paths = [str(images.get(str(i), folders[0] / f"{i}.jpg")) for i in meta["image_id"]]
    categorical = ["sex", "localization"] + (["dx_type"] if include_dx_type else [])
    manifest = {
        "recipe": {
            "name": "ham10000",
            "version": VERSION,
            "params": {"include_dx_type": include_dx_type, "seed": seed},
        },
        "target": "dx",
        "normalize": "imagenet",
        "split": (
            f"grouped by lesion_id (no lesion in two splits), stratified on dx over lesions, test {TEST_FRACTION}, "
            f"val {VAL_FRACTION} of the rest, seed {seed}"
        ),
    }
    return prepare_rows(
        out,
        features=meta[categorical].assign(age=age)[["age", *categorical]],
        continuous=["age"],
        categorical=categorical,
        labels=labels,
        class_names=list(DIAGNOSES),
        split=split,
        paths=paths,
        image_root=raw,
        problems=problems,
        manifest=manifest,
        vocabulary=meta[categorical],
        impute=True,
    )
