"""A table's preprocessing in one direction: fit on the training rows, record, apply.

Fit: `fit_encoding` (a recipe's prepared table) and `fit_state` (a user's table: column roles,
date origins, encoding) read the training rows only. Continuous columns are z-scored with
training statistics (the MMCL recipe fits them on the whole data, which leaks the test split
into training); categorical columns become integer codes 0..k-1 in the order of their sorted
categories, the MMCL field-length convention that `TabularSchema` describes. A user's table
also imputes missing values from training statistics and maps categories unseen in training to
an `unknown` code.

Record: what was fitted is plain data that travels with a run (preprocessing.json, the
checkpoint): a `TableState` (format `gaal-table-preprocessing`, versions 1 and 2) for a user's
table, a `PreparedRecord` (format `gaal-prepared-preprocessing`) for a prepared dataset, whose
table is already encoded. `read_record` reads either.

Apply: `apply_state` and `apply_prepared` encode any table of the same columns exactly as
training did, in train, eval and predict alike. This module reads no file and calls no other
table module back; its callers (user_table, prepared, prediction_rows) read and assemble.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gaal_cli.config import DataConfig
from gaal_cli.data.column_roles import ColumnRole, ColumnRoles, derive, fit_origins
from gaal_cli.data.problems import Notes, Problems, category_text, is_missing, row_names
from gaal_cli.data.target import TargetBins
from gaal_cli.foundation.errors import GaalError

STATE_FORMAT, STATE_VERSION = "gaal-table-preprocessing", 2  # 2: column roles; 1 (no roles) still reads
PREPARED_FORMAT = "gaal-prepared-preprocessing"  # what build_prepared saves with a run
IMAGE_COLUMN = "image"  # the prepared format's image-path column (its rows' id in the output)
LABEL_COLUMN = "label"  # the prepared format's class-index column

# ---------------------------------------------------------------- fit and apply an encoding


MISSING, UNKNOWN = "<missing>", "<unknown>"


@dataclass(frozen=True)
class Encoding:
    """Fitted encoding of a table, as plain data that travels with a run (`to_json` / `from_json`).

    Fields in order: continuous columns (z-scored with the training mean/std), categorical
    columns (codes 0..k-1 for the training categories, then a `missing` code when the column
    had empty cells in training, then an `unknown` code when `impute`), then a 0/1
    indicator per continuous column that had missing values in training (`indicators`).
    `fill` holds the training medians used for missing continuous values. Without `impute` (the
    prepared recipes) a missing value or an unseen category is a bad row instead.
    """

    continuous: tuple[str, ...]
    categorical: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    categories: dict[str, list[str]]
    fill: tuple[float, ...] = ()
    indicators: tuple[str, ...] = ()
    missing_code: tuple[str, ...] = ()
    impute: bool = False

    @property
    def names(self) -> tuple[str, ...]:
        return self.continuous + self.categorical + tuple(f"{c} missing" for c in self.indicators)

    def codes(self, column: str) -> list[str]:
        """Names of a categorical column's codes, the reserved ones included."""
        extra = [MISSING] * (column in self.missing_code) + [UNKNOWN] * self.impute
        return [*self.categories[column], *extra]

    @property
    def field_lengths(self) -> tuple[int, ...]:
        cats = tuple(len(self.codes(c)) for c in self.categorical)
        return (1,) * len(self.continuous) + cats + (2,) * len(self.indicators)

    def to_json(self) -> dict:
        return {
            "continuous": list(self.continuous),
            "categorical": list(self.categorical),
            "mean": list(self.mean),
            "std": list(self.std),
            "categories": self.categories,
            "fill": list(self.fill),
            "indicators": list(self.indicators),
            "missing_code": list(self.missing_code),
            "impute": self.impute,
        }

    @classmethod
    def from_json(cls, data: dict, source: str) -> Encoding:
        """Rebuild an encoding saved by `to_json`.

        Raises:
            GaalError: a key is missing or holds the wrong kind of value.
        """
        try:
            enc = cls(
                continuous=tuple(str(c) for c in data["continuous"]),
                categorical=tuple(str(c) for c in data["categorical"]),
                mean=tuple(float(v) for v in data["mean"]),
                std=tuple(float(v) for v in data["std"]),
                categories={str(k): [str(v) for v in vs] for k, vs in data["categories"].items()},
                fill=tuple(float(v) for v in data.get("fill", ())),
                indicators=tuple(str(c) for c in data.get("indicators", ())),
                missing_code=tuple(str(c) for c in data.get("missing_code", ())),
                impute=bool(data.get("impute", False)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise GaalError(f"not a valid table encoding ({type(err).__name__}: {err})", source=source) from None
        lengths = {len(enc.continuous), len(enc.mean), len(enc.std), *([len(enc.fill)] if enc.impute else [])}
        if (
            len(lengths) > 1
            or set(enc.categorical) != set(enc.categories)
            or not set(enc.indicators) <= set(enc.continuous)
        ):
            raise GaalError("not a valid table encoding (its column lists disagree)", source=source)
        return enc


def fit_encoding(
    train: pd.DataFrame,
    continuous: Sequence[str],
    categorical: Sequence[str],
    vocabulary: pd.DataFrame | None = None,
    *,
    impute: bool = False,
) -> Encoding:
    """Fit statistics on the training rows (missing and non-finite values left out).

    Args:
        vocabulary: rows whose categories define the codes (default: the training rows). A
            recipe may pass the whole table so its field lengths match the published ones;
            categories carry no label information.
        impute: fill missing values at encoding time (training medians, a `missing` code, a
            missing indicator per continuous column with gaps in training) and map categories
            unseen in training to an `unknown` code, instead of leaving them as bad rows.
    """
    vocab = train if vocabulary is None else vocabulary
    mean, std, fill, indicators = [], [], [], []
    for name in continuous:
        numbers = pd.to_numeric(train[name], errors="coerce")  # text in it is a bad row, found by `encode`
        gaps = is_missing(numbers)
        seen = numbers[~gaps].astype(float)
        mean.append(float(seen.mean()) if len(seen) else 0.0)
        spread = float(seen.std(ddof=0)) if len(seen) else 0.0
        std.append(spread if spread > 1e-12 else 1.0)
        fill.append(float(seen.median()) if len(seen) else 0.0)
        if gaps.any():
            indicators.append(name)
    return Encoding(
        continuous=tuple(continuous),
        categorical=tuple(categorical),
        mean=tuple(mean),
        std=tuple(std),
        categories={c: sorted(category_text(vocab[c].dropna()).unique(), key=natural_key) for c in categorical},
        fill=tuple(fill) if impute else (),
        indicators=tuple(indicators) if impute else (),
        missing_code=tuple(c for c in categorical if train[c].isna().any()) if impute else (),
        impute=impute,
    )


def natural_key(text: str) -> tuple:
    """Numbers before text and in numeric order, so codes "2" < "10" keep their meaning."""
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


def find_missing(frame: pd.DataFrame, columns: Sequence[str], problems: Problems) -> None:
    """Record every row with an empty, NaN or infinite value in `columns` (first such column named)."""
    for name in columns:
        problems.add_many(is_missing(frame[name]), "missing value (NaN, empty cell or infinite number)", column=name)


def encode(frame: pd.DataFrame, enc: Encoding, problems: Problems, notes: Notes | None = None) -> np.ndarray:
    """The encoded float32 matrix (rows x fields).

    With an imputing encoding, missing values are filled and unseen categories get the
    `unknown` code, both recorded in `notes`; otherwise unseen categories are recorded as
    problems (code -1, which the caller must drop) and missing values must have been found
    as problems already (`find_missing`).
    """
    notes = notes if notes is not None else Notes()
    out = np.empty((len(frame), len(enc.names)), dtype=np.float32)
    gaps = {}
    for j, name in enumerate(enc.continuous):
        numbers = pd.to_numeric(frame[name], errors="coerce")
        for row in np.flatnonzero(numbers.isna().to_numpy() & frame[name].notna().to_numpy()):
            problems.add(row, f"{frame[name].iloc[row]!r} is not a number", column=name, kind="not a number")
        values = numbers.to_numpy(dtype=float, na_value=np.nan)
        gaps[name] = is_missing(numbers)
        if enc.impute:
            values = np.where(gaps[name], enc.fill[j], values)
            notes.imputed[name] = gaps[name]
        out[:, j] = (values - enc.mean[j]) / enc.std[j]
    offset = len(enc.continuous)
    for j, name in enumerate(enc.categorical):
        out[:, offset + j] = _category_codes(frame[name], name, enc, problems, notes)
    offset += len(enc.categorical)
    for j, name in enumerate(enc.indicators):
        out[:, offset + j] = gaps[name]
    return out


def _category_codes(values: pd.Series, name: str, enc: Encoding, problems: Problems, notes: Notes) -> np.ndarray:
    codes_of = {c: i for i, c in enumerate(enc.codes(name))}
    text = category_text(values)
    codes = np.array(text.map({c: i for i, c in enumerate(enc.categories[name])}), dtype=float)
    empty = values.isna().to_numpy()
    if enc.impute:
        notes.imputed[name] = empty
        codes[empty] = codes_of.get(MISSING, codes_of[UNKNOWN])
        unseen = np.isnan(codes)
        notes.unknown[name] = unseen
        codes[unseen] = codes_of[UNKNOWN]
        return codes
    for row in np.flatnonzero(np.isnan(codes) & ~empty):
        problems.add(
            row,
            f"category {text.iloc[row]!r} does not occur in the training split",
            column=name,
            kind="a category that does not occur in the training split",
        )
    return np.nan_to_num(codes, nan=-1.0)


def encode_split_table(
    features: pd.DataFrame,
    continuous: Sequence[str],
    categorical: Sequence[str],
    split: np.ndarray,
    problems: Problems,
    vocabulary: pd.DataFrame | None = None,
    *,
    impute: bool = False,
    notes: Notes | None = None,
) -> tuple[np.ndarray, Encoding]:
    """Fit the encoding on the training rows (those not already bad) and encode every row.

    Args:
        impute: fill missing values and map unseen categories to `unknown` (see `fit_encoding`);
            what was filled is recorded in `notes`.
    """
    train = features[(split == "train") & ~np.isin(np.arange(len(features)), list(problems.bad))]
    enc = fit_encoding(train, continuous, categorical, vocabulary, impute=impute)
    return encode(features, enc, problems, notes), enc


# ---------------------------------------------------------------- a user's table: TableState


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
    # the quantile bins of a numeric target that are its classes (data.target_bins; gaal_cli.data.target)
    target_bins: TargetBins | None = None

    @property
    def field_lengths(self) -> tuple[int, ...]:
        return self.encoding.field_lengths

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
            **({"target_bins": self.target_bins.to_json()} if self.target_bins else {}),
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
                target_bins=TargetBins.from_json(data.get("target_bins"), source),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise GaalError(f"malformed {STATE_FORMAT} record ({type(err).__name__}: {err})", source=source) from None


@dataclass
class EncodedTable:
    """A table encoded by a record: one entry per input row, bad rows recorded in `problems`.

    `labels` is None when the table has no target column; a row without a label gets -1.
    `ids` names each row in an output: its id-column value (the column `id_name`), else its row
    number from 0 (`id_name` "row").
    """

    ids: list[str]
    id_name: str
    paths: list[str]
    tabular: np.ndarray
    labels: np.ndarray | None
    problems: Problems
    notes: Notes


def fit_state(
    train: pd.DataFrame,
    cfg: DataConfig,
    roles: ColumnRoles,
    class_names: list[str],
    id_column: str | None = None,
    bins: TargetBins | None = None,
) -> TableState:
    """Fit the date origins and the encoding on the training rows (bad rows already left out).

    Args:
        roles: the columns' roles, from `infer_roles` on the whole table (typing sees no label,
            and a flag column may show one value in train only); its date origins are set here.
        id_column: the column naming the rows (`data.id_column`, else the first inferred id).
        bins: the target's quantile bins, when they are its classes (`data.target_bins`).
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
        target_bins=bins,
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
        labels = _run_labels(frame[state.target], state, problems if label_problems else None)
    has_ids = state.id_column is not None and state.id_column in frame.columns
    ids = [str(v) for v in frame[state.id_column]] if has_ids else [str(i) for i in range(len(frame))]
    return EncodedTable(ids, state.id_column if has_ids else "row", paths, tabular, labels, problems, notes)


def _run_labels(values: pd.Series, state: TableState, problems: Problems | None) -> np.ndarray:
    """Class indices in the run's classes (a number's bin when the run binned its target); -1 for an
    empty cell or (recorded in `problems`) another label."""
    if state.target_bins is not None:
        bad = TargetBins.not_numbers(values)
        _bad_labels(problems, values, values, bad, "is not a number (the run binned its target)", "a number")
        return state.target_bins.labels(values)
    lookup = {name: i for i, name in enumerate(state.class_names)}
    text = category_text(values)
    labels = np.array(text.map(lookup).fillna(-1), dtype=np.int64)
    labels[values.isna().to_numpy()] = -1
    bad = (labels < 0) & values.notna().to_numpy()
    _bad_labels(problems, values, text, bad, "is not one of the run's classes", "one of the run's classes")
    return labels


def _bad_labels(
    problems: Problems | None, values: pd.Series, shown: pd.Series, bad: np.ndarray, why: str, expected: str
) -> None:
    """Record each row flagged in `bad` (its label as `shown`) in `problems`, if kept."""
    if problems is None:
        return
    for row in np.flatnonzero(bad):
        problems.add(
            row, f"label {shown.iloc[row]!r} {why}", column=str(values.name), kind=f"a label that is not {expected}"
        )


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


# ---------------------------------------------------------------- a prepared dataset: PreparedRecord


@dataclass(frozen=True)
class PreparedRecord:
    """What a run on a prepared dataset (dvm, celeba, sun, ham10000) carries: the encoded column
    names, field lengths and class names, not the recipe's steps from the raw download (DVM's
    joins of four tables, SUN's vote threshold), so it applies to tables already in the prepared
    format."""

    columns: list[str]
    field_lengths: tuple[int, ...]
    class_names: list[str]
    image_size: int
    normalize: str
    recipe: str

    @classmethod
    def from_json(cls, data: dict, source: str) -> PreparedRecord:
        """Read a record saved by `prepared_record`.

        Raises:
            GaalError: a key is missing or holds the wrong kind of value.
        """
        try:
            return cls(
                columns=[str(c) for c in data["columns"]],
                field_lengths=tuple(int(n) for n in data["field_lengths"]),
                class_names=[str(c) for c in data["class_names"]],
                image_size=int(data["image"]["size"]),
                normalize=str(data["image"]["normalize"]),
                recipe=str((data.get("recipe") or {}).get("name", "its recipe")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise GaalError(
                f"malformed {PREPARED_FORMAT} record ({type(err).__name__}: {err})", source=source
            ) from None


def prepared_record(manifest: dict, image_size: int, normalize: str) -> dict:
    """The record a run on a prepared dataset saves: the manifest's encoding and the image settings."""
    return {
        "format": PREPARED_FORMAT,
        "format_version": 1,
        **{k: manifest.get(k) for k in ("recipe", "target", "columns", "field_lengths", "encoding")},
        "class_names": list(manifest["class_names"]),
        "image": {"size": image_size, "normalize": normalize},
    }


def read_record(data: dict | None, source: str) -> TableState | PreparedRecord:
    """A run's preprocessing record, of either kind.

    Raises:
        GaalError: no record (runs on the synthetic data have none, nor do runs saved before
            records were kept), or a malformed one.
    """
    kind = data.get("format") if isinstance(data, dict) else None
    if kind == STATE_FORMAT:
        return TableState.from_json(data, source)
    if kind == PREPARED_FORMAT:
        return PreparedRecord.from_json(data, source)
    raise GaalError(
        "the run carries no preprocessing record to encode new rows with (runs on the synthetic data have "
        "none, nor do runs saved before records were kept); predict needs a run on a table or a prepared dataset",
        source=source,
        field="preprocessing",
    )


def apply_prepared(
    record: PreparedRecord,
    frame: pd.DataFrame,
    table: Path,
    *,
    image_root: str,
    table_class_names: list[str] | None = None,
    skip_bad: bool = False,
    modalities: tuple[str, ...] = ("image", "tabular"),
) -> EncodedTable:
    """Read a table in the prepared format (already encoded) as the run that saved `record` did.

    Args:
        image_root: the folder its `image` paths are relative to.
        table_class_names: the class names its `label` indices stand for (its manifest's),
            default the run's own.
        modalities: the modalities to read; the other's columns need not be there.

    Raises:
        GaalError: a column the run was trained with is absent.
    """
    needed = [IMAGE_COLUMN] * ("image" in modalities) + record.columns * ("tabular" in modalities)
    absent = [c for c in needed if c not in frame.columns]
    if absent:
        raise GaalError(
            f"the table lacks column(s) the run was trained with: {', '.join(absent)}. A run on a prepared "
            f"dataset predicts on tables in the prepared format (PREP/table.csv of `gaal data prepare "
            f"{record.recipe}`): its record holds the encoded columns, not the recipe's steps from the raw download",
            source=str(table),
        )
    problems = Problems(str(table), row_names(table, len(frame)), skip_bad)
    paths = [""] * len(frame)
    if "image" in modalities:
        paths = _joined_paths(frame[IMAGE_COLUMN], image_root, problems)
    tabular = np.zeros((len(frame), len(record.columns)), dtype=np.float32)
    if "tabular" in modalities:
        tabular = _encoded_columns(frame, record.columns, record.field_lengths, problems)
    labels = None
    if LABEL_COLUMN in frame.columns:
        names = record.class_names if table_class_names is None else table_class_names
        labels = _labels_by_name(frame[LABEL_COLUMN], names, record.class_names)
    id_name = IMAGE_COLUMN if IMAGE_COLUMN in frame.columns else "row"
    ids = [str(v) for v in frame[IMAGE_COLUMN]] if id_name == IMAGE_COLUMN else [str(i) for i in range(len(frame))]
    return EncodedTable(ids, id_name, paths, tabular, labels, problems, Notes())


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
