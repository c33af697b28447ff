"""Small types every module that reads a table shares: split names, bad rows, what encoding filled in.

`Problems` collects bad rows (fatal one at a time, or dropped and counted with --skip-bad),
`Notes` what encoding imputed or coded `unknown`; `is_missing` and `category_text` are the two
cell tests that preprocessing, splitting and prediction agree on. Nothing here reads a file
or fits anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from gaal_cli.foundation.errors import GaalError

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


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

    def take(self, keep: np.ndarray) -> Problems:
        """The bad rows among those the boolean mask `keep` keeps, numbered as the kept rows are."""
        position = np.cumsum(keep) - 1
        kept = Problems(self.source, [name for name, k in zip(self.row_names, keep) if k], self.skip)
        for row, value in self.bad.items():
            if keep[row]:
                kept.bad[int(position[row])] = value
                kept.kinds[int(position[row])] = self.kinds[row]
        return kept

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


def category_text(values: pd.Series) -> pd.Series:
    """Categories compared as text, so 1 and 1.0 or True and 'True' are one category."""
    return values.map(lambda v: str(int(v)) if isinstance(v, float) and v.is_integer() else str(v))


def is_missing(values: pd.Series) -> np.ndarray:
    """Empty cells, NaN, and non-finite numbers (an `inf` would make the mean infinite)."""
    missing = np.array(values.isna(), dtype=bool)
    if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        missing |= ~np.isfinite(values.to_numpy(dtype=float, na_value=np.nan))
    return missing


def row_names(table: Path, n: int) -> list[str]:
    return [f"line {i + 2}" if table.suffix.lower() == ".csv" else f"row {i + 1}" for i in range(n)]
