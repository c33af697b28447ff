"""Preparation recipes, by name: `gaal data prepare <name> --raw RAW --out PREP`.

Each recipe module has `prepare(raw, out, *, skip_bad, **options) -> manifest`, reads a raw
download in its published layout, and ends in the shared format of `gaal_cli.data.prepared`;
`gaal train --dataset <name> --data-dir PREP` then trains on it.
"""

from __future__ import annotations

import importlib
import inspect
import os
from pathlib import Path
from typing import Any

from gaal_cli.foundation.errors import GaalError, did_you_mean

TABLE_SUFFIXES = (".csv", ".parquet")  # `--dataset` names ending so are user tables (gaal_cli.data.user_table)
# a folder listed for a table's did-you-mean is read up to this many entries
LISTED_ENTRIES = 2000
# a PREP folder's record (gaal_cli.data.prepared), named here so that checking for it loads no torch
MANIFEST = "manifest.json"
RECIPES = {
    "dvm": "gaal_cli.data.dvm",
    "celeba": "gaal_cli.data.celeba",
    "sun": "gaal_cli.data.sun",
    "ham10000": "gaal_cli.data.ham10000",
    "mmcl": "gaal_cli.data.mmcl",
}
# where each recipe's raw data is published: named when a run finds no prepared data
PUBLISHED = {
    "dvm": "DVM-CAR, https://deepvisualmarketing.github.io/",
    "celeba": "CelebA, https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html",
    "sun": "SUN Attribute, https://cs.brown.edu/~gmpatter/sunattributes.html",
    "ham10000": "HAM10000, https://doi.org/10.7910/DVN/DBW86T",
    "mmcl": "the files written by MMCL's preprocessing, https://github.com/paulhager/MMCL-Tabular-Imaging",
}


def prepare(name: str, raw: Path, out: Path, skip_bad: bool, options: dict[str, Any]) -> dict:
    """Run recipe `name`; `options` not None must be parameters that recipe has.

    Raises:
        GaalError: unknown recipe, an option the recipe does not take, or bad raw data.
    """
    if name not in RECIPES:
        raise GaalError(
            f"unknown recipe '{name}'{did_you_mean(name, RECIPES)}; expected one of: {', '.join(RECIPES)}",
            source="gaal data prepare",
        )
    if not raw.is_dir():
        raise GaalError("no such folder", source=str(raw), field="--raw")
    run = importlib.import_module(RECIPES[name]).prepare
    accepted = inspect.signature(run).parameters
    given = {k: v for k, v in options.items() if v is not None}
    for key in given:
        if key not in accepted:
            option = f"--{key.replace('_', '-')}"
            raise GaalError(f"{option} does not apply to the {name} recipe", source="gaal data prepare")
    return run(raw, out, skip_bad=skip_bad, **given)


def require_table(path: Path, field: str = "data.name") -> None:
    """A table file is there; without pandas, so that a mistyped path is answered at once.

    Raises:
        GaalError: no such file, with the closest table file in its folder.
    """
    if not path.is_file():
        raise GaalError(
            f"no such table file{did_you_mean(path.name, tables_beside(path))}", source=str(path), field=field
        )


def tables_beside(path: Path) -> list[str]:
    """The table files in `path`'s folder (the first LISTED_ENTRIES entries), for a did-you-mean."""
    try:
        with os.scandir(path.parent if str(path.parent) else ".") as entries:
            names = [e.name for _, e in zip(range(LISTED_ENTRIES), entries)]
    except OSError:
        return []
    return [n for n in names if n.lower().endswith(TABLE_SUFFIXES)]


def require_prepared(name: str, folder: str | None) -> Path:
    """The PREP folder of recipe `name`, checked before anything is built.

    Raises:
        GaalError: no folder given, or one without a manifest; the message gives the prepare
            command and where the raw data is published, since a first run usually lands here.
    """
    command = f"gaal data prepare {name} --raw RAW --out {folder or 'PREP'}"
    how = f"prepare it with `{command}` from the raw data ({PUBLISHED[name]})"
    if not folder:
        raise GaalError(
            f"the {name} dataset trains on prepared data, given by --data-dir PREP; {how}", field="data.dir"
        )
    if not (Path(folder) / MANIFEST).is_file():
        raise GaalError(f"no prepared data (no {MANIFEST}); {how}", source=folder, field="data.dir")
    return Path(folder)
