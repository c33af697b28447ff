"""The role of each column of a user's table, inferred by one rule set and overridable.

Roles, and what training does with each:

- `id`: unique or near-unique text (no spaces), or integers that are all distinct and fill
  their range densely like a counter. Left out; the first one names the rows of `gaal predict`'s
  output when `data.id_column` is not set.
- `text`: free text (high-cardinality strings, most with spaces). Left out, with a note: no text
  model is in scope.
- `datetime`: text that reads as dates (ISO, day-first or month-first). Expanded to numbers:
  year, month, day of year, day of week, and days since the earliest training date. A date that
  does not parse is a missing value (imputed like any other).
- `number`: numbers written as text ("1,234", "12%", "$3.5", "253.47 €", "1.234,5", "13 kg"):
  the decimal and thousands marks are inferred from the column (where both readings read every
  value, "25.347" is a thousands mark when the table writes its decimals with a comma in another
  column, as German tables do), currency signs before or after and `%` are dropped (12% reads 12),
  and one unit after the numbers ("kg") is recorded and dropped: a value with another unit is a bad
  row, as is any value that does not parse ("... is not a number"). Continuous.
- `empty`: every value is missing: left out (nothing to learn from, not a one-value flag).
- `boolean`: yes/no, true/false, y/n, t/f text, or a boolean column. Categorical (false, true).
- `categorical`, `continuous`: other text, and numbers with at most `FEW_DISTINCT` values, are
  categorical; other numbers continuous.
- `excluded`: left out because `data.exclude` says so.

A CSV read by pandas turns a column of "25.347" alone into floats before any role is inferred:
such a column is read as decimals (pandas' reading), whatever the table's other columns say.

Overrides (`data.exclude`, `data.categorical`, `data.continuous`, `data.datetime`,
`data.id_column`) win over inference; a name that is not a column is an error with a
did-you-mean. Everything decided is plain data (`ColumnRoles.to_json`) that travels with the run
in its preprocessing record, so `gaal predict` reads new rows exactly as training did.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from gaal_cli.foundation.errors import GaalError, did_you_mean

# Numeric columns with at most this many distinct values are flags (0/1, yes/no) and become
# categorical; integer counts such as doors or seats stay continuous, since their order matters
FEW_DISTINCT = 2
ROLES = ("id", "text", "datetime", "number", "boolean", "categorical", "continuous", "excluded", "empty")
LEFT_OUT = ("id", "text", "excluded", "empty")
# a column with fewer non-missing values says too little to call it an id or free text
MIN_ROWS = 20
NEAR_UNIQUE = 0.95  # share of distinct values above which text is an id (or free text)
TEXT_DISTINCT = 0.5  # share of distinct values above which spaced text is free text
DATE_SHARE = 0.9  # share of values that must read as dates for a text column to be one
# tried in this order; on a tie (every day <= 12) the earlier wins, and the reason says so
DATE_FORMATS = ("ISO8601", "%d/%m/%Y", "%m/%d/%Y", "%d.%m.%Y", "%d-%m-%Y", "%d/%m/%y", "%m/%d/%y")
DATE_PARTS = ("year", "month", "day of year", "day of week", "days")
TRUE_WORDS = {"yes", "y", "true", "t"}
FALSE_WORDS = {"no", "n", "false", "f"}
# (decimal mark, thousands mark); on a tie the earlier wins ("234,311" reads 234311)
NUMBER_MARKS = ((".", ","), (",", "."), (",", " "), (".", " "), (".", "'"), (",", "'"))
CURRENCY = "$€£¥"
# a unit after a number ("13 kg", "120km/h"): letters, not a number's exponent ("1e5")
UNIT = r"(?![eE][+-]?\d)[A-Za-zµ°Ω][A-Za-zµ°Ω²³/]{0,7}"


@dataclass
class ColumnRole:
    """One column's role, why it was given, and how its text is read (`marks`, `date_format`)."""

    role: str
    reason: str
    marks: tuple[str, str] | None = None
    date_format: str | None = None
    unit: str | None = None


@dataclass
class ColumnRoles:
    """Every feature-candidate column's role, plus the fitted date origins (days since the earliest training date)."""

    columns: dict[str, ColumnRole]
    origins: dict[str, str] = field(default_factory=dict)

    def of(self, role: str) -> list[str]:
        return [c for c, r in self.columns.items() if r.role == role]

    @property
    def sources(self) -> list[str]:
        """The columns training reads (every column not left out), in table order."""
        return [c for c, r in self.columns.items() if r.role not in LEFT_OUT]

    def types(self) -> tuple[list[str], list[str]]:
        """The (continuous, categorical) feature names of `derive`'s frame."""
        continuous, categorical = [], []
        for name, r in self.columns.items():
            if r.role == "datetime":
                continuous += [f"{name} {part}" for part in DATE_PARTS]
            elif r.role in ("number", "continuous"):
                continuous.append(name)
            elif r.role in ("boolean", "categorical"):
                categorical.append(name)
        return continuous, categorical

    def to_json(self) -> dict:
        return {
            "columns": {
                c: {
                    "role": r.role,
                    "reason": r.reason,
                    "marks": list(r.marks) if r.marks else None,
                    "date_format": r.date_format,
                    **({"unit": r.unit} if r.unit else {}),
                }
                for c, r in self.columns.items()
            },
            "origins": dict(self.origins),
        }

    @classmethod
    def from_json(cls, data: dict, source: str) -> ColumnRoles:
        """Rebuild roles saved by `to_json`.

        Raises:
            GaalError: an unknown role or a malformed entry.
        """
        try:
            columns = {}
            for name, r in data["columns"].items():
                if r["role"] not in ROLES:
                    raise ValueError(f"unknown role {r['role']!r} of column {name!r}")
                marks = tuple(str(m) for m in r["marks"]) if r.get("marks") else None
                unit = str(r["unit"]) if r.get("unit") else None
                columns[str(name)] = ColumnRole(str(r["role"]), str(r["reason"]), marks, r.get("date_format"), unit)
            return cls(columns, {str(k): str(v) for k, v in data.get("origins", {}).items()})
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise GaalError(f"malformed column roles ({type(err).__name__}: {err})", source=source) from None


def check_named_columns(overrides: dict[str, Sequence[str] | None], columns: Sequence[str], source: str) -> None:
    """Every column an override list names must be a feature-candidate column of the table.

    Raises:
        GaalError: names the key, the column, the closest existing name and the candidates.
    """
    seen: dict[str, str] = {}
    for key, names in overrides.items():
        for name in names or ():
            if name not in columns:
                raise GaalError(
                    f"no such column {name!r}{did_you_mean(name, columns)}; the feature columns are: "
                    f"{', '.join(map(str, columns))}",
                    source=source,
                    field=key,
                )
            if name in seen and seen[name] != key:
                raise GaalError(f"column {name!r} is named by {seen[name]} too; give it one role", field=key)
            seen[name] = key


def infer_roles(
    frame: pd.DataFrame,
    columns: Sequence[str],
    *,
    exclude: Sequence[str] | None = None,
    categorical: Sequence[str] | None = None,
    continuous: Sequence[str] | None = None,
    datetime: Sequence[str] | None = None,
) -> ColumnRoles:
    """The role of each of `columns` (the table's columns less target, image, split, group and id).

    Typing reads the whole table (it sees no label); the date origins are fitted later, on the
    training rows (`fit_origins`).
    """
    forced = {
        **{c: "excluded" for c in exclude or ()},
        **{c: "categorical" for c in categorical or ()},
        **{c: "continuous" for c in continuous or ()},
        **{c: "datetime" for c in datetime or ()},
    }
    comma_decimals = _comma_decimals(frame, [c for c in columns if c not in forced])
    out = {}
    for name in columns:
        values = frame[name]
        if name in forced:
            out[name] = _forced(values, forced[name])
        else:
            out[name] = _inferred(values, comma_decimals)
    return ColumnRoles(out)


def _comma_decimals(frame: pd.DataFrame, columns: Sequence[str]) -> str | None:
    """The first text column that reads as numbers only with ',' as the decimal mark ("3,5"): the
    table is written that way (German, French, ...), so a '.' elsewhere is a thousands mark."""
    for name in columns:
        values = frame[name]
        if not _is_text(values):
            continue
        text = values.dropna().astype(str).str.strip()
        if len(text) and _read_count(text, (",", ".")) == len(text) > _read_count(text, (".", ",")):
            return str(name)
    return None


def _forced(values: pd.Series, role: str) -> ColumnRole:
    key = {"excluded": "exclude"}.get(role, role)
    why = f"data.{key}"
    if role == "continuous" and _is_text(values):
        (marks, unit), _ = _best_marks(values.dropna())
        return ColumnRole("number", f"{why}; read as numbers", marks=marks, unit=unit)
    if role == "datetime":
        fmt, parsed = _best_date_format(values.dropna())
        if parsed == 0:
            raise GaalError(
                f"no value of column {values.name!r} reads as a date (tried {', '.join(DATE_FORMATS)})",
                field="data.datetime",
            )
        return ColumnRole("datetime", f"{why}; format {fmt}", date_format=fmt)
    return ColumnRole(role, why)


def _is_text(values: pd.Series) -> bool:
    return not (pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values))


def _inferred(values: pd.Series, comma_decimals: str | None = None) -> ColumnRole:
    seen = values.dropna()
    n, distinct = len(seen), seen.nunique()
    if n == 0 or (_is_text(values) and not seen.astype(str).str.strip().astype(bool).any()):
        return ColumnRole("empty", "every value is missing (or blank): nothing to learn from, left out")
    if pd.api.types.is_bool_dtype(values):
        return ColumnRole("boolean", "true/false values")
    if not _is_text(values):
        if distinct <= FEW_DISTINCT:
            return ColumnRole("categorical", f"numbers with {distinct} distinct values (a flag)")
        if _counter_like(seen):
            return ColumnRole("id", f"{distinct} distinct integers in a dense range, like a counter")
        return ColumnRole("continuous", "numbers")
    text = seen.astype(str).str.strip()
    words = set(text.str.lower().unique())
    if words and (words <= TRUE_WORDS | FALSE_WORDS) and not (words <= TRUE_WORDS or words <= FALSE_WORDS):
        return ColumnRole("boolean", f"yes/no values ({', '.join(sorted(words))})")
    (marks, unit), parsed = _best_marks(text, comma_decimals)
    if n and parsed == n and distinct > FEW_DISTINCT:
        why = f"numbers written as text (decimal {marks[0]!r}, thousands {marks[1]!r}"
        why += f"; unit {unit!r}" if unit else ""
        if marks[0] == "," and comma_decimals not in (None, values.name):
            why += f"; decimals written with ',' as in column {comma_decimals!r}"
        return ColumnRole("number", why + ")", marks, unit=unit)
    fmt, dated = _best_date_format(text)
    if n and dated >= DATE_SHARE * n:
        tie = " (ambiguous: every day <= 12, read day-first)" if _ambiguous(text, fmt) else ""
        return ColumnRole("datetime", f"{dated} of {n} values read as dates, format {fmt}{tie}", date_format=fmt)
    spaced = float(text.str.contains(" ").mean()) if n else 0.0
    if n >= MIN_ROWS and distinct >= NEAR_UNIQUE * n:
        if spaced >= 0.5:
            return ColumnRole("text", f"free text ({distinct} distinct of {n}, with spaces); no text model: left out")
        return ColumnRole("id", f"{distinct} distinct values of {n}: an identifier, left out")
    if n >= MIN_ROWS and distinct >= TEXT_DISTINCT * n and spaced >= 0.5:
        return ColumnRole("text", f"free text ({distinct} distinct of {n}, with spaces); no text model: left out")
    return ColumnRole("categorical", f"text with {distinct} distinct values")


def _counter_like(seen: pd.Series) -> bool:
    """Integers, all distinct, that fill at least half of their range (1, 2, 3, ... with gaps)."""
    n = len(seen)
    if n < MIN_ROWS or seen.nunique() != n:
        return False
    numbers = seen.to_numpy(dtype=float)
    if not np.all(np.isfinite(numbers)) or not np.all(numbers == np.round(numbers)):
        return False
    return n >= 0.5 * (numbers.max() - numbers.min() + 1)


def _number_pattern(decimal: str, thousands: str) -> re.Pattern:
    """A number with these marks, a sign, a currency sign before or after, and `%` or a unit after."""
    d, t = re.escape(decimal), re.escape(thousands)
    cur = f"[{re.escape(CURRENCY)}]"
    body = rf"(?:\d{{1,3}}(?:{t}\d{{3}})+|\d+)(?:{d}\d+)?|{d}\d+"
    return re.compile(
        rf"^(?P<sign>[+-]?){cur}?\s*(?P<sign2>[+-]?)(?P<number>{body})\s*(?:%|{cur}|(?P<unit>{UNIT}))?$"
    )


def _read_count(text: pd.Series, marks: tuple[str, str], unit: str | None = None) -> int:
    """How many of `text` read as numbers with `marks` and `unit` (or none)."""
    found = text.str.extract(_number_pattern(*marks))
    units = found["unit"]
    return int((found["number"].notna() & (units.isna() | (units == unit))).sum())


def _best_marks(text: pd.Series, comma_decimals: str | None = None) -> tuple[tuple[tuple[str, str], str | None], int]:
    """The (decimal, thousands) marks and the unit that read the most values, and how many they
    read. On a tie the earlier marks win ("234,311" reads 234311), but in a column without a comma
    ',' as the decimal mark wins ("25.347" reads 25347) when another column of the table writes its
    decimals with a comma (`comma_decimals`)."""
    text = text.astype(str).str.strip()
    best, count = (NUMBER_MARKS[0], None), -1
    dotted = comma_decimals and not text.str.contains(",", regex=False).any()
    order = sorted(NUMBER_MARKS, key=lambda m: m[0] != ",") if dotted else NUMBER_MARKS
    for marks in order:
        found = text.str.extract(_number_pattern(*marks))
        units = found["unit"].dropna()
        unit = units.mode().iloc[0] if len(units) else None  # one unit: the most frequent
        n = int((found["number"].notna() & (found["unit"].isna() | (found["unit"] == unit))).sum())
        if n > count:
            best, count = (marks, unit), n
    return best, count


def parse_numbers(values: pd.Series, marks: tuple[str, str], unit: str | None = None) -> pd.Series:
    """Numbers written as text, as floats; a value that does not read (another unit than `unit`
    included) stays as it was (text). A numeric column passes through unchanged.
    """
    if not _is_text(values):
        return values
    pattern = _number_pattern(*marks)
    decimal, thousands = marks

    def read(v):
        if pd.isna(v):
            return np.nan
        found = pattern.match(str(v).strip())
        if not found or found["unit"] not in (None, unit):
            return v
        number = float(found["number"].replace(thousands, "").replace(decimal, "."))
        return -number if "-" in found["sign"] + found["sign2"] else number

    return values.map(read).astype(object)


def _best_date_format(text: pd.Series) -> tuple[str, int]:
    best, count = DATE_FORMATS[0], 0
    for fmt in DATE_FORMATS:
        n = int(read_dates(text, fmt).notna().sum())
        if n > count:
            best, count = fmt, n
    return best, count


def _ambiguous(text: pd.Series, fmt: str) -> bool:
    twin = {"%d/%m/%Y": "%m/%d/%Y", "%d/%m/%y": "%m/%d/%y"}.get(fmt)
    return twin is not None and read_dates(text, twin).notna().sum() == read_dates(text, fmt).notna().sum()


def read_dates(values: pd.Series, fmt: str) -> pd.Series:
    """Dates (NaT where a value does not read in `fmt`)."""
    text = values.astype(str).str.strip().where(values.notna())
    return pd.to_datetime(text, format=fmt, errors="coerce")


def fit_origins(train: pd.DataFrame, roles: ColumnRoles) -> None:
    """Record each date column's earliest training date (the zero of its `days` feature)."""
    for name in roles.of("datetime"):
        dates = read_dates(train[name], roles.columns[name].date_format)
        earliest = dates.min()
        roles.origins[name] = (earliest if pd.notna(earliest) else pd.Timestamp("1970-01-01")).isoformat()


def derive(frame: pd.DataFrame, roles: ColumnRoles) -> pd.DataFrame:
    """The feature frame the encoding reads: dates expanded, number text parsed, yes/no canonical.

    Columns left out are not read; a date that does not parse becomes missing values.
    """
    out = {}
    for name, r in roles.columns.items():
        if r.role in LEFT_OUT:
            continue
        values = frame[name]
        if r.role == "datetime":
            dates = read_dates(values, r.date_format)
            origin = pd.Timestamp(roles.origins[name])
            parts = {
                "year": dates.dt.year,
                "month": dates.dt.month,
                "day of year": dates.dt.day_of_year,
                "day of week": dates.dt.day_of_week,
                "days": (dates - origin).dt.total_seconds() / 86400,
            }
            for part in DATE_PARTS:
                out[f"{name} {part}"] = parts[part].astype(float)
        elif r.role == "number":
            out[name] = parse_numbers(values, r.marks, r.unit)
        elif r.role == "boolean":
            out[name] = values.map(_truth)
        else:
            out[name] = values
    return pd.DataFrame(out, index=frame.index)


def _truth(v):
    if pd.isna(v):
        return np.nan
    if isinstance(v, bool | np.bool_):
        return "true" if v else "false"
    word = str(v).strip().lower()
    return "true" if word in TRUE_WORDS else "false" if word in FALSE_WORDS else str(v)
