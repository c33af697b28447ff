"""Datasets: the embedded set, the real recipes, a user's table with its preprocessing, images;
`build_data(cfg, seed)` dispatches on `cfg.name`. Imports the config and the foundation only.

Importing the package loads no torch: the names from gaal_cli.data.base (`Batch`, `DataBundle`,
`make_loader`, ...) are loaded when first asked for, so that the table checks the CLI runs before
training (gaal_cli.data.table_file) answer a mistake without it.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gaal_cli.config import DataConfig
from gaal_cli.data.recipes import RECIPES, TABLE_SUFFIXES, require_prepared
from gaal_cli.foundation.errors import GaalError, did_you_mean

if TYPE_CHECKING:
    from gaal_cli.data.base import DataBundle
    from gaal_cli.data.images import Progress

# (config, seed, progress of the image-cache build) -> the dataset
DatasetBuilder = Callable[[DataConfig, int, "Progress | None"], "DataBundle"]
DATASETS: dict[str, DatasetBuilder] = {}
_FROM_BASE = ("Batch", "DataBundle", "TabularSchema", "TensorSplit", "images_on_device", "make_loader")


def __getattr__(name: str) -> Any:
    if name in _FROM_BASE:
        return getattr(importlib.import_module("gaal_cli.data.base"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register_dataset(name: str) -> Callable[[DatasetBuilder], DatasetBuilder]:
    def wrap(builder: DatasetBuilder) -> DatasetBuilder:
        DATASETS[name] = builder
        return builder

    return wrap


def build_data(
    cfg: DataConfig, seed: int, preprocessing: dict | None = None, *, progress: Progress | None = None
) -> DataBundle:
    """Build the dataset named by `cfg.name`.

    What loading dropped, imputed or coded `unknown` is in the bundle's `info`; showing it is
    the caller's (gaal_cli.foundation.display.report_data_notes), as is any progress bar.

    Args:
        preprocessing: a run's saved preprocessing record: a user table is encoded with it
            instead of refitting (prepared datasets carry theirs in the PREP folder).
        progress: shows the image-cache build (gaal_cli.data.images.Progress); default none.

    Raises:
        GaalError: unknown dataset name (the message lists the known ones).
    """
    _load_builtin()
    if cfg.name.lower().endswith(TABLE_SUFFIXES):
        from gaal_cli.data.preprocessing import TableState
        from gaal_cli.data.user_table import build_table

        state = None if preprocessing is None else TableState.from_json(preprocessing, "the checkpoint's preprocessing")
        return build_table(cfg, seed, state, progress)
    if cfg.name not in DATASETS:
        raise GaalError(
            f"unknown dataset '{cfg.name}'{did_you_mean(cfg.name, DATASETS)}; expected one of: "
            f"{', '.join(sorted(DATASETS))}, or a .csv/.parquet table",
            field="data.name",
        )
    return DATASETS[cfg.name](cfg, seed, progress)


def _load_builtin() -> None:
    if "synthetic" not in DATASETS:
        from gaal_cli.data import synthetic

        register_dataset("synthetic")(lambda cfg, seed, progress: synthetic.build(cfg, seed))
        for recipe in RECIPES:
            register_dataset(recipe)(functools.partial(_prepared, recipe=recipe))


def _prepared(cfg: DataConfig, seed: int, progress: Progress | None, recipe: str) -> DataBundle:
    """A dataset made by `gaal data prepare <recipe>`: its splits are fixed in the PREP folder."""
    from gaal_cli.data.prepared import build_prepared

    require_prepared(recipe, cfg.dir)
    return build_prepared(cfg, recipe, progress)


__all__ = [
    "Batch",
    "DataBundle",
    "TabularSchema",
    "TensorSplit",
    "make_loader",
    "images_on_device",
    "build_data",
    "register_dataset",
    "DATASETS",
]
