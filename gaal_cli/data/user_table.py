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

Everything fitted on the training split is a `TableState`: `fit_state` makes it, `to_json`
saves it with the run (preprocessing.json, the checkpoint), `TableState.from_json` and
`apply_state` encode any later table of the same columns exactly as training did.

`check_table` is the one path of reading, roles, checks and split that `gaal train` (through
`build_table`) and `gaal data inspect` (through `inspect_table`) share: inspect reports what
training would do and fails with the error training would raise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gaal_cli.config import DataConfig
from gaal_cli.data.base import DataBundle, TabularSchema
from gaal_cli.data.column_roles import ColumnRole, ColumnRoles, check_named_columns, derive, fit_origins, infer_roles
from gaal_cli.data.images import check_files
from gaal_cli.data.prepared import Rows, bundle, drop_bad, rare_classes
from gaal_cli.data.table_prep import (
    SPLITS,
    Encoding,
    Notes,
    Problems,
    category_text,
    encode,
    find_missing,
    fit_encoding,
    grouped_split,
    is_missing,
    stratified_split,
)
from gaal_cli.errors import GaalError, did_you_mean
from gaal_cli.untrusted import check_table_file

SPLIT_SEED = 2022
TEST_FRACTION = 0.2
VAL_FRACTION = 0.2
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
STATE_FORMAT, STATE_VERSION = "gaal-table-preprocessing", 2  # 2: column roles; 1 (no roles) still reads


def read_table(path: Path) -> pd.DataFrame:
    """The table at `path` (CSV, or Parquet when pyarrow or fastparquet is installed).

    Raises:
        GaalError: no such file, unreadable, empty, header only, or two columns of one name.
    """
    if not path.is_file():
        raise GaalError("no such table file", source=str(path), field="data.name")
    check_table_file(path)
    if path.suffix.lower() == ".parquet":
        try:
            frame = pd.read_parquet(path)
        except ImportError:
            raise GaalError(
                "reading Parquet needs pyarrow: pip install 'gaal[parquet]' (or convert the table to CSV)",
                source=str(path),
            ) from None
        header = [str(c) for c in frame.columns]
    else:
        try:
            # the raw header: pandas renames a second 'label' to 'label.1', which would become a feature
            header = [str(c) for c in pd.read_csv(path, header=None, nrows=1, dtype=str).iloc[0]]
            frame = pd.read_csv(path)
        except pd.errors.EmptyDataError:
            raise GaalError(
                "the file is empty (expected a header line and one row per image)", source=str(path)
            ) from None
        except (pd.errors.ParserError, UnicodeDecodeError) as err:
            raise GaalError(f"not a readable CSV table ({err})", source=str(path)) from None
    _check_header(header, path)
    if frame.empty:
        raise GaalError("the table has a header but no rows", source=str(path))
    return frame


def _check_header(header: list[str], path: Path) -> None:
    seen: dict[str, int] = {}
    for position, name in enumerate(header, start=1):
        if name in seen:
            raise GaalError(
                f"column {seen[name]} and column {position} are both named {name!r}; rename one "
                "(a duplicated target would otherwise become a feature that leaks the label)",
                source=str(path),
                field=name,
            )
        seen[name] = position


@dataclass
class TableState:
    """What a run fitted on a user table: enough to encode new rows of the same columns.

    Plain data once `to_json` is called (saved as preprocessing.json and in the checkpoint).
    `features` are the table's columns the run reads; `roles` say how each becomes the encoded
    fields (a date expands to five), `encoding` how those are coded.
    """

    target: str
    image_column: str
    id_column: str | None
    features: list[str]
    class_names: list[str]
    encoding: Encoding
    image_size: int
    normalize: str
    allow_outside_paths: bool
    roles: ColumnRoles

    def to_json(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "format_version": STATE_VERSION,
            "target": self.target,
            "image_column": self.image_column,
            "id_column": self.id_column,
            "features": list(self.features),
            "class_names": list(self.class_names),
            "encoding": self.encoding.to_json(),
            "image": {"size": self.image_size, "normalize": self.normalize},
            "allow_outside_paths": self.allow_outside_paths,
            "roles": self.roles.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict, source: str) -> TableState:
        """Rebuild a state saved by `to_json` (from preprocessing.json or a checkpoint).

        Raises:
            GaalError: not a table preprocessing record of this version, or a malformed one.
        """
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise GaalError(f"not a {STATE_FORMAT} record", source=source)
        version = data.get("format_version")
        if version not in (1, STATE_VERSION):
            raise GaalError(f"format_version {version!r}, expected {STATE_VERSION} (or 1)", source=source)
        try:
            encoding = Encoding.from_json(data["encoding"], source)
            if version == 1:  # before roles: every feature was read as it is
                kinds = {c: "continuous" for c in encoding.continuous}
                kinds.update({c: "categorical" for c in encoding.categorical})
                roles = ColumnRoles({str(c): ColumnRole(kinds[str(c)], "format_version 1") for c in data["features"]})
            else:
                roles = ColumnRoles.from_json(data["roles"], source)
            return cls(
                target=str(data["target"]),
                image_column=str(data["image_column"]),
                id_column=None if data["id_column"] is None else str(data["id_column"]),
                features=[str(c) for c in data["features"]],
                class_names=[str(c) for c in data["class_names"]],
                encoding=encoding,
                image_size=int(data["image"]["size"]),
                normalize=str(data["image"]["normalize"]),
                allow_outside_paths=bool(data["allow_outside_paths"]),
                roles=roles,
            )
        except (KeyError, TypeError, ValueError) as err:
            raise GaalError(f"malformed {STATE_FORMAT} record ({type(err).__name__}: {err})", source=source) from None


@dataclass
class EncodedTable:
    """A table encoded by a `TableState`: one entry per input row, bad rows recorded in `problems`.

    `labels` is None when the table has no target column; a row without a label gets -1.
    `ids` names each row in an output: its id-column value, else its row number from 0.
    """

    ids: list[str]
    paths: list[str]
    tabular: np.ndarray
    labels: np.ndarray | None
    problems: Problems
    notes: Notes


def fit_state(
    train: pd.DataFrame, cfg: DataConfig, roles: ColumnRoles, class_names: list[str], id_column: str | None = None
) -> TableState:
    """Fit the date origins and the encoding on the training rows (bad rows already left out).

    Args:
        roles: the columns' roles, from `infer_roles` on the whole table (typing sees no label,
            and a flag column may show one value in train only); its date origins are set here.
        id_column: the column naming the rows (`data.id_column`, else the first inferred id).
    """
    fit_origins(train, roles)
    continuous, categorical = roles.types()
    # always imputing: with data.missing=error or drop no kept row has a gap, so this only adds
    # the `unknown` code for categories that first appear in val, test or at predict time
    encoding = fit_encoding(derive(train, roles), continuous, categorical, impute=True)
    return TableState(
        target=str(cfg.target),
        image_column=str(cfg.image_column),
        id_column=id_column,
        features=roles.sources,
        class_names=list(class_names),
        encoding=encoding,
        image_size=cfg.image_size,
        normalize="none" if cfg.normalize == "auto" else cfg.normalize,
        allow_outside_paths=cfg.allow_outside_paths,
        roles=roles,
    )


def apply_state(
    state: TableState,
    frame: pd.DataFrame,
    table: Path,
    *,
    skip_bad: bool = False,
    allow_outside_paths: bool | None = None,
    problems: Problems | None = None,
    modalities: tuple[str, ...] = ("image", "tabular"),
    label_problems: bool = True,
) -> EncodedTable:
    """Encode `frame` (read from the file `table`) exactly as the run that fitted `state` did.

    Missing values are filled, unseen categories coded `unknown` (both counted in `notes`);
    empty image cells, paths outside the table's folder and unknown labels are bad rows.

    Args:
        skip_bad: bad rows are to be dropped (`problems.raise_or_keep()` then returns the mask).
        allow_outside_paths: overrides the run's own setting (the new table may live elsewhere).
        problems: record into these (training shares them with its earlier checks).
        modalities: the modalities to read; the other's columns need not be there (a prediction
            with the table or the image missing) and come back as "" paths or zero features.
        label_problems: a label that is not one of the run's classes is a bad row; without it
            (`gaal predict`, which ignores the target) the row keeps label -1.

    Raises:
        GaalError: a feature or the image column is absent from the table.
    """
    needed = [state.image_column] * ("image" in modalities) + state.features * ("tabular" in modalities)
    absent = [c for c in needed if c not in frame.columns]
    if absent:
        raise GaalError(f"the table lacks column(s) the run was trained with: {', '.join(absent)}", source=str(table))
    if problems is None:
        problems = Problems(str(table), row_names(table, len(frame)), skip_bad)
    outside = state.allow_outside_paths if allow_outside_paths is None else allow_outside_paths
    paths = [""] * len(frame)
    if "image" in modalities:
        paths = image_paths(frame[state.image_column], table.parent, outside, problems)
    notes = Notes()
    tabular = np.zeros((len(frame), len(state.encoding.names)), dtype=np.float32)
    if "tabular" in modalities:
        tabular = encode(derive(frame, state.roles), state.encoding, problems, notes)
    labels = None
    if state.target in frame.columns:
        labels = _run_labels(frame[state.target], state.class_names, problems if label_problems else None)
    has_ids = state.id_column is not None and state.id_column in frame.columns
    ids = [str(v) for v in frame[state.id_column]] if has_ids else [str(i) for i in range(len(frame))]
    return EncodedTable(ids, paths, tabular, labels, problems, notes)


def _run_labels(values: pd.Series, class_names: list[str], problems: Problems | None) -> np.ndarray:
    """Class indices in the run's classes; -1 for an empty cell or (recorded in `problems`) another label."""
    lookup = {name: i for i, name in enumerate(class_names)}
    text = category_text(values)
    labels = np.array(text.map(lookup).fillna(-1), dtype=np.int64)
    labels[values.isna().to_numpy()] = -1
    if problems is not None:
        for row in np.flatnonzero((labels < 0) & values.notna().to_numpy()):
            problems.add(
                row,
                f"label {text.iloc[row]!r} is not one of the run's classes",
                column=str(values.name),
                kind="a label that is not one of the run's classes",
            )
    return labels


def row_names(table: Path, n: int) -> list[str]:
    return [f"line {i + 2}" if table.suffix.lower() == ".csv" else f"row {i + 1}" for i in range(n)]


def image_paths(values: pd.Series, folder: Path, allow_outside: bool, problems: Problems) -> list[str]:
    """Absolute image paths; empty cells and (unless allowed) paths leaving `folder` are bad rows.

    A refused path becomes "" so that nothing, not even a --skip-bad cache build, reads it.
    """
    root = os.path.abspath(folder)
    out = []
    for row, value in enumerate(values):
        text = "" if pd.isna(value) else str(value).strip()
        if not text:
            problems.add(row, "empty image cell", column=str(values.name))
            out.append("")
            continue
        path = os.path.normpath(os.path.join(root, text))  # an absolute `text` stays itself
        # compared after resolving symlinks: a link inside the folder may point anywhere
        real, real_root = os.path.realpath(path), os.path.realpath(root)
        if not allow_outside and os.path.commonpath([real_root, real]) != real_root:
            link = f" (a symlink to {real})" if real != path else ""
            problems.add(
                row,
                f"image path {text!r} leaves the table's folder{link} (set data.allow_outside_paths=true to allow it)",
                column=str(values.name),
                kind="an image path that leaves the table's folder",
            )
            path = ""
        out.append(path)
    return out


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


def load_table(cfg: DataConfig) -> LoadedTable:
    """Read, check columns, infer roles, drop unlabelled rows (and, with data.missing=drop,
    incomplete ones), split.

    Raises:
        GaalError: a named column is absent (with the closest name); see also `read_table`.
    """
    path = Path(cfg.name)
    frame = read_table(path)
    source = str(path)
    for key, column in (("data.target", cfg.target), ("data.image_column", cfg.image_column)):
        if column is None:
            raise GaalError(f"a table needs {key} (--{key.split('.')[1].replace('_', '-')} COLUMN)", field=key)
    for key, column in (
        ("data.target", cfg.target),
        ("data.image_column", cfg.image_column),
        ("data.group_column", cfg.group_column),
        ("data.id_column", cfg.id_column),
    ):
        if column is not None and column not in frame.columns:
            raise GaalError(
                f"no such column {column!r}{did_you_mean(column, frame.columns)}; the table has: "
                f"{', '.join(map(str, frame.columns))}",
                source=source,
                field=key,
            )
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
    labels, class_names = _labels(frame[cfg.target])
    split, split_info = _choose_split(frame, cfg, labels, problems, has_split)
    train_only = {}
    if cfg.rare_classes == "train":
        for cls in rare_classes(labels, split, class_names):
            split[labels == class_names.index(cls)] = "train"
            train_only[cls] = int(np.sum(labels == class_names.index(cls)))
    id_column = cfg.id_column or next(iter(roles.of("id")), None)
    return LoadedTable(
        path, frame, names, roles, id_column, labels, class_names, split, split_info, problems, dropped, train_only
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
        state = fit_state(t.frame[(t.split == "train") & ~bad], cfg, t.roles, t.class_names, t.id_column)
    encoded = apply_state(state, t.frame, t.path, problems=t.problems)
    check_files(encoded.paths, t.problems, headers=headers)
    rows = Rows(encoded.paths, encoded.tabular, t.labels, t.split, t.class_names, np.arange(len(t.frame)))
    return CheckedTable(t, state, encoded.notes, rows)


def build_table(cfg: DataConfig, seed: int, state: TableState | None = None) -> DataBundle:
    """The DataBundle of a user table named by `data.name`.

    The run seed is not used: without a split column the split seed is `SPLIT_SEED`, so every
    seed of an experiment sees the same split.

    Args:
        state: a trained run's fitted preprocessing (`gaal eval`): encode with it, fit nothing.
    """
    saved = state
    c = check_table(cfg, state, headers=not cfg.cache)
    t, state = c.table, c.state
    enc = state.encoding
    info = {
        "table": str(t.path),
        "target": cfg.target,
        "split": t.split_info,
        "train_only_classes": t.train_only,
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
    frame: pd.DataFrame, cfg: DataConfig, labels: np.ndarray, problems: Problems, has_split: bool
) -> tuple[np.ndarray, str]:
    """The user's split column, else a seeded stratified split (grouped when a group column is set)."""
    groups = None
    if cfg.group_column is not None:
        column = frame[cfg.group_column]
        problems.add_many(column.isna().to_numpy(), "missing group", column=cfg.group_column)
        groups = category_text(column).to_numpy(dtype=object)
    if has_split:
        split = _split_column(frame[cfg.split_column], problems)
        if groups is not None:
            _check_groups_within_splits(groups, split, problems, cfg.group_column)
        return split, f"column '{cfg.split_column}'"
    shares = f"seed {SPLIT_SEED}, test {TEST_FRACTION}, val {VAL_FRACTION} of the rest"
    if groups is not None:
        split = grouped_split(labels, groups, TEST_FRACTION, VAL_FRACTION, SPLIT_SEED)
        return split, f"stratified by group '{cfg.group_column}', {shares}"
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
        "split": t.split_info,
        "split_counts": before,
        "split_counts_trained": after,
        "error": error.render() if error else None,
    }
    return found, error


def _split_counts(labels: np.ndarray, split: np.ndarray, class_names: list[str]) -> dict:
    return {
        s: {name: int(np.sum((labels == i) & (split == s))) for i, name in enumerate(class_names)} for s in SPLITS
    }
