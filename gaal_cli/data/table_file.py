"""Reading a user's table and checking what a run names in it, before anything heavy loads.

`read_table` is the one reading of a .csv or .parquet table (training, inspect, eval, predict);
`check_table_columns` is what every command checks first on a table it is about to train on or
inspect: the file reads, the named columns (target, image, group, id) are there (with the closest
name when one is not), and the target holds classes rather than measurements
(gaal_cli.data.target). Only pandas and numpy: `gaal train --dataset missing.csv` and a misspelt
`--target` are answered before torch and timm load.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from gaal_cli.config import DataConfig
from gaal_cli.data.recipes import require_table
from gaal_cli.data.target import TargetBins, continuous_reason, continuous_target_error
from gaal_cli.foundation.errors import GaalError, did_you_mean
from gaal_cli.foundation.untrusted import check_table_file, open_regular


def read_table(path: Path) -> pd.DataFrame:
    """The table at `path` (CSV, or Parquet when pyarrow or fastparquet is installed).

    Raises:
        GaalError: no such file, unreadable, empty, header only, or two columns of one name.
    """
    require_table(path)
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
        if name and not name.strip():  # pandas names an empty header cell (an index column) itself
            raise GaalError(
                f"column {position} is named by blanks only ({name!r}); name it (a blank name cannot be "
                "told apart from another, nor named in data.exclude, data.categorical, ...)",
                source=str(path),
                field=f"column {position}",
            )
        if name in seen:
            raise GaalError(
                f"column {seen[name]} and column {position} are both named {name!r}; rename one "
                "(a duplicated target would otherwise become a feature that leaks the label)",
                source=str(path),
                field=name,
            )
        seen[name] = position


def file_sha256(path: Path) -> str:
    """sha256 of a table's bytes: what a run records of the table it trained on (`data.table_sha256`),
    so that a table under another name is known for the same one, and an edited one for another."""
    digest = hashlib.sha256()
    with open_regular(path) as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_table_columns(cfg: DataConfig) -> pd.DataFrame:
    """Read the table `data.name` and check what the config names in it; returns the table.

    Raises:
        GaalError: see `read_table`; no target or image column set, a named column absent (with
            the closest name), a target that looks continuous without `data.target_bins`, or bins
            of a target that holds text.
    """
    path = Path(cfg.name)
    frame = read_table(path)
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
                f"no such column {column!r}{did_you_mean(column, [str(c) for c in frame.columns])}; the table has: "
                f"{', '.join(map(str, frame.columns))}",
                source=str(path),
                field=key,
            )
    target_bins(frame[cfg.target], cfg)
    return frame


def target_bins(values: pd.Series, cfg: DataConfig) -> TargetBins | None:
    """The quantile bins `data.target_bins` asks for (None: the target's values are its classes).

    Raises:
        GaalError: a target that looks continuous while `data.target_bins` is unset.
    """
    if cfg.target_bins is None:
        reason = continuous_reason(values)
        if reason is not None:
            raise continuous_target_error(str(cfg.target), reason, cfg.name)
        return None
    if cfg.target_bins == 0:
        return None
    return TargetBins.fit(values, cfg.target_bins, cfg.name, str(cfg.target))
