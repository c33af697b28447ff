"""DVM-CAR by the MMCL recipe (reused by GAAL, TIP and CHARMS): car model from ad table and photo.

Raw layout (RAW = the download folder):

    RAW/tables_V2.0/Ad_table.csv, Image_table.csv, Price_table.csv [, "Ad_table (extra).csv"]
    RAW/resized_DVM/<Maker>/<Genmodel>/<Year>/<Color>/<Image_name>

Steps: Adv_ID = the first two `$$` parts of Image_ID; the first image of each ad (any view);
ads inner-merged with entry prices on (Genmodel_ID, Reg_year = Year), then with the images on
Adv_ID; Engine_size = Engin_size without its trailing "L"; rows with a missing or non-numeric
value dropped; car models (Genmodel_ID) with at least `min_ads` ads kept (286 classes at 100);
stratified split, 50 % test, then 20 % of the rest val (seed 2022).

Departures from the MMCL code, on purpose: continuous columns are z-scored with training-split
statistics (MMCL uses the whole data). Category codes come from all rows, as in MMCL, so the
field lengths match the published [22, 13, 3, 12]; categories carry no label information.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from gaal_cli.data.prepared import prepare_rows
from gaal_cli.data.problems import Problems
from gaal_cli.data.splits import stratified_split
from gaal_cli.foundation.errors import GaalError

VERSION = 1
CONTINUOUS = [
    "Adv_year",
    "Adv_month",
    "Reg_year",
    "Runned_Miles",
    "Price",
    "Seat_num",
    "Door_num",
    "Entry_price",
    "Engine_size",
]
CATEGORICAL = ["Color", "Bodytype", "Gearbox", "Fuel_type"]
PHYSICAL = ["Wheelbase", "Height", "Width", "Length"]
JITTER = 50
TEST_FRACTION, VAL_FRACTION = 0.5, 0.2


def read_table(path: Path, columns: list[str]) -> pd.DataFrame:
    """A DVM table with its column names stripped of their stray spaces.

    Raises:
        GaalError: the file or one of `columns` is missing.
    """
    if not path.is_file():
        raise GaalError("no such file (expected the DVM tables_V2.0 layout)", source=str(path))
    frame = pd.read_csv(path, dtype=str, skipinitialspace=True)
    frame.columns = frame.columns.str.strip()
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise GaalError(f"missing column(s) {', '.join(missing)}", source=str(path))
    return frame


def merge_ads(tables: Path) -> tuple[pd.DataFrame, dict[str, int]]:
    """One row per ad with its entry price and first image, and how many ads each merge lost."""
    ads = read_table(
        tables / "Ad_table.csv",
        [
            "Maker",
            "Genmodel",
            "Genmodel_ID",
            "Adv_ID",
            "Reg_year",
            "Engin_size",
            *[c for c in CONTINUOUS if c not in ("Entry_price", "Engine_size")],
            *CATEGORICAL,
        ],
    )
    images = read_table(tables / "Image_table.csv", ["Image_ID", "Image_name"])
    prices = read_table(tables / "Price_table.csv", ["Genmodel_ID", "Year", "Entry_price"])
    images["Adv_ID"] = images["Image_ID"].str.split("$$", regex=False).str[:2].str.join("$$")
    first_image = images.drop_duplicates("Adv_ID", keep="first")[["Adv_ID", "Image_name"]]
    ads["Reg_year"] = pd.to_numeric(ads["Reg_year"], errors="coerce")
    prices = prices.assign(Year=pd.to_numeric(prices["Year"], errors="coerce"))
    prices = prices.drop_duplicates(["Genmodel_ID", "Year"])[["Genmodel_ID", "Year", "Entry_price"]]
    data = ads.merge(prices, left_on=["Genmodel_ID", "Reg_year"], right_on=["Genmodel_ID", "Year"], how="inner")
    priced = len(data)
    data = data.drop(columns="Year").merge(first_image, on="Adv_ID", how="inner")
    lost = {
        "recipe: no entry price for (Genmodel_ID, Reg_year)": len(ads) - priced,
        "recipe: ad without image": priced - len(data),
    }
    data["Engine_size"] = data["Engin_size"].str.strip().str.replace(r"L$", "", regex=True)
    for column in CONTINUOUS:
        data[column] = pd.to_numeric(data[column], errors="coerce")
    for column in CATEGORICAL:
        data[column] = data[column].str.strip()
    return data.reset_index(drop=True), lost


def add_physical(data: pd.DataFrame, tables: Path, rng: np.random.Generator) -> pd.DataFrame:
    """Wheelbase, Height, Width, Length from the extra ad table, per ad.

    A missing value takes the first known value of the same Genmodel_ID; every value is then
    jittered by a uniform integer in [-50, 50] (the recipe leaves open whether only filled
    values were jittered; all are here, so a model's ads do not share exact dimensions).
    """
    extra = read_table(tables / "Ad_table (extra).csv", ["Adv_ID", *PHYSICAL])[["Adv_ID", *PHYSICAL]]
    extra = extra.drop_duplicates("Adv_ID")
    data = data.merge(extra, on="Adv_ID", how="left")
    for column in PHYSICAL:
        values = pd.to_numeric(data[column], errors="coerce")
        data[column] = values.fillna(values.groupby(data["Genmodel_ID"]).transform("first"))
        data[column] = data[column] + rng.integers(-JITTER, JITTER + 1, size=len(data))
    return data


def model_order(ids: pd.Series) -> list[str]:
    """Genmodel_IDs ("10_1", "2_11") in numeric order of their parts."""

    def key(gid: str) -> tuple:
        return tuple(int(p) if p.isdigit() else p for p in gid.split("_"))

    return sorted(ids.unique(), key=key)


def prepare(
    raw: Path, out: Path, *, skip_bad: bool = False, physical: bool = False, min_ads: int = 100, seed: int = 2022
) -> dict:
    """Prepare DVM-CAR from RAW into OUT (see the module docstring).

    Args:
        physical: add the four jittered physical columns (17 columns instead of 13).
        min_ads: keep car models with at least this many ads (100 in the recipe).
        seed: the split (and jitter) seed, 2022 in the recipe.
    """
    tables = raw / "tables_V2.0" if (raw / "tables_V2.0").is_dir() else raw
    images_root = raw / "resized_DVM"
    data, dropped = merge_ads(tables)
    merged = len(data)
    data = data.dropna(subset=CONTINUOUS + CATEGORICAL + ["Image_name"])
    dropped["recipe: missing or non-numeric value"] = merged - len(data)
    counts = data["Genmodel_ID"].value_counts()
    kept = len(data)
    data = data[data["Genmodel_ID"].map(counts) >= min_ads].reset_index(drop=True)
    dropped[f"recipe: car model with fewer than {min_ads} ads"] = kept - len(data)
    if data.empty:
        raise GaalError(f"no car model has {min_ads} or more ads with complete rows", source=str(tables))
    rng = np.random.default_rng(seed)
    continuous = list(CONTINUOUS)
    if physical:
        data = add_physical(data, tables, rng)
        complete = len(data)
        data = data.dropna(subset=PHYSICAL).reset_index(drop=True)
        dropped["recipe: physical size unknown for the car model"] = complete - len(data)
        continuous += PHYSICAL

    models = model_order(data["Genmodel_ID"])
    first = data.drop_duplicates("Genmodel_ID").set_index("Genmodel_ID")
    class_names = [f"{gid} {first.at[gid, 'Maker']} {first.at[gid, 'Genmodel']}" for gid in models]
    labels = data["Genmodel_ID"].map({gid: i for i, gid in enumerate(models)}).to_numpy(dtype=np.int64)
    split = stratified_split(labels, TEST_FRACTION, VAL_FRACTION, seed)
    paths = [str(images_root.joinpath(*name.split("$$")[:4], name)) for name in data["Image_name"]]
    problems = Problems(str(tables / "Image_table.csv"), [f"Adv_ID {a}" for a in data["Adv_ID"]], skip_bad)
    manifest = {
        "recipe": {
            "name": "dvm",
            "version": VERSION,
            "params": {"physical": physical, "min_ads": min_ads, "seed": seed},
        },
        "target": "Genmodel_ID",
        "normalize": "none",
        "split": f"stratified on Genmodel_ID, test {TEST_FRACTION}, val {VAL_FRACTION} of the rest, seed {seed}",
        "dropped": dropped,
    }
    return prepare_rows(
        out,
        features=data[continuous + CATEGORICAL],
        continuous=continuous,
        categorical=CATEGORICAL,
        labels=labels,
        class_names=class_names,
        split=split,
        paths=paths,
        image_root=images_root,
        problems=problems,
        manifest=manifest,
        vocabulary=data[CATEGORICAL],
    )
