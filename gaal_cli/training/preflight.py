"""What a command is about to read, checked before torch, timm or a method loads.

`gaal train` (and its `--dry-run`), `gaal eval` and `gaal predict` call these right after the
config is checked, so that a missing table, a misspelt column, a continuous target, a dataset
without its prepared folder, a missing teacher run or weights file, an unknown head or split is
answered as fast as a config typo (tests/test_architecture.py runs each in a fresh interpreter and
checks that torch was not imported). Only the config, the data package's torch-free modules and
the standard library are imported here; the deeper checks (images, classes per split) are the
data build's, which a dry run runs too.
"""

from __future__ import annotations

from pathlib import Path

from gaal_cli.config import Config, parse_override
from gaal_cli.data.recipes import RECIPES, TABLE_SUFFIXES, require_prepared, require_table
from gaal_cli.foundation.errors import GaalError, did_you_mean

EMBEDDED = ("synthetic",)
HEADS = ("multi", "image", "tabular")
SPLITS = ("train", "val", "test")
MODALITIES = ("tabular", "image")
CHECKPOINT = "checkpoint.pt"  # gaal_cli.runs.folder.RunFolder.CHECKPOINT, named here without torch


def check_run_inputs(config: Config, *, dependencies: bool = True) -> None:
    """The inputs a training run reads, on disk: its dataset (a table's named columns and target,
    or a recipe's prepared folder), its dependencies (a teacher, a fixed model, `model.init_from`;
    not with `dependencies=False`: a sweep trains them first) and its weights file.

    Raises:
        GaalError: the first input missing or wrong, naming the config key.
    """
    data = config.data
    if data.name.lower().endswith(TABLE_SUFFIXES):
        require_table(Path(data.name))
        from gaal_cli.data.table_file import check_table_columns  # pandas: only for a table that is there

        check_table_columns(data)
    elif data.name in RECIPES:
        require_prepared(data.name, data.dir)
    elif data.name not in EMBEDDED:
        known = [*EMBEDDED, *RECIPES]
        raise GaalError(
            f"unknown dataset '{data.name}'{did_you_mean(data.name, known)}; expected one of: "
            f"{', '.join(sorted(known))}, or a .csv/.parquet table",
            field="data.name",
        )
    for key, path in config.dependencies().items() if dependencies else ():
        if "{" not in path and not (Path(path).is_file() or (Path(path) / CHECKPOINT).is_file()):
            raise GaalError(f"no run folder with a {CHECKPOINT} nor checkpoint file at {path}", source=path, field=key)
    if config.model.weights and not Path(config.model.weights).is_file():
        raise GaalError("no such weights file", source=config.model.weights, field="model.weights")


def config_key_named(option: str) -> str | None:
    """The dotted config key a command-line option spells (`--lr` -> train.lr, `--batch-size` ->
    data.batch_size), for the hint of an unknown option; None when it spells none."""
    leaf = option.lstrip("-").replace("-", "_")
    if leaf in Config.model_fields and leaf not in ("data", "model", "train", "methods"):
        return leaf
    for section in ("train", "data", "model"):
        if leaf in Config.model_fields[section].annotation.model_fields:
            return f"{section}.{leaf}"
    return None


def unused_settings(config: Config, overrides: list[str]) -> list[str]:
    """The `--set methods.NAME.x=...` of a method other than the one trained: they change nothing."""
    found = []
    for text in overrides:
        keys, _ = parse_override(text)
        if len(keys) > 1 and keys[0] == "methods" and keys[1] != config.method:
            found.append(
                f"--set {text} sets {keys[1]}'s settings, but the method trained is {config.method}: it changes "
                "nothing (a dependency's settings come from its own run)"
            )
    return found


def check_choice(value: str | None, choices: tuple[str, ...], option: str, what: str) -> None:
    """A command-line choice (a split, a head, a missing modality) among `choices`.

    Raises:
        GaalError: names the option, the closest choice and all of them.
    """
    if value is not None and value not in choices:
        raise GaalError(
            f"{what} '{value}'{did_you_mean(value, choices)}; expected {', '.join(choices[:-1])} or {choices[-1]}",
            source=option,
        )


def check_run_path(run: Path) -> None:
    """A run folder or checkpoint file given to eval or predict exists (read later, as untrusted).

    Raises:
        GaalError: nothing there.
    """
    if not run.exists():
        raise GaalError("no checkpoint found (expected a run folder or a checkpoint.pt file)", source=str(run))


def check_data_file(data: Path, option: str = "--data") -> None:
    """A table named by --data exists (the split names of an embedded run's --data are let through).

    Raises:
        GaalError: no such file.
    """
    if str(data) in SPLITS:
        return
    require_table(data, field=option)
