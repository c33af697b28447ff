"""Import the prepared files MMCL (and GAAL, its fork) users already have.

RAW is a folder holding, for each split s in train / val / test:

    *{s}_paths*.pt or *paths*{s}*.pt   list of image files (absolute, or relative to RAW)
    *labels*{s}*.pt                     list or tensor of class indices
    *{s}*.csv                           headerless table, one row per image, already encoded
and one *lengths*.pt                    field lengths (1 = continuous, k = categorical codes 0..k-1)

e.g. MMCL's train_paths_all_views.pt, labels_model_all_train_all_views.pt,
dvm_features_train_noOH_all_views.csv and tabular_lengths_all_views.pt. The split is theirs;
columns are named field_0, field_1, ... since the files carry no names. Continuous columns are
re-standardised with training-split statistics (a linear change of MMCL's whole-data
z-scores); categorical codes keep their values. The images must be files PIL can read.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gaal_cli.data.prepared import prepare_rows
from gaal_cli.data.problems import SPLITS, Problems
from gaal_cli.foundation.errors import GaalError

VERSION = 1
PATTERNS = {
    "paths": ("*{s}_paths*.pt", "*paths*{s}*.pt"),
    "labels": ("*labels*{s}*.pt",),
    "table": ("*{s}*.csv",),
}


def find_one(raw: Path, patterns: tuple[str, ...], what: str) -> Path:
    found = sorted({p for pattern in patterns for p in raw.glob(pattern)})
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise GaalError(f"expected one {what} file matching {' or '.join(patterns)}, found: {names}", source=str(raw))
    return found[0]


def load_list(path: Path) -> list:
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
        raise GaalError(f"not a torch-saved list ({type(err).__name__}: {err})", source=str(path)) from None
    return value.tolist() if isinstance(value, torch.Tensor) else list(value)


def read_split(raw: Path, split: str, n_fields: int) -> tuple[list[str], list[int], pd.DataFrame, Path]:
    paths_file = find_one(raw, tuple(p.format(s=split) for p in PATTERNS["paths"]), f"{split} image-path")
    labels_file = find_one(raw, tuple(p.format(s=split) for p in PATTERNS["labels"]), f"{split} label")
    table_file = find_one(raw, tuple(p.format(s=split) for p in PATTERNS["table"]), f"{split} table")
    paths = [str(p) for p in load_list(paths_file)]
    labels = [int(v) for v in load_list(labels_file)]
    table = pd.read_csv(table_file, header=None)
    if table.shape[1] != n_fields:
        raise GaalError(f"{table.shape[1]} columns but the field-length file lists {n_fields}", source=str(table_file))
    if not len(paths) == len(labels) == len(table):
        raise GaalError(
            f"{len(paths)} image paths, {len(labels)} labels and {len(table)} table rows differ",
            source=f"{paths_file}, {labels_file}, {table_file}",
        )
    return [p if os.path.isabs(p) else str(raw / p) for p in paths], labels, table, paths_file


def prepare(raw: Path, out: Path, *, skip_bad: bool = False) -> dict:
    """Import MMCL-format files from RAW into OUT (see the module docstring)."""
    lengths = [int(v) for v in load_list(find_one(raw, ("*lengths*.pt",), "field-length"))]
    columns = [f"field_{j}" for j in range(len(lengths))]
    parts = [read_split(raw, s, len(lengths)) for s in SPLITS]
    paths = [p for part in parts for p in part[0]]
    labels = np.array([v for part in parts for v in part[1]], dtype=np.int64)
    table = pd.concat([part[2] for part in parts], ignore_index=True)
    table.columns = columns
    split = np.concatenate([[s] * len(part[0]) for s, part in zip(SPLITS, parts)]).astype(object)
    names = [f"{s} item {i}" for s, part in zip(SPLITS, parts) for i in range(len(part[0]))]
    problems = Problems(", ".join(str(part[3]) for part in parts), names, skip_bad)
    if labels.min() < 0:
        raise GaalError("class indices must be 0 or more", source=problems.source)
    continuous = [c for c, k in zip(columns, lengths) if k == 1]
    categorical = [c for c, k in zip(columns, lengths) if k > 1]
    manifest = {
        "recipe": {"name": "mmcl", "version": VERSION, "params": {"source": str(raw.resolve())}},
        "target": "label",
        "normalize": "none",
        "split": "as imported",
    }
    root = Path(os.path.commonpath([os.path.dirname(p) for p in paths])) if paths else raw
    return prepare_rows(
        out,
        features=table,
        continuous=continuous,
        categorical=categorical,
        labels=labels,
        class_names=[str(c) for c in range(int(labels.max()) + 1)],
        split=split,
        paths=paths,
        image_root=root,
        problems=problems,
        manifest=manifest,
        vocabulary=pd.DataFrame({c: pd.Series(range(k)) for c, k in zip(columns, lengths) if k > 1}),
    )
