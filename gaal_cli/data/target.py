"""A user table's target column: its classes, and what to do when it holds measurements, not classes.

gaal classifies. A target of numbers with many distinct values (a price, an area, a score) would
otherwise become hundreds of classes of one or two rows each, refused for being too small for the
split, with nothing saying why. `continuous_reason` recognises such a column and
`continuous_target_error` says so in one paragraph, offering what gaal can do with it:
`data.target_bins=N` makes N quantile bins of the column its classes (`TargetBins`), named by
their ranges ("below 12.5", "12.5 to 20.3", "20.3 and above"). The bin edges are quantiles of the
whole column: like the set of class names, they define the classes, and no feature statistic is
fitted on them. A run records them, so `gaal eval` and `gaal predict` bin new labels the same way.

`data.target_bins=0` keeps every value as its own class (numeric class codes that happen to look
like measurements: more than `MANY_VALUES` of them with fewer than `ROWS_PER_CLASS` rows each).
Pure pandas and numpy: the CLI runs these checks before torch loads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from gaal_cli.foundation.errors import GaalError

# a numeric target with more distinct values than this, and either a fractional value or fewer
# rows per value than ROWS_PER_CLASS on average, is a measurement rather than a set of classes:
# digit codes (10 classes), diagnoses (7) or 200 bird species of 60 images each stay classes
MANY_VALUES = 20
ROWS_PER_CLASS = 5
SUGGESTED_BINS = 5


def continuous_reason(values: pd.Series) -> str | None:
    """Why the target column `values` looks continuous, or None when it reads as classes.

    Only numbers count: text labels are classes whatever their number.
    """
    present = values.dropna()
    if present.empty or pd.api.types.is_bool_dtype(present) or not pd.api.types.is_numeric_dtype(present):
        return None
    numbers = present.to_numpy(dtype=float)
    distinct = len(np.unique(numbers))
    if distinct <= MANY_VALUES:
        return None
    fractional = bool(np.any(numbers != np.round(numbers)))
    per_value = len(numbers) / distinct
    if not fractional and per_value >= ROWS_PER_CLASS:
        return None
    kind = "fractional numbers" if fractional else "whole numbers"
    return (
        f"{distinct} distinct {kind} from {_number(numbers.min())} to {_number(numbers.max())}, "
        f"{per_value:.1f} rows per value"
    )


def continuous_target_error(column: str, reason: str, source: str) -> GaalError:
    """The one-paragraph refusal of a continuous target, naming what gaal can do with it."""
    return GaalError(
        f"the target column {column!r} looks continuous ({reason}): gaal classifies, and each value would be "
        f"a class of its own. --set data.target_bins={SUGGESTED_BINS} predicts its {SUGGESTED_BINS} quantile "
        "bins as classes (named by their ranges; any N from 2); --set data.target_bins=0 keeps every value as "
        "a class (numeric class codes)",
        source=source,
        field="data.target",
    )


@dataclass(frozen=True)
class TargetBins:
    """Quantile bins of a numeric target: `edges` are the inner edges, ascending; a value `v` is in
    bin i when edges[i-1] <= v < edges[i] (the first bin below edges[0], the last from edges[-1] up)."""

    edges: tuple[float, ...]

    @classmethod
    def fit(cls, values: pd.Series, bins: int, source: str, column: str) -> TargetBins:
        """`bins` quantile bins of the column's values (equal edges merged, so ties may give fewer).

        Raises:
            GaalError: the column holds text, or so few distinct values that no two bins remain.
        """
        numbers = _numbers(values, source, column)
        present = numbers[~np.isnan(numbers)]
        inner = np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1]) if len(present) else np.array([])
        edges = tuple(float(e) for e in np.unique(inner) if e > present.min())
        if not edges:
            raise GaalError(
                f"data.target_bins={bins}: the column's values do not spread into two bins "
                f"({len(np.unique(present))} distinct)",
                source=source,
                field="data.target_bins",
            )
        return cls(edges)

    @property
    def class_names(self) -> list[str]:
        """A name per bin, from its range: 'below 12.5', '12.5 to 20.3', '20.3 and above'."""
        for digits in (4, 6, 8, 12, 17):
            e = [_number(x, digits) for x in self.edges]
            names = [f"below {e[0]}", *(f"{a} to {b}" for a, b in zip(e, e[1:])), f"{e[-1]} and above"]
            if len(set(e)) == len(e):  # every edge told apart from its neighbours
                return names
        return names

    def labels(self, values: pd.Series) -> np.ndarray:
        """Each row's bin index; -1 where the cell is empty or not a number (`not_numbers` finds those)."""
        numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
        labels = np.searchsorted(np.array(self.edges), numbers, side="right").astype(np.int64)
        labels[np.isnan(numbers)] = -1
        return labels

    @staticmethod
    def not_numbers(values: pd.Series) -> np.ndarray:
        """The rows whose cell holds something, but not a number."""
        return values.notna().to_numpy() & np.isnan(pd.to_numeric(values, errors="coerce").to_numpy(dtype=float))

    def to_json(self) -> list[float]:
        return list(self.edges)

    @classmethod
    def from_json(cls, data: object, source: str) -> TargetBins | None:
        """The bins a run recorded (None: its target's values were its classes).

        Raises:
            GaalError: not an ascending list of finite numbers.
        """
        if data is None:
            return None
        ok = isinstance(data, list) and data and all(isinstance(x, int | float) for x in data)
        if not ok or not np.all(np.isfinite(data)) or list(data) != sorted(set(data)):
            raise GaalError("target_bins is not an ascending list of finite numbers", source=source)
        return cls(tuple(float(x) for x in data))


def _numbers(values: pd.Series, source: str, column: str) -> np.ndarray:
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    text = TargetBins.not_numbers(values)
    if text.any():
        first = values[text].iloc[0]
        raise GaalError(
            f"data.target_bins bins a numeric target; {int(text.sum())} cell(s) are not numbers (e.g. {first!r})",
            source=source,
            field=column,
        )
    return numbers


def _number(value: float, digits: int = 4) -> str:
    """`digits` significant digits; from 1000 up, written out with thousands separators (277,900)."""
    rounded = float(f"{value:.{digits}g}")
    if abs(rounded) < 1000:
        return f"{rounded:g}"
    decimals = max(0, digits - len(str(int(abs(rounded)))))
    return f"{rounded:,.{decimals}f}"
