"""Dataset registry: `build_data(cfg, seed)` dispatches on `cfg.name`."""

from __future__ import annotations

import functools
from collections.abc import Callable

from gaal_cli.config import DataConfig
from gaal_cli.data.base import Batch, DataBundle, TabularSchema, TensorSplit, images_on_device, make_loader
from gaal_cli.data.recipes import RECIPES, TABLE_SUFFIXES, require_prepared
from gaal_cli.errors import GaalError, did_you_mean

DatasetBuilder = Callable[[DataConfig, int], DataBundle]
DATASETS: dict[str, DatasetBuilder] = {}


def register_dataset(name: str) -> Callable[[DatasetBuilder], DatasetBuilder]:
    def wrap(builder: DatasetBuilder) -> DatasetBuilder:
        DATASETS[name] = builder
        return builder

    return wrap


def build_data(cfg: DataConfig, seed: int, preprocessing: dict | None = None) -> DataBundle:
    """Build the dataset named by `cfg.name`.

    Args:
        preprocessing: a run's saved preprocessing record: a user table is encoded with it
            instead of refitting (prepared datasets carry theirs in the PREP folder).

    Raises:
        GaalError: unknown dataset name (the message lists the known ones).
    """
    _load_builtin()
    if cfg.name.lower().endswith(TABLE_SUFFIXES):
        from gaal_cli.data.user_table import TableState, build_table

        state = None if preprocessing is None else TableState.from_json(preprocessing, "the checkpoint's preprocessing")
        return build_table(cfg, seed, state)
    if cfg.name not in DATASETS:
        raise GaalError(
            f"unknown dataset '{cfg.name}'{did_you_mean(cfg.name, DATASETS)}; expected one of: "
            f"{', '.join(sorted(DATASETS))}, or a .csv/.parquet table",
            field="data.name",
        )
    return DATASETS[cfg.name](cfg, seed)


def _load_builtin() -> None:
    if "synthetic" not in DATASETS:
        from gaal_cli.data import synthetic

        register_dataset("synthetic")(synthetic.build)
        for recipe in RECIPES:
            register_dataset(recipe)(functools.partial(_prepared, recipe=recipe))


def _prepared(cfg: DataConfig, seed: int, recipe: str) -> DataBundle:
    """A dataset made by `gaal data prepare <recipe>`: its splits are fixed in the PREP folder."""
    from gaal_cli.data.prepared import build_prepared

    require_prepared(recipe, cfg.dir)
    return build_prepared(cfg, recipe)


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
