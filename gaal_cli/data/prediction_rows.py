"""The rows `gaal predict` predicts on: read the user's table, apply the run's recorded
preprocessing (gaal_cli.data.preprocessing), read the images, drop or report bad rows.

A user table's run carries a `TableState` (features, their fitted encoding, image column and
resolution): the new table is encoded exactly as training encoded its rows, its image paths
resolved relative to the new table's folder. Rows with problems (an image file missing or
unreadable, text in a numeric column) are bad rows as in training: fatal, or dropped and
counted with `skip_bad`.

A prepared dataset's run (dvm, celeba, sun, ham10000) carries a `PreparedRecord` (the encoded
column names, field lengths and class names), so it predicts on a table already in the
prepared format: the PREP folder's table.csv, or any table with an `image` column and the
encoded columns. Its images resolve against the manifest's image root when a manifest.json
sits beside the table, else against the table's folder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gaal_cli.config import DataConfig
from gaal_cli.data.base import Batch, SplitDataset
from gaal_cli.data.images import ImageTableSplit, ImageTransform, Progress, check_files, ensure_cache
from gaal_cli.data.prepared import FORMAT as MANIFEST_FORMAT
from gaal_cli.data.prepared import MANIFEST
from gaal_cli.data.preprocessing import (
    EncodedTable,
    PreparedRecord,
    TableState,
    apply_prepared,
    apply_state,
    read_record,
)
from gaal_cli.data.problems import SPLIT_ALIASES, SPLITS
from gaal_cli.data.recipes import RECIPES, TABLE_SUFFIXES
from gaal_cli.data.table_file import read_table
from gaal_cli.foundation.errors import GaalError

SPLIT_COLUMN = "split"  # the prepared format's split column


@dataclass
class PredictionRows:
    """The kept rows of a table to predict on, ready for the run's method.

    `labels` (class indices of the run, -1 where a row has none or one the run does not know)
    is None when the table has no target column; `splits` (train/val/test, "" where unknown) is
    None when the table has no split column; `skipped` counts dropped bad rows per reason;
    `inputs` are the files read besides the table (every row's image), which no output may replace.
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
    inputs: list[str]
    # each kept row's image file (absolute), None when the images were not read (--missing image)
    images: list[str] | None = None


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
    progress: Progress | None = None,
) -> PredictionRows:
    """Read `table`, encode it with a run's `preprocessing`, read its images, drop or report bad rows.

    Args:
        split_column: the column naming each row's split, when the table has one (accuracy per split).
        missing: 'image' or 'tabular': that modality is not read (its columns may be absent).
        cache_folder: where the images are decoded to (a temporary folder: nothing is written
            beside the user's data).
        source: where `preprocessing` came from, for errors.
        progress: shows the image decoding (gaal_cli.data.images.Progress); default none.

    Raises:
        GaalError: no usable record, a column the run needs is absent, or a bad row without skip_bad.
    """
    frame = read_table(table)
    record = read_record(preprocessing, source)
    modalities = tuple(m for m in ("image", "tabular") if m != missing)
    if isinstance(record, TableState):
        encoded = apply_state(record, frame, table, skip_bad=skip_bad, modalities=modalities, label_problems=False)
        name_by_image(encoded, frame, record.image_column)
    else:
        manifest = _manifest_beside(table)
        encoded = apply_prepared(
            record,
            frame,
            table,
            image_root=manifest.get("image_root", str(table.parent)) if manifest else str(table.parent),
            table_class_names=[str(c) for c in manifest["class_names"]] if manifest else None,
            skip_bad=skip_bad,
            modalities=modalities,
        )
    splits = split_names(frame[split_column]) if split_column in frame.columns else None
    return _read_images(encoded, record, splits, "image" in modalities, cache_folder, num_workers, progress)


def name_by_image(encoded: EncodedTable, frame: pd.DataFrame, image_column: str) -> None:
    """Name the rows by their image cell when the table has no id column and every row's image is
    its own: a path says which row it is, a row number from 0 does not."""
    if encoded.id_name != "row" or image_column not in frame.columns:
        return
    cells = frame[image_column]
    if cells.notna().all() and cells.astype(str).str.strip().ne("").all() and cells.is_unique:
        encoded.ids, encoded.id_name = [str(v) for v in cells], image_column


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
        inputs=[],
    )


def split_names(values: pd.Series) -> np.ndarray:
    """train/val/test per row (the aliases training accepts), "" where a value is none of them."""
    return values.astype(str).str.strip().str.lower().map(SPLIT_ALIASES).fillna("").to_numpy(dtype=object)


def _manifest_beside(table: Path) -> dict | None:
    """The prepared manifest in the table's folder, if there is a readable one."""
    try:
        manifest = json.loads((table.parent / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT else None


def _read_images(
    e: EncodedTable,
    record: TableState | PreparedRecord,
    splits: np.ndarray | None,
    with_images: bool,
    cache_folder: Path,
    num_workers: int,
    progress: Progress | None,
) -> PredictionRows:
    """Check and decode the images (cheap checks first, as training does), then drop or report bad rows."""
    if with_images:
        check_files(e.paths, e.problems, headers=True)
        e.problems.raise_or_keep()
        cache = ensure_cache(e.paths, record.image_size, cache_folder, e.problems, num_workers, progress)
    keep = e.problems.raise_or_keep()
    rows = np.flatnonzero(keep)
    if not len(rows):
        raise GaalError(f"no row left to predict: all {len(keep)} are bad rows", source=e.problems.source)
    tabular = torch.from_numpy(e.tabular[keep])
    labels = None if e.labels is None else e.labels[keep]
    splits = None if splits is None else splits[keep]
    carried = torch.from_numpy(labels if labels is not None else np.full(len(rows), -1, dtype=np.int64))
    if with_images:
        transform = ImageTransform(record.image_size, augment=False, normalize=record.normalize)
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
        class_names=record.class_names,
        field_lengths=tuple(record.field_lengths),
        rows_read=len(keep),
        skipped=e.problems.counts(),
        notes={"imputed": counts["imputed"], "unknown_categories": counts["unknown_categories"]},
        inputs=list(e.paths) if with_images else [],
        images=[e.paths[r] for r in rows] if with_images else None,
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
