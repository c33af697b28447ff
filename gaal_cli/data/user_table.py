"""Any table with image paths: `gaal train --dataset table.csv --target COL --image-column COL`.

Image paths are relative to the table's folder; a path that leaves it (`../x.png`, an absolute
path elsewhere) is a bad row unless `data.allow_outside_paths` is set. Every other column but
the split, group and id columns gets a role (an id, a date, free text, numbers written as text,
a category, ...) inferred by `column_roles.infer_roles` and overridable (`data.exclude`,
`data.categorical`, `data.continuous`, `data.datetime`, `data.id_column`); ids and free text
are left out. Rows without a label are dropped and counted. Missing feature
values (empty, NaN or infinite cells) follow `data.missing`: `impute` (training medians, a
`missing` code, a missing indicator per affected numeric column), `drop` (dropped and
counted) or `error` (bad rows). Categories unseen in training get an `unknown` code.

A `data.split_column` holding train/val/test is used when present; otherwise a stratified
split with seed `SPLIT_SEED` (the same for every run seed, as the paper's splits are) puts
`TEST_FRACTION` of the rows in test and `VAL_FRACTION` of the rest in val, keeping each
`data.group_column` group (a patient, a lesion) in one split. Class labels may be text; they
are sorted, numbered from 0 and recorded in the report.

This module reads the file and assembles the rows; what is fitted on the training split and
how every table is encoded with it is gaal_cli/data/preprocessing.py (`fit_state`,
`apply_state`), which this module calls and which never calls back.

`check_table` is the one path of reading, roles, checks and split that `gaal train` (through
`build_table`) and `gaal data inspect` (through `inspect_table`) share: inspect reports what
training would do and fails with the error training would raise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gaal_cli.config import DataConfig
from gaal_cli.data.base import DataBundle, TabularSchema
from gaal_cli.data.column_roles import ColumnRoles, check_named_columns, infer_roles
from gaal_cli.data.images import Progress, check_files
from gaal_cli.data.leakage import Leakage, absolute_paths, find_leakage, leak_groups, warning_text
from gaal_cli.data.prepared import Rows, bundle, drop_bad, rare_classes
from gaal_cli.data.preprocessing import TableState, apply_state, find_missing, fit_state, image_paths
from gaal_cli.data.problems import SPLIT_ALIASES, SPLITS, Notes, Problems, category_text, is_missing, row_names
from gaal_cli.data.splits import grouped_split, stratified_split
from gaal_cli.data.table_file import check_table_columns, file_sha256, target_bins
from gaal_cli.data.target import TargetBins
from gaal_cli.foundation.errors import GaalError

SPLIT_SEED = 2022
TEST_FRACTION = 0.2
VAL_FRACTION = 0.2


@dataclass
class LoadedTable:
    """A user table after the row-level decisions every use of it shares (train and inspect)."""

    path: Path
    frame: pd.DataFrame
    names: list[str]
    roles: ColumnRoles
    id_column: str | None
    labels: np.ndarray
    class_names: list[str]
    split: np.ndarray
    split_info: str
    problems: Problems
    dropped: dict[str, int]
    train_only: dict[str, int]
    # what the leakage checks found (gaal_cli/data/leakage.py)
    leakage: Leakage
    # the quantile bins that are the classes of a numeric target (data.target_bins), else None
    bins: TargetBins | None = None


def load_table(cfg: DataConfig) -> LoadedTable:
    """Read, check columns, infer roles, drop unlabelled rows (and, with data.missing=drop,
    incomplete ones), split.

    Raises:
        GaalError: see `check_table_columns`; no row left once unlabelled rows are dropped.
    """
    path = Path(cfg.name)
    frame = check_table_columns(cfg)
    source = str(path)
    has_split = cfg.split_column in frame.columns
    special = {cfg.target, cfg.image_column, cfg.group_column, cfg.id_column, cfg.split_column if has_split else None}
    candidates = [c for c in frame.columns if c not in special]
    overrides = {
        "data.exclude": cfg.exclude,
        "data.categorical": cfg.categorical,
        "data.continuous": cfg.continuous,
        "data.datetime": cfg.datetime,
    }
    check_named_columns(overrides, candidates, source)
    roles = infer_roles(
        frame,
        candidates,
        exclude=cfg.exclude,
        categorical=cfg.categorical,
        continuous=cfg.continuous,
        datetime=cfg.datetime,
    )
    names = np.array(row_names(path, len(frame)), dtype=object)
    dropped: dict[str, int] = {}
    keep = np.array(frame[cfg.target].notna(), dtype=bool)
    if (~keep).any():
        dropped[f"no label (column {cfg.target!r})"] = int((~keep).sum())
    if cfg.missing == "drop":
        incomplete = np.zeros(len(frame), dtype=bool)
        for c in roles.sources:
            incomplete |= is_missing(frame[c])
        if (incomplete & keep).any():
            dropped["missing value (data.missing=drop)"] = int((incomplete & keep).sum())
        keep &= ~incomplete
    frame, names = frame[keep].reset_index(drop=True), list(names[keep])
    if frame.empty:
        raise GaalError(f"no row left after dropping {dropped}", source=source, field=cfg.target)
    problems = Problems(source, names, cfg.skip_bad)
    if cfg.missing == "error":
        find_missing(frame, roles.sources, problems)
    bins = target_bins(frame[cfg.target], cfg)
    if bins is None:
        labels, class_names = _labels(frame[cfg.target])
    else:
        labels, class_names = bins.labels(frame[cfg.target]), bins.class_names
    paths = absolute_paths(frame[cfg.image_column], path.parent)
    row_columns = [c for c in frame.columns if c not in (cfg.target, cfg.image_column, cfg.split_column)]
    together = None
    if cfg.leakage == "group":
        extra = category_text(frame[cfg.group_column]).to_numpy(dtype=object) if cfg.group_column else None
        together = leak_groups(frame, row_columns, paths, extra)
    if together is not None and has_split:
        raise GaalError(
            f"data.leakage=group needs gaal's own split; the table's {cfg.split_column!r} column fixes it "
            "(--set data.leakage=drop drops the repeats instead)",
            source=source,
            field="data.leakage",
        )
    split, split_info = _choose_split(frame, cfg, labels, problems, has_split, together)
    leak = find_leakage(frame, cfg.target, roles.sources, paths, split, row_columns)
    if cfg.leakage == "drop" and leak.repeats.any():
        keep = ~leak.repeats
        dropped["repeats an earlier split's image or row (data.leakage=drop)"] = int(leak.repeats.sum())
        frame, names, labels, split = (
            frame[keep].reset_index(drop=True),
            list(np.array(names)[keep]),
            labels[keep],
            split[keep],
        )
        problems = problems.take(keep)
        leak = Leakage(target_copies=leak.target_copies, repeats=np.zeros(len(frame), dtype=bool))
    train_only = {}
    if cfg.rare_classes == "train":
        for cls in rare_classes(labels, split, class_names):
            split[labels == class_names.index(cls)] = "train"
            train_only[cls] = int(np.sum(labels == class_names.index(cls)))
    id_column = cfg.id_column or next(iter(roles.of("id")), None)
    return LoadedTable(
        path,
        frame,
        names,
        roles,
        id_column,
        labels,
        class_names,
        split,
        split_info,
        problems,
        dropped,
        train_only,
        leak,
        bins,
    )


@dataclass
class CheckedTable:
    """A user table read, typed, encoded and checked: what training and `gaal data inspect` share."""

    table: LoadedTable
    state: TableState
    notes: Notes
    rows: Rows


def check_table(cfg: DataConfig, state: TableState | None = None, *, headers: bool = True) -> CheckedTable:
    """The one path of reading, roles, checks and split that `gaal train` and `gaal data inspect` run.

    Args:
        state: a trained run's fitted preprocessing (`gaal eval`): encode with it, fit nothing.
        headers: open each image's header (inspect; training with the cache decodes every file
            anyway, so it only checks that each exists).
    """
    t = load_table(cfg)
    if state is None:
        # bad image cells first, so that their rows stay out of the fitted statistics
        image_paths(t.frame[cfg.image_column], t.path.parent, cfg.allow_outside_paths, t.problems)
        bad = np.isin(np.arange(len(t.frame)), list(t.problems.bad))
        state = fit_state(t.frame[(t.split == "train") & ~bad], cfg, t.roles, t.class_names, t.id_column, t.bins)
    encoded = apply_state(state, t.frame, t.path, problems=t.problems)
    check_files(encoded.paths, t.problems, headers=headers)
    rows = Rows(encoded.paths, encoded.tabular, t.labels, t.split, t.class_names, np.arange(len(t.frame)), encoded.ids)
    return CheckedTable(t, state, encoded.notes, rows)


def build_table(
    cfg: DataConfig, seed: int, state: TableState | None = None, progress: Progress | None = None
) -> DataBundle:
    """The DataBundle of a user table named by `data.name`.

    The run seed is not used: without a split column the split seed is `SPLIT_SEED`, so every
    seed of an experiment sees the same split.

    Args:
        state: a trained run's fitted preprocessing (`gaal eval`): encode with it, fit nothing.
        progress: shows the image-cache build (gaal_cli.data.images.Progress); default none.
    """
    saved = state
    c = check_table(cfg, state, headers=not cfg.cache)
    t, state = c.table, c.state
    enc = state.encoding
    info = {
        "table": str(t.path),
        "table_sha256": file_sha256(t.path),
        "target": cfg.target,
        "split": t.split_info,
        "train_only_classes": t.train_only,
        "leakage": t.leakage.to_json(),
        "leakage_warning": warning_text(t.leakage, cfg.image_column) if t.leakage else None,
        "roles": state.roles.to_json()["columns"],
        "encoding": enc.to_json(),
    }
    cache = t.path.parent / ".gaal_cache" / t.path.stem
    data = bundle(
        c.rows,
        TabularSchema(enc.names, enc.field_lengths),
        cfg,
        cache,
        state.normalize,
        t.problems,
        info,
        label_column=cfg.target,
        notes=c.notes,
        preprocessing=state.to_json(),
        dropped_before=t.dropped,
        files_checked=True,
        drop_rare=cfg.rare_classes == "drop",
        train_only=list(t.train_only),
        progress=progress,
    )
    if saved is not None and data.class_names != saved.class_names:
        raise GaalError(
            f"the table's classes {data.class_names} are not the run's {state.class_names}",
            source=str(t.path),
            field=cfg.target,
        )
    return data


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


def _choose_split(
    frame: pd.DataFrame,
    cfg: DataConfig,
    labels: np.ndarray,
    problems: Problems,
    has_split: bool,
    together: np.ndarray | None = None,
) -> tuple[np.ndarray, str]:
    """The user's split column, else a seeded stratified split (grouped when a group column is set,
    or `together` groups the rows that share an image: data.leakage=group)."""
    groups = None
    if cfg.group_column is not None:
        column = frame[cfg.group_column]
        problems.add_many(column.isna().to_numpy(), "missing group", column=cfg.group_column)
        groups = category_text(column).to_numpy(dtype=object)
    if together is not None:
        groups = together.astype(str)
    if has_split:
        split = _split_column(frame[cfg.split_column], problems)
        if groups is not None:
            _check_groups_within_splits(groups, split, problems, cfg.group_column)
        return split, f"column '{cfg.split_column}'"
    shares = f"seed {SPLIT_SEED}, test {TEST_FRACTION}, val {VAL_FRACTION} of the rest"
    if groups is not None:
        split = grouped_split(labels, groups, TEST_FRACTION, VAL_FRACTION, SPLIT_SEED)
        by = " and ".join(
            [f"group '{cfg.group_column}'"] * (cfg.group_column is not None)
            + ["shared images"] * (together is not None)
        )
        return split, f"stratified by {by}, {shares}"
    return stratified_split(labels, TEST_FRACTION, VAL_FRACTION, SPLIT_SEED), f"stratified, {shares}"


def _split_column(values: pd.Series, problems: Problems) -> np.ndarray:
    split = values.astype(str).str.strip().str.lower().map(SPLIT_ALIASES)
    for row in np.flatnonzero(split.isna().to_numpy()):
        problems.add(
            row,
            f"split {values.iloc[row]!r} is not one of {', '.join(SPLITS)}",
            column=str(values.name),
            kind=f"a split that is not one of {', '.join(SPLITS)}",
        )
    return split.fillna("train").to_numpy(dtype=object)


def _check_groups_within_splits(groups: np.ndarray, split: np.ndarray, problems: Problems, column: str) -> None:
    """A user's split that puts one group in two splits leaks it: every such row is a bad row."""
    frame = pd.DataFrame({"group": groups, "split": split})
    spread = frame.groupby("group")["split"].nunique()
    for group in spread.index[spread > 1]:
        rows = np.flatnonzero(groups == group)
        where = sorted(set(split[rows]))
        problems.add_many(rows, f"group {group!r} is in more than one split ({', '.join(where)})", column=column)


def inspect_table(cfg: DataConfig) -> tuple[dict, GaalError | None]:
    """What training on the table would see and do, without writing anything (`gaal data inspect`).

    Runs `check_table` and the dropping and split checks of training (`drop_bad`), all but the
    image decoding (headers only).

    Returns:
        Plain data (each column's role and why, missing and distinct values, classes per split
        before and after dropping, bad rows, what would be dropped and why), and the error
        training would raise (None when it would train).
    """
    c = check_table(cfg, headers=True)
    t = c.table
    before = _split_counts(t.labels, t.split, t.class_names)
    bad = [
        {"row": t.names[row], "reason": reason, "column": column, "file": file}
        for row, (reason, column, file) in sorted(t.problems.bad.items())
    ]
    error, dropped, after = None, {}, None
    try:
        drop_rare = cfg.rare_classes == "drop"
        kept, dropped = drop_bad(c.rows, t.problems, cfg.target, drop_rare=drop_rare, train_only=list(t.train_only))
        after = _split_counts(kept.labels, kept.split, kept.class_names)
    except GaalError as err:
        error = err
    roles = c.state.roles
    found = {
        "table": str(t.path),
        "rows": len(t.frame) + sum(t.dropped.values()),
        "roles": {name: {"role": r.role, "why": r.reason} for name, r in roles.columns.items()},
        "continuous": roles.types()[0],
        "categorical": roles.types()[1],
        "id_column": t.id_column,
        "classes": {name: int(np.sum(t.labels == i)) for i, name in enumerate(t.class_names)},
        "missing": {str(c): int(is_missing(t.frame[c]).sum()) for c in t.frame.columns},
        "distinct": {str(c): int(t.frame[c].nunique()) for c in t.frame.columns},
        "dropped_before": t.dropped,
        "bad_rows": bad,
        "dropped": {**t.dropped, **dropped},
        "train_only_classes": t.train_only,
        "leakage": t.leakage.to_json(),
        "leakage_warning": warning_text(t.leakage, str(cfg.image_column)) if t.leakage else None,
        "target_bins": t.bins.to_json() if t.bins else None,
        "split": t.split_info,
        "split_counts": before,
        "split_counts_trained": after,
        "error": error.render() if error else None,
    }
    return found, error


def _split_counts(labels: np.ndarray, split: np.ndarray, class_names: list[str]) -> dict:
    return {s: {name: int(np.sum((labels == i) & (split == s))) for i, name in enumerate(class_names)} for s in SPLITS}
