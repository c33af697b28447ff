"""Preparation shared by every real dataset's table: column typing, encoding, bad rows and seeded splits.

Continuous columns are z-scored with statistics fitted on the training split only (the MMCL
recipe fits them on the whole data, which leaks the test split into training). Categorical
columns become integer codes 0..k-1 in the order of their sorted categories, the MMCL
field-length convention that `TabularSchema` describes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from gaal_cli.errors import GaalError

SPLITS = ("train", "val", "test")

# Numeric columns with at most this many distinct values are flags (0/1, yes/no) and become
# categorical; integer counts such as doors or seats stay continuous, since their order matters.
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

    def add(self, row: int, reason: str, *, column: str | None = None, file: str | None = None) -> None:
        self.bad.setdefault(int(row), (reason, column, file))

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

    def counts(self) -> dict[str, int]:
        """How many rows were dropped, per reason."""
        out: dict[str, int] = {}
        for reason, _, _ in self.bad.values():
            key = re.sub(r"'[^']*'", "X", reason).split(":")[0]
            out[key] = out.get(key, 0) + 1
        return out


def infer_types(
    frame: pd.DataFrame,
    columns: Sequence[str],
    categorical: Sequence[str] | None = None,
    continuous: Sequence[str] | None = None,
) -> tuple[list[str], list[str]]:
    """Split feature columns into (continuous, categorical).

    Numeric columns are continuous unless they have at most `FEW_DISTINCT` values; text and
    boolean columns are categorical. Explicit lists win over the inference.

    Raises:
        GaalError: an explicit column that the table does not have.
    """
    for key, names in (("data.categorical", categorical), ("data.continuous", continuous)):
        missing = [n for n in names or () if n not in columns]
        if missing:
            raise GaalError(f"no such column(s): {', '.join(missing)}", field=key)
    forced_cat, forced_cont = set(categorical or ()), set(continuous or ())
    cont, cat = [], []
    for name in columns:
        values = frame[name]
        numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        is_cat = name in forced_cat or (
            name not in forced_cont and (not numeric or values.dropna().nunique() <= FEW_DISTINCT)
        )
        (cat if is_cat else cont).append(name)
    return cont, cat


@dataclass(frozen=True)
class Encoding:
    """Fitted encoding of a table: means/stds of continuous columns, categories of categorical ones."""

    continuous: tuple[str, ...]
    categorical: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    categories: dict[str, list[str]]

    @property
    def names(self) -> tuple[str, ...]:
        return self.continuous + self.categorical

    @property
    def field_lengths(self) -> tuple[int, ...]:
        return (1,) * len(self.continuous) + tuple(len(self.categories[c]) for c in self.categorical)

    def to_json(self) -> dict:
        return {
            "continuous": list(self.continuous),
            "categorical": list(self.categorical),
            "mean": list(self.mean),
            "std": list(self.std),
            "categories": self.categories,
        }


def category_text(values: pd.Series) -> pd.Series:
    """Categories compared as text, so 1 and 1.0 or True and 'True' are one category."""
    return values.map(lambda v: str(int(v)) if isinstance(v, float) and v.is_integer() else str(v))


def fit_encoding(
    train: pd.DataFrame,
    continuous: Sequence[str],
    categorical: Sequence[str],
    vocabulary: pd.DataFrame | None = None,
) -> Encoding:
    """Fit statistics on the training rows.

    Args:
        vocabulary: rows whose categories define the codes (default: the training rows). A
            recipe may pass the whole table so its field lengths match the published ones;
            categories carry no label information.
    """
    vocab = train if vocabulary is None else vocabulary
    mean = train[list(continuous)].astype(float).mean() if continuous else pd.Series(dtype=float)
    std = train[list(continuous)].astype(float).std(ddof=0) if continuous else pd.Series(dtype=float)
    return Encoding(
        continuous=tuple(continuous),
        categorical=tuple(categorical),
        mean=tuple(float(mean[c]) for c in continuous),
        std=tuple(float(std[c]) if std[c] > 1e-12 else 1.0 for c in continuous),
        categories={c: sorted(category_text(vocab[c].dropna()).unique(), key=natural_key) for c in categorical},
    )


def natural_key(text: str) -> tuple:
    """Numbers before text and in numeric order, so codes "2" < "10" keep their meaning."""
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


def find_missing(frame: pd.DataFrame, columns: Sequence[str], problems: Problems) -> None:
    """Record every row with an empty or NaN value in `columns` (first such column named)."""
    for name in columns:
        problems.add_many(frame[name].isna().to_numpy(), "missing value (NaN or empty cell)", column=name)


def encode(frame: pd.DataFrame, enc: Encoding, problems: Problems) -> np.ndarray:
    """The encoded float32 matrix (rows x fields); unseen categories are recorded as problems.

    Rows of an unseen category get code -1 here and must be dropped by the caller.
    """
    out = np.empty((len(frame), len(enc.names)), dtype=np.float32)
    for j, name in enumerate(enc.continuous):
        out[:, j] = (frame[name].astype(float).to_numpy() - enc.mean[j]) / enc.std[j]
    offset = len(enc.continuous)
    for j, name in enumerate(enc.categorical):
        lookup = {c: i for i, c in enumerate(enc.categories[name])}
        text = category_text(frame[name])
        codes = text.map(lookup)
        unseen = codes.isna().to_numpy()
        for row in np.flatnonzero(unseen):
            problems.add(row, f"category {text.iloc[row]!r} does not occur in the training split", column=name)
        out[:, offset + j] = codes.fillna(-1).to_numpy(dtype=np.float32)
    return out


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
) -> None:
    """Record the rows of every class that is absent from one of the splits."""
    for cls, name in enumerate(class_names):
        rows = labels == cls
        absent = [s for s in SPLITS if not np.any(rows & (split == s))]
        if absent:
            problems.add_many(rows, f"class {name!r} has no row in the {'/'.join(absent)} split", column=column)
