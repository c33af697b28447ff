"""The rows `gaal predict` predicts on: a new table encoded by a trained run's preprocessing record.

A user table's run carries a `TableState` (features, their fitted encoding, image column and
resolution): the new table is encoded exactly as training encoded its rows, its image paths
resolved relative to the new table's folder. Rows with problems (an image file missing or
unreadable, text in a numeric column) are bad rows as in training: fatal, or dropped and
counted with `skip_bad`.

A prepared dataset's run (dvm, celeba, sun, ham10000) carries the encoded column names, field
lengths and class names, but not the recipe's steps from the raw download (DVM's joins of four
tables, SUN's vote threshold), so it predicts on a table already in the prepared format: the
PREP folder's table.csv, or any table with an `image` column and the encoded columns. Its
images resolve against the manifest's image root when a manifest.json sits beside the table,
else against the table's folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gaal_cli.config import DataConfig
from gaal_cli.data.base import Batch, SplitDataset
from gaal_cli.data.images import ImageTableSplit, ImageTransform, check_files, ensure_cache
from gaal_cli.data.prepared import FORMAT as MANIFEST_FORMAT
from gaal_cli.data.prepared import MANIFEST
from gaal_cli.data.recipes import RECIPES, TABLE_SUFFIXES
from gaal_cli.data.table_prep import SPLITS, Notes, Problems, is_missing
from gaal_cli.data.user_table import SPLIT_ALIASES, STATE_FORMAT, TableState, apply_state, read_table, row_names
from gaal_cli.errors import GaalError

PREPARED_FORMAT = "gaal-prepared-preprocessing"  # what build_prepared saves with a run
IMAGE_COLUMN = "image"  # the prepared format's image-path column (its rows' id in the output)
LABEL_COLUMN = "label"  # the prepared format's class-index column
SPLIT_COLUMN = "split"  # the prepared format's split column


@dataclass
class PredictionRows:
    """The kept rows of a table to predict on, ready for the run's method.

    `labels` (class indices of the run, -1 where a row has none or one the run does not know)
    is None when the table has no target column; `splits` (train/val/test, "" where unknown) is
    None when the table has no split column; `skipped` counts dropped bad rows per reason.
    """

    ids: list[str]
    id_name: str
    split: SplitDataset
    labels: np.ndarray | None
    splits: np.ndarray | None
    class_names: list[str]
    field_lengths: tuple[int, ...]
    rows_read: int
    skipped: dict[str, int]
    notes: dict[str, dict[str, int]]


@dataclass
class _Encoded:
    """A table encoded by either kind of record, before images are read and bad rows dropped."""

    ids: list[str]
    id_name: str
    paths: list[str]
    tabular: np.ndarray
    labels: np.ndarray | None
    splits: np.ndarray | None
    problems: Problems
    notes: Notes
    class_names: list[str]
    field_lengths: tuple[int, ...]
    image_size: int
    normalize: str


def prediction_rows(
    preprocessing: dict | None,
    table: Path,
    *,
    split_column: str = SPLIT_COLUMN,
    skip_bad: bool = False,
    missing: str | None = None,
    cache_folder: Path,
    num_workers: int = 0,
    source: str = "the checkpoint",
) -> PredictionRows:
    """Read `table`, encode it with a run's `preprocessing`, read its images, drop or report bad rows.

    Args:
        split_column: the column naming each row's split, when the table has one (accuracy per split).
        missing: 'image' or 'tabular': that modality is not read (its columns may be absent).
        cache_folder: where the images are decoded to (a temporary folder: nothing is written
            beside the user's data).
        source: where `preprocessing` came from, for errors.

    Raises:
        GaalError: no usable record, a column the run needs is absent, or a bad row without skip_bad.
    """
    frame = read_table(table)
    kind = preprocessing.get("format") if isinstance(preprocessing, dict) else None
    modalities = tuple(m for m in ("image", "tabular") if m != missing)
    if kind == STATE_FORMAT:
        encoded = _user_table(TableState.from_json(preprocessing, source), frame, table, skip_bad, modalities)
    elif kind == PREPARED_FORMAT:
        encoded = _prepared_table(preprocessing, frame, table, skip_bad, modalities, source)
    else:
        raise GaalError(
            "the run carries no preprocessing record to encode new rows with (runs on the synthetic data have "
            "none, nor do runs saved before records were kept); predict needs a run on a table or a prepared dataset",
            source=source,
            field="preprocessing",
        )
    if split_column in frame.columns:
        encoded.splits = split_names(frame[split_column])
    return _read_images(encoded, "image" in modalities, cache_folder, num_workers)


def is_embedded(name: str) -> bool:
    """A dataset gaal generates itself (synthetic): neither a table file nor a prepared recipe."""
    return not name.lower().endswith(TABLE_SUFFIXES) and name not in RECIPES


def embedded_rows(cfg: DataConfig, seed: int, split_name: str) -> PredictionRows:
    """One split of the embedded dataset, regenerated from the run's config and seed (as training made it).

    Raises:
        GaalError: `split_name` is not train, val or test.
    """
    if split_name not in SPLITS:
        raise GaalError(
            f"a run on the embedded {cfg.name} dataset has no table to read; it predicts one of its own "
            "splits, regenerated from the run's config: --data train, val or test",
            source=split_name,
            field="--data",
        )
    from gaal_cli.data import build_data

    data = build_data(cfg, seed)
    split = data.split(split_name)
    labels = split.labels.numpy().astype(np.int64)
    n = len(labels)
    return PredictionRows(
        ids=[str(i) for i in range(n)],
        id_name=f"{split_name}_row",
        split=split,
        labels=labels,
        splits=np.full(n, split_name, dtype=object),
        class_names=list(data.class_names),
        field_lengths=tuple(data.schema.field_lengths),
        rows_read=n,
        skipped={},
        notes={"imputed": {}, "unknown_categories": {}},
    )


def split_names(values: pd.Series) -> np.ndarray:
    """train/val/test per row (the aliases training accepts), "" where a value is none of them."""
    return values.astype(str).str.strip().str.lower().map(SPLIT_ALIASES).fillna("").to_numpy(dtype=object)


def _user_table(
    state: TableState, frame: pd.DataFrame, table: Path, skip_bad: bool, modalities: tuple[str, ...]
) -> _Encoded:
    e = apply_state(state, frame, table, skip_bad=skip_bad, modalities=modalities, label_problems=False)
    has_ids = state.id_column is not None and state.id_column in frame.columns
    return _Encoded(
        e.ids,
        state.id_column if has_ids else "row",
        e.paths,
        e.tabular,
        e.labels,
        None,
        e.problems,
        e.notes,
        state.class_names,
        state.encoding.field_lengths,
        state.image_size,
        state.normalize,
    )


def _prepared_table(
    record: dict, frame: pd.DataFrame, table: Path, skip_bad: bool, modalities: tuple[str, ...], source: str
) -> _Encoded:
    try:
        columns = [str(c) for c in record["columns"]]
        lengths = tuple(int(n) for n in record["field_lengths"])
        class_names = [str(c) for c in record["class_names"]]
        size, normalize = int(record["image"]["size"]), str(record["image"]["normalize"])
    except (KeyError, TypeError, ValueError) as err:
        raise GaalError(f"malformed {PREPARED_FORMAT} record ({type(err).__name__}: {err})", source=source) from None
    needed = [IMAGE_COLUMN] * ("image" in modalities) + columns * ("tabular" in modalities)
    absent = [c for c in needed if c not in frame.columns]
    if absent:
        recipe = (record.get("recipe") or {}).get("name", "its recipe")
        raise GaalError(
            f"the table lacks column(s) the run was trained with: {', '.join(absent)}. A run on a prepared "
            f"dataset predicts on tables in the prepared format (PREP/table.csv of `gaal data prepare {recipe}`): "
            "its record holds the encoded columns, not the recipe's steps from the raw download",
            source=str(table),
        )
    problems = Problems(str(table), row_names(table, len(frame)), skip_bad)
    manifest = _manifest_beside(table)
    paths = [""] * len(frame)
    if "image" in modalities:
        root = manifest.get("image_root", str(table.parent)) if manifest else str(table.parent)
        paths = _joined_paths(frame[IMAGE_COLUMN], root, problems)
    tabular = np.zeros((len(frame), len(columns)), dtype=np.float32)
    if "tabular" in modalities:
        tabular = _encoded_columns(frame, columns, lengths, problems)
    labels = None
    if LABEL_COLUMN in frame.columns:
        names = [str(c) for c in manifest["class_names"]] if manifest else class_names
        labels = _labels_by_name(frame[LABEL_COLUMN], names, class_names)
    id_name = IMAGE_COLUMN if IMAGE_COLUMN in frame.columns else "row"
    ids = [str(v) for v in frame[IMAGE_COLUMN]] if id_name == IMAGE_COLUMN else [str(i) for i in range(len(frame))]
    notes = Notes()
    return _Encoded(ids, id_name, paths, tabular, labels, None, problems, notes, class_names, lengths, size, normalize)


def _manifest_beside(table: Path) -> dict | None:
    """The prepared manifest in the table's folder, if there is a readable one."""
    try:
        manifest = json.loads((table.parent / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT else None


def _joined_paths(values: pd.Series, root: str, problems: Problems) -> list[str]:
    out = []
    for row, value in enumerate(values):
        text = "" if pd.isna(value) else str(value).strip()
        if not text:
            problems.add(row, "empty image cell", column=str(values.name))
        out.append(os.path.join(root, text) if text else "")
    return out


def _encoded_columns(frame: pd.DataFrame, columns: Sequence[str], lengths: Sequence[int], problems: Problems):
    """The already-encoded columns as floats; text, gaps and category codes outside 0..k-1 are bad rows."""
    out = np.zeros((len(frame), len(columns)), dtype=np.float32)
    for j, (name, length) in enumerate(zip(columns, lengths)):
        numbers = pd.to_numeric(frame[name], errors="coerce")
        for row in np.flatnonzero(numbers.isna().to_numpy() & frame[name].notna().to_numpy()):
            problems.add(row, f"{frame[name].iloc[row]!r} is not a number", column=name, kind="not a number")
        problems.add_many(is_missing(frame[name]), "missing value (NaN, empty cell or infinite number)", column=name)
        values = numbers.to_numpy(dtype=float, na_value=np.nan)
        if length > 1:
            outside = np.isfinite(values) & ((values != np.round(values)) | (values < 0) | (values >= length))
            problems.add_many(outside, f"not a category code 0..{length - 1}", column=name)
        out[:, j] = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    return out


def _labels_by_name(values: pd.Series, table_names: list[str], run_names: list[str]) -> np.ndarray:
    """Class indices of the run for a prepared table's label indices (-1 where unknown or empty)."""
    lookup = {name: i for i, name in enumerate(run_names)}
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    labels = np.full(len(values), -1, dtype=np.int64)
    for row, v in enumerate(numbers):
        if np.isfinite(v) and v == int(v) and 0 <= int(v) < len(table_names):
            labels[row] = lookup.get(table_names[int(v)], -1)
    return labels


def _read_images(e: _Encoded, with_images: bool, cache_folder: Path, num_workers: int) -> PredictionRows:
    """Check and decode the images (cheap checks first, as training does), then drop or report bad rows."""
    if with_images:
        check_files(e.paths, e.problems, headers=True)
        e.problems.raise_or_keep()
        cache = ensure_cache(e.paths, e.image_size, cache_folder, e.problems, num_workers)
    keep = e.problems.raise_or_keep()
    rows = np.flatnonzero(keep)
    if not len(rows):
        raise GaalError(f"no row left to predict: all {len(keep)} are bad rows", source=e.problems.source)
    tabular = torch.from_numpy(e.tabular[keep])
    labels = None if e.labels is None else e.labels[keep]
    splits = None if e.splits is None else e.splits[keep]
    carried = torch.from_numpy(labels if labels is not None else np.full(len(rows), -1, dtype=np.int64))
    if with_images:
        transform = ImageTransform(e.image_size, augment=False, normalize=e.normalize)
        paths = [e.paths[r] for r in rows]
        split: SplitDataset = ImageTableSplit(paths, tabular, carried, transform, cache=cache, cache_rows=rows)
    else:
        split = NoImages(tabular, carried)
    counts = e.notes.counts(keep)
    return PredictionRows(
        ids=[e.ids[r] for r in rows],
        id_name=e.id_name,
        split=split,
        labels=labels,
        splits=splits,
        class_names=e.class_names,
        field_lengths=tuple(e.field_lengths),
        rows_read=len(keep),
        skipped=e.problems.counts(),
        notes={"imputed": counts["imputed"], "unknown_categories": counts["unknown_categories"]},
    )


class NoImages:
    """Rows predicted with the image missing: batches carry a placeholder the method never sees."""

    def __init__(self, tabular: torch.Tensor, labels: torch.Tensor):
        self.tabular, self.labels = tabular, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, rows: Sequence[int]) -> Batch:
        idx = torch.as_tensor(rows, dtype=torch.long)
        return Batch(torch.zeros(len(idx), 3, 1, 1), self.tabular[idx], self.labels[idx])
