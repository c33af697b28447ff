"""Preparation shared by every real dataset's table: column typing, encoding, bad rows and seeded splits.

Continuous columns are z-scored with statistics fitted on the training split only (the MMCL
recipe fits them on the whole data, which leaks the test split into training). Categorical
columns become integer codes 0..k-1 in the order of their sorted categories, the MMCL
field-length convention that `TabularSchema` describes. A user's table also imputes missing
values from training statistics and maps categories unseen in training to an `unknown` code
(`Encoding`); a split can keep every group of rows (a patient, a lesion) in one split.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from gaal_cli.errors import GaalError

SPLITS = ("train", "val", "test")

# Numeric columns with at most this many distinct values are flags (0/1, yes/no) and become
# categorical; integer counts such as doors or seats stay continuous, since their order matters
# (the roles of a user table's columns: gaal_cli/data/column_roles.py).
FEW_DISTINCT = 2


@dataclass
class Problems:
    """Bad rows found while loading: fatal one at a time, or dropped and counted with skip.

    Args:
        source: the file the rows come from (named in the error).
        row_names: a human name for each row ("line 7", "Adv_ID 2_1$$10").
        skip: drop bad rows instead of failing.
    """

    source: str
    row_names: Sequence[str]
    skip: bool = False
    bad: dict[int, tuple[str, str | None, str | None]] = field(default_factory=dict)
    kinds: dict[int, str] = field(default_factory=dict)

    def add(
        self, row: int, reason: str, *, column: str | None = None, file: str | None = None, kind: str | None = None
    ) -> None:
        """Record a bad row (the first reason found for a row wins).

        Args:
            kind: what the row is counted under when dropped, for a `reason` that quotes the row's
                own value ("'abc' is not a number" counts as "not a number"); default: `reason`.
        """
        if int(row) not in self.bad:
            self.bad[int(row)] = (reason, column, file)
            self.kinds[int(row)] = kind or reason

    def add_many(self, rows: np.ndarray, reason: str, *, column: str | None = None) -> None:
        for row in np.flatnonzero(rows) if rows.dtype == bool else rows:
            self.add(row, reason, column=column)

    def raise_or_keep(self) -> np.ndarray:
        """The mask of rows to keep.

        Raises:
            GaalError: there are bad rows and `skip` is off; names the first one's file, row and column.
        """
        if self.bad and not self.skip:
            row = min(self.bad)
            reason, column, file = self.bad[row]
            more = len(self.bad) - 1
            tail = (
                f" ({more} more bad row{'s' if more > 1 else ''}; --skip-bad drops and counts them)"
                if more
                else (" (--skip-bad drops such rows)")
            )
            where = f"{self.row_names[row]}" + (f", image {file}" if file else "")
            raise GaalError(f"{where}: {reason}{tail}", source=self.source, field=column)
        keep = np.ones(len(self.row_names), dtype=bool)
        keep[list(self.bad)] = False
        return keep

    def counts(self, rows: np.ndarray | None = None) -> dict[str, int]:
        """How many rows were dropped (over `rows`, a boolean mask, when given), per reason with
        its column: "class 'df' has no row in the val split (column 'diagnosis')"."""
        out: dict[str, int] = {}
        for row, (_, column, _) in self.bad.items():
            if rows is not None and not rows[row]:
                continue
            key = self.kinds.get(row, self.bad[row][0]) + (f" (column {column!r})" if column else "")
            out[key] = out.get(key, 0) + 1
        return out


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


def category_text(values: pd.Series) -> pd.Series:
    """Categories compared as text, so 1 and 1.0 or True and 'True' are one category."""
    return values.map(lambda v: str(int(v)) if isinstance(v, float) and v.is_integer() else str(v))


def is_missing(values: pd.Series) -> np.ndarray:
    """Empty cells, NaN, and non-finite numbers (an `inf` would make the mean infinite)."""
    missing = np.array(values.isna(), dtype=bool)
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        missing |= ~np.isfinite(values.to_numpy(dtype=float, na_value=np.nan))
    return missing


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


@dataclass
class Notes:
    """What encoding did to the rows it kept: per column, the rows imputed and the unknown categories."""

    imputed: dict[str, np.ndarray] = field(default_factory=dict)
    unknown: dict[str, np.ndarray] = field(default_factory=dict)

    def counts(self, rows: np.ndarray | None = None) -> dict[str, dict[str, int]]:
        """Counts per column (over `rows`, a boolean mask, when given); columns with none left out."""
        out = {}
        for kind, masks in (("imputed", self.imputed), ("unknown_categories", self.unknown)):
            counted = {c: int(m.sum() if rows is None else m[rows].sum()) for c, m in masks.items()}
            out[kind] = {c: n for c, n in counted.items() if n}
        return out


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


def stratified_holdout(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of a stratified held-out part with ceil(fraction * n) rows.

    Each class contributes floor(fraction * n_c) rows; the remaining rows go to the classes with
    the largest remainders (ties broken at random), which gives the totals of scikit-learn's
    `train_test_split` (DVM: 88,207 / 17,642 / 70,565) though not the same rows.
    """
    n = len(labels)
    classes, counts = np.unique(labels, return_counts=True)
    quota = fraction * counts
    take = np.floor(quota).astype(int)
    short = math.ceil(fraction * n) - take.sum()
    if short > 0:
        order = np.lexsort((rng.random(len(classes)), -(quota - take)))
        take[order[:short]] += 1
    held = np.zeros(n, dtype=bool)
    for cls, k in zip(classes, take):
        rows = np.flatnonzero(labels == cls)
        held[rng.permutation(rows)[:k]] = True
    return held


def stratified_split(labels: np.ndarray, test_fraction: float, val_fraction: float, seed: int) -> np.ndarray:
    """Split names per row: `test_fraction` of all rows to test, then `val_fraction` of the rest to val."""
    rng = np.random.default_rng(seed)
    split = np.full(len(labels), "train", dtype=object)
    test = stratified_holdout(labels, test_fraction, rng)
    split[test] = "test"
    rest = np.flatnonzero(~test)
    val = stratified_holdout(labels[rest], val_fraction, rng)
    split[rest[val]] = "val"
    return split


def check_classes_in_splits(
    labels: np.ndarray,
    split: np.ndarray,
    class_names: Sequence[str],
    problems: Problems,
    column: str | None = None,
    exempt: Sequence[str] = (),
) -> None:
    """Record the rows of every class that is absent from one of the splits (but the `exempt` ones)."""
    for cls, name in enumerate(class_names):
        if name in exempt:
            continue
        rows = labels == cls
        absent = [s for s in SPLITS if not np.any(rows & (split == s))]
        if absent:
            problems.add_many(rows, f"class {name!r} has no row in the {'/'.join(absent)} split", column=column)


def grouped_holdout(labels: np.ndarray, groups: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of a held-out part made of whole groups, stratified as far as groups allow.

    Each group counts towards the class most of its rows have; per class, groups in a random
    order are held out up to the prefix whose row count is closest to `fraction` of that
    class's rows.
    """
    names, group_of_row = np.unique(groups, return_inverse=True)
    size = np.bincount(group_of_row, minlength=len(names))
    votes = np.zeros((len(names), labels.max() + 1 if len(labels) else 1), dtype=np.int64)
    np.add.at(votes, (group_of_row, labels), 1)
    majority = votes.argmax(1)
    held = np.zeros(len(names), dtype=bool)
    for cls in np.unique(majority):
        members = rng.permutation(np.flatnonzero(majority == cls))
        totals = np.concatenate([[0], np.cumsum(size[members])])
        take = int(np.argmin(np.abs(totals - fraction * totals[-1])))
        held[members[:take]] = True
    return held[group_of_row]


def grouped_split(
    labels: np.ndarray, groups: np.ndarray, test_fraction: float, val_fraction: float, seed: int
) -> np.ndarray:
    """Like `stratified_split`, but every group's rows land in one split (no patient in two)."""
    rng = np.random.default_rng(seed)
    split = np.full(len(labels), "train", dtype=object)
    test = grouped_holdout(labels, groups, test_fraction, rng)
    split[test] = "test"
    rest = np.flatnonzero(~test)
    val = grouped_holdout(labels[rest], groups[rest], val_fraction, rng)
    split[rest[val]] = "val"
    return split


def check_splits_filled(split: np.ndarray, source: str) -> None:
    """Refuse a split with no rows: nothing could be selected or measured on it.

    Raises:
        GaalError: names the empty split and the counts of all three.
    """
    for name in SPLITS:
        if not np.any(split == name):
            raise GaalError(f"the {name} split has no rows (counts: {_split_counts(split)})", source=source)


def check_trainable(labels: np.ndarray, split: np.ndarray, class_names: Sequence[str], source: str) -> None:
    """Refuse data a run cannot learn or be measured on: an empty split, or under two classes in train.

    Raises:
        GaalError: names the split and what it holds.
    """
    check_splits_filled(split, source)
    present = np.unique(labels[split == "train"])
    if len(present) < 2:
        held = ", ".join(repr(class_names[i]) for i in present)
        raise GaalError(
            f"the train split holds {len(present)} class ({held}); a classifier needs at least two", source=source
        )


def _split_counts(split: np.ndarray) -> str:
    return ", ".join(f"{s} {int(np.sum(split == s))}" for s in SPLITS)
