"""Any table with image paths: `gaal train --dataset table.csv --target COL --image-column COL`.

Image paths are relative to the table's folder (absolute ones are kept). Every other column is
a feature, typed by `infer_types` unless `data.categorical` / `data.continuous` say otherwise.
A `data.split_column` holding train/val/test is used when present; otherwise a stratified
split with seed `SPLIT_SEED` (the same for every run seed, as the paper's splits are) puts
`TEST_FRACTION` of the rows in test and `VAL_FRACTION` of the rest in val. Class labels may be
text; they are sorted, numbered from 0 and recorded in the report.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from gaal_cli.config import DataConfig
from gaal_cli.data.base import DataBundle, TabularSchema
from gaal_cli.data.prepared import Rows, bundle, encode_split_table
from gaal_cli.data.table_prep import SPLITS, Problems, find_missing, infer_types, stratified_split
from gaal_cli.errors import GaalError

SPLIT_SEED = 2022
TEST_FRACTION = 0.2
VAL_FRACTION = 0.2
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


def read_table(path: Path) -> pd.DataFrame:
    """The table at `path` (CSV, or Parquet when pyarrow or fastparquet is installed)."""
    if not path.is_file():
        raise GaalError("no such table file", source=str(path), field="data.name")
    if path.suffix.lower() == ".parquet":
        try:
            return pd.read_parquet(path)
        except ImportError:
            raise GaalError(
                "reading Parquet needs pyarrow: pip install 'gaal[parquet]' (or convert the table to CSV)",
                source=str(path),
            ) from None
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise GaalError(f"not a readable CSV table ({err})", source=str(path)) from None


def build_table(cfg: DataConfig, seed: int) -> DataBundle:
    """The DataBundle of a user table named by `data.name`.

    The run seed is not used: without a split column the split seed is `SPLIT_SEED`, so every
    seed of an experiment sees the same split.
    """
    path = Path(cfg.name)
    frame = read_table(path)
    source = str(path)
    for key, column in (("data.target", cfg.target), ("data.image_column", cfg.image_column)):
        if column is None:
            raise GaalError(f"a table needs {key} (--{key.split('.')[1].replace('_', '-')} COLUMN)", field=key)
        if column not in frame.columns:
            raise GaalError(
                f"no such column; the table has: {', '.join(map(str, frame.columns))}", source=source, field=key
            )
    names = [f"line {i + 2}" if path.suffix.lower() == ".csv" else f"row {i + 1}" for i in range(len(frame))]
    problems = Problems(source, names, cfg.skip_bad)
    has_split = cfg.split_column in frame.columns
    features = [
        c
        for c in frame.columns
        if c not in (cfg.target, cfg.image_column) and not (has_split and c == cfg.split_column)
    ]
    find_missing(frame, [cfg.image_column, cfg.target, *features], problems)

    labels, class_names = _labels(frame[cfg.target])
    split = (
        _split_column(frame[cfg.split_column], problems)
        if has_split
        else stratified_split(labels, TEST_FRACTION, VAL_FRACTION, SPLIT_SEED)
    )
    continuous, categorical = infer_types(frame, features, cfg.categorical, cfg.continuous)
    tabular, enc = encode_split_table(frame[features], continuous, categorical, split, problems)

    folder = path.parent
    paths = [str(p if Path(p).is_absolute() else folder / p) for p in frame[cfg.image_column].astype(str)]
    rows = Rows(paths, tabular, labels, split, class_names, np.arange(len(frame)))
    schema = TabularSchema(enc.names, enc.field_lengths)
    info = {
        "table": str(path),
        "target": cfg.target,
        "split": f"column '{cfg.split_column}'"
        if has_split
        else (f"stratified, seed {SPLIT_SEED}, test {TEST_FRACTION}, val {VAL_FRACTION} of the rest"),
        "encoding": enc.to_json(),
    }
    normalize = "none" if cfg.normalize == "auto" else cfg.normalize
    cache = folder / ".gaal_cache" / path.stem
    return bundle(rows, schema, cfg, cache, normalize, problems, info, label_column=cfg.target)


def _labels(values: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Class indices in sorted order of the distinct labels (numbers numerically); NaN gets -1."""
    present = values.dropna()
    if pd.api.types.is_numeric_dtype(present):
        order = sorted(present.unique())
        names = [str(int(v)) if float(v).is_integer() else str(v) for v in order]
    else:
        order = sorted(present.astype(str).unique())
        names = list(order)
        values = values.where(values.isna(), values.astype(str))
    lookup = {v: i for i, v in enumerate(order)}
    return values.map(lookup).fillna(-1).to_numpy(dtype=np.int64), names


def _split_column(values: pd.Series, problems: Problems) -> np.ndarray:
    split = values.astype(str).str.strip().str.lower().map(SPLIT_ALIASES)
    for row in np.flatnonzero(split.isna().to_numpy()):
        problems.add(row, f"split {values.iloc[row]!r} is not one of {', '.join(SPLITS)}", column=values.name)
    return split.fillna("train").to_numpy(dtype=object)
