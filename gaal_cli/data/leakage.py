"""Leaks between a user table's splits, found before training: what would let a model be scored on
what it trained on, or read its label from a feature.

Three checks, each a count in a warning (gaal_cli.foundation.display prints it at `gaal data
inspect` and at the start of training; report.json keeps it under `data.leakage`):

- shared images: a val or test row whose image is one a row of an earlier split (train, then val)
  uses, by path or by identical bytes under another name (files of one size are hashed);
- a feature that gives the target away: one that equals it, or determines it (each of its values,
  holding `MIN_ROWS_PER_VALUE` rows or more on average, falls in one class for `PURITY` of the
  rows), and any feature whose header is the target's in another spelling (`"label "`, `Label`,
  a Cyrillic `lаbel`: `lookalike`);
- near-duplicate rows: a val or test row whose every cell but the target, the image and the split
  (text trimmed and case-folded, numbers to 6 significant digits; ids, dates and notes included,
  so two houses of one size and street are not taken for one) repeats an earlier split's row,
  counted only in a table of at least `MIN_ROW_COLUMNS` such columns whose rows are mostly distinct
  (`DISTINCT_ROWS`), where a repeat is no coincidence.

`data.leakage` says what to do: `warn` (default), `group` (gaal's split keeps rows that share an
image or repeat each other in one split, as `--group-column` does for a patient), or `drop`
(the val and test rows that repeat an earlier split's are dropped and counted). Pure numpy and
pandas: `gaal data inspect` runs them before torch loads.
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from gaal_cli.data.problems import category_text, is_missing
from gaal_cli.foundation.untrusted import open_regular

PURITY = 0.99
MIN_ROW_COLUMNS = 3
MIN_ROWS_PER_VALUE = 5
DISTINCT_ROWS = 0.95
ORDER = ("train", "val", "test")
# Latin letters' lookalikes in Cyrillic and Greek (a header spelt with one reads as the target)
CONFUSABLE = str.maketrans(
    "аеорсухіјѕԁһӏкмнвтАЕОРСУХІЈЅКМНВТαοκνρτυχιεΑΒΕΖΗΙΚΜΝΟΡΤΥΧ",
    "aeopcyxijsdhlkmhbtAEOPCYXIJSKMHBTaoknptyxieABEZHIKMNOPTYX",
)


def lookalike(name: str) -> str:
    """A header as it reads: Unicode-normalised (NFKC), Cyrillic and Greek lookalikes as Latin,
    blanks, `_` and `-` removed, case-folded (`" Label "`, `lаbel` and `label` read alike)."""
    text = unicodedata.normalize("NFKC", str(name)).translate(CONFUSABLE)
    return "".join(c for c in text if not c.isspace() and c not in "_-").casefold()


@dataclass
class Leakage:
    """What the checks found; empty when nothing."""

    # split -> (rows sharing an image with an earlier split, rows in that split)
    shared_images: dict[str, tuple[int, int]] = field(default_factory=dict)
    # of those, how many by identical bytes under another file name
    same_bytes: int = 0
    # feature column -> why it gives the target away
    target_copies: dict[str, str] = field(default_factory=dict)
    # split -> (rows repeating an earlier split's row in every feature, rows in that split)
    duplicate_rows: dict[str, tuple[int, int]] = field(default_factory=dict)
    # the rows (positions in the table) that repeat an earlier split's image or features
    repeats: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def __bool__(self) -> bool:
        return bool(self.shared_images or self.target_copies or self.duplicate_rows)

    def to_json(self) -> dict:
        return {
            "shared_images": {s: {"rows": n, "of": of} for s, (n, of) in self.shared_images.items()},
            "same_bytes": self.same_bytes,
            "target_copies": dict(self.target_copies),
            "duplicate_rows": {s: {"rows": n, "of": of} for s, (n, of) in self.duplicate_rows.items()},
        }


def image_keys(paths: list[str]) -> tuple[np.ndarray, set[int]]:
    """One key per row naming its image: the file's path, or its content's sha256 where another
    file of the same size exists (only those are read). Also the rows keyed by content whose
    content another path shares. Unreadable files keep their path (training names them)."""
    keys = np.array(paths, dtype=object)
    by_size: dict[int, set[str]] = {}
    for path in set(paths) - {""}:
        try:
            size = os.stat(path).st_size
        except OSError:
            continue
        by_size.setdefault(size, set()).add(path)
    digests: dict[str, str] = {}
    for group in by_size.values():
        if len(group) > 1:
            for path in group:
                digest = _sha256(path)
                if digest is not None:
                    digests[path] = digest
    paths_per_digest: dict[str, set[str]] = {}
    for path, digest in digests.items():
        paths_per_digest.setdefault(digest, set()).add(path)
    by_bytes = set()
    for row, path in enumerate(paths):
        digest = digests.get(path)
        if digest is not None and len(paths_per_digest[digest]) > 1:
            keys[row] = "sha256:" + digest
            by_bytes.add(row)
    return keys, by_bytes


def _sha256(path: str) -> str | None:
    try:
        with open_regular(path) as fh:
            h = hashlib.sha256()
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
            return h.hexdigest()
    except OSError:
        return None


def row_keys(frame: pd.DataFrame, columns: list[str]) -> np.ndarray | None:
    """Each row's values in `columns` as one key (text trimmed and case-folded, numbers to 6
    significant digits, a missing value as such); None when the table's rows are not mostly distinct
    (a repeat is then a coincidence) or there are fewer than MIN_ROW_COLUMNS columns."""
    if len(columns) < MIN_ROW_COLUMNS or len(frame) < 2:
        return None
    parts = []
    for column in columns:
        values = frame[column]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
            text = values.map(lambda v: f"{v:.6g}")
        else:
            text = values.map(lambda v: str(v).strip().casefold())
        parts.append(text.where(~is_missing(values), "\0missing").astype(str))
    keys = pd.Series(["\x1f".join(t) for t in zip(*parts)], dtype=object)
    return keys.to_numpy() if keys.nunique() >= DISTINCT_ROWS * len(keys) else None


def repeats_of_earlier(keys: np.ndarray, split: np.ndarray) -> np.ndarray:
    """Rows of val or test whose key a row of an earlier split (train before val before test) has."""
    found = np.zeros(len(keys), dtype=bool)
    seen: set = set()
    for name in ORDER:
        rows = split == name
        if name != "train":
            found |= rows & np.array([k in seen for k in keys], dtype=bool)
        seen |= set(keys[rows])
    return found


def target_copies(frame: pd.DataFrame, target: str, features: list[str]) -> dict[str, str]:
    """The features that give the target away, each with why (see the module's docstring)."""
    found = {}
    labels = category_text(frame[target]).to_numpy(dtype=object)
    wanted = lookalike(target)
    for column in features:
        values = frame[column]
        why = []
        if lookalike(column) == wanted:
            why.append(f"its header {column!r} reads as the target's {target!r}{_unusual_letters(column)}")
        share = _determines(values, labels)
        if share is not None:
            why.append(f"its value gives the class for {share:.1%} of the rows")
        if why:
            found[column] = "; ".join(why)
    return found


def _unusual_letters(name: str) -> str:
    """' (with CYRILLIC SMALL LETTER A)' for the letters of a header that are not ASCII: two headers
    that print alike are told apart by name."""
    names = sorted({unicodedata.name(c, hex(ord(c))) for c in name if ord(c) > 127})
    return f" (with {', '.join(names)})" if names else ""


def _determines(values: pd.Series, labels: np.ndarray) -> float | None:
    """The share of rows whose class is their value's majority class, when it is at least PURITY and
    values repeat (MIN_ROWS_PER_VALUE rows each on average); else None."""
    present = ~is_missing(values)
    if present.sum() < MIN_ROWS_PER_VALUE * 2:
        return None
    text = category_text(values[present]).to_numpy(dtype=object)
    frame = pd.DataFrame({"value": text, "label": labels[present]})
    if frame["value"].nunique() * MIN_ROWS_PER_VALUE > len(frame) or frame["value"].nunique() < 2:
        return None
    majority = frame.groupby(["value", "label"]).size().groupby(level=0).max().sum()
    share = float(majority) / len(frame)
    return share if share >= PURITY else None


def find_leakage(
    frame: pd.DataFrame, target: str, features: list[str], paths: list[str], split: np.ndarray, row_columns: list[str]
) -> Leakage:
    """Every check of the module on a table's labelled rows and their split.

    Args:
        features: the columns training reads.
        paths: each row's image as an absolute path ("" where it has none).
        row_columns: the columns two rows must share to be near-duplicates (all but target, image, split).
    """
    keys, by_bytes = image_keys(paths)
    shared = repeats_of_earlier(keys, split)
    shared &= np.array([bool(p) for p in paths], dtype=bool)
    found = Leakage(target_copies=target_copies(frame, target, features))
    for name in ORDER[1:]:
        rows = split == name
        if (shared & rows).any():
            found.shared_images[name] = (int((shared & rows).sum()), int(rows.sum()))
    found.same_bytes = int(sum(1 for r in np.flatnonzero(shared) if r in by_bytes))
    duplicates = np.zeros(len(frame), dtype=bool)
    features_key = row_keys(frame, row_columns)
    if features_key is not None:
        duplicates = repeats_of_earlier(features_key, split)
        for name in ORDER[1:]:
            rows = split == name
            if (duplicates & rows).any():
                found.duplicate_rows[name] = (int((duplicates & rows).sum()), int(rows.sum()))
    found.repeats = shared | duplicates
    return found


def leak_groups(
    frame: pd.DataFrame, row_columns: list[str], paths: list[str], groups: np.ndarray | None = None
) -> np.ndarray:
    """A group per row such that rows sharing an image, repeating each other's features (in a table
    of mostly distinct rows) or one value of `groups` (the group column) share a group:
    `data.leakage=group` splits by it."""
    keys, _ = image_keys(paths)
    features_key = row_keys(frame, row_columns)
    parent = list(range(len(frame)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for column in (keys, features_key, groups):
        if column is None:
            continue
        first: dict = {}
        for row, key in enumerate(column):
            if key == "":
                continue
            if key in first:
                parent[root(row)] = root(first[key])
            else:
                first[key] = row
    return np.array([root(i) for i in range(len(frame))], dtype=np.int64)


def absolute_paths(values: pd.Series, folder: Path) -> list[str]:
    """Each image cell as an absolute path from the table's folder ("" for an empty cell): only to
    compare rows here; gaal_cli.data.preprocessing.image_paths decides which paths are allowed."""
    root = os.path.abspath(folder)
    out = []
    for value in values:
        text = "" if pd.isna(value) else str(value).strip()
        out.append(os.path.normpath(os.path.join(root, text)) if text else "")
    return out


def warning_text(leak: Leakage, image_column: str) -> str:
    """The warning paragraph: each finding with its count, and what to do about it."""
    parts = []
    if leak.shared_images:
        counts = ", ".join(f"{n} of the {of} {s} rows" for s, (n, of) in leak.shared_images.items())
        how = f" ({leak.same_bytes} by identical bytes under another file name)" if leak.same_bytes else ""
        parts.append(
            f"{counts} share their image with a row of an earlier split{how}: the model is scored on images "
            f"it trained on. --set data.leakage=group keeps rows that share an image ({image_column!r}) in one "
            "split, --set data.leakage=drop drops the repeats from val and test"
        )
    for column, why in leak.target_copies.items():
        parts.append(
            f"feature {column!r} gives the target away ({why}): a model reads the label from it. "
            f"--set 'data.exclude=[{json.dumps(column, ensure_ascii=False)}]' leaves it out"
        )
    if leak.duplicate_rows:
        counts = ", ".join(f"{n} of the {of} {s} rows" for s, (n, of) in leak.duplicate_rows.items())
        parts.append(
            f"{counts} repeat an earlier split's row in every column (in a table of mostly distinct rows). "
            "--set data.leakage=group keeps repeats in one split, --set data.leakage=drop drops them from val "
            "and test"
        )
    return "possible leakage: " + "; ".join(parts)
