"""The prepared-data format every real dataset ends in, and the splits built from it.

A PREP folder holds `manifest.json` (recipe and version, counts per split, columns, field
lengths, class names, target, image root, fitted statistics, dropped rows) and `table.csv`
(one row per sample: `image` relative to the image root, `label`, `split`, then the encoded
table columns). Training reads it without refitting anything; images are cached in
`PREP/cache/`. CSV rather than Parquet because pandas needs pyarrow for Parquet, which is not
a dependency, and a 176k-row table reads in well under a second either way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gaal_cli.config import DataConfig
from gaal_cli.data.base import DataBundle, TabularSchema
from gaal_cli.data.images import ImageTableSplit, ImageTransform, Progress, check_files, ensure_cache
from gaal_cli.data.preprocessing import encode_split_table, find_missing, prepared_record
from gaal_cli.data.problems import SPLITS, Notes, Problems
from gaal_cli.data.recipes import MANIFEST
from gaal_cli.data.splits import check_classes_in_splits, check_splits_filled, check_trainable
from gaal_cli.foundation.errors import GaalError
from gaal_cli.foundation.files import own_folder, write_file

FORMAT = "gaal-prepared"
FORMAT_VERSION = 1
TABLE = "table.csv"


@dataclass
class Rows:
    """A table ready to train on: absolute image paths, encoded features, labels, split names.

    `origin` is each row's index in the table it came from (its cache row and its name in errors).
    `ids` names each row as `gaal predict` names it (a prepared table's image cell, a user table's
    id column); None: its row number in the table (`origin`). A run's predictions file keys its
    test samples by them.
    """

    paths: list[str]
    tabular: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    class_names: list[str]
    origin: np.ndarray
    ids: list[str] | None = None

    def take(self, keep: np.ndarray) -> Rows:
        paths = [p for p, k in zip(self.paths, keep) if k]
        ids = None if self.ids is None else [i for i, k in zip(self.ids, keep) if k]
        return Rows(
            paths, self.tabular[keep], self.labels[keep], self.split[keep], self.class_names, self.origin[keep], ids
        )

    def row_ids(self) -> list[str]:
        """Each row's id (see the class's docstring)."""
        return list(self.ids) if self.ids is not None else [str(int(o)) for o in self.origin]


def drop_bad(
    rows: Rows,
    problems: Problems,
    label_column: str | None,
    *,
    drop_rare: bool = False,
    train_only: Sequence[str] = (),
) -> tuple[Rows, dict[str, int]]:
    """Drop bad rows (or raise), then drop classes left without a row in a split (or raise).

    Args:
        drop_rare: drop such classes even without `problems.skip` (`data.rare_classes=drop`).
        train_only: classes kept in the train split only on purpose (`data.rare_classes=train`).

    Returns:
        The kept rows, relabelled 0..C-1 if classes went, and the dropped counts per reason.

    Raises:
        GaalError: a bad row without `skip`; a split that dropping empties (naming the reasons);
            a class too small for the split (naming it, its rows and its count per split);
            fewer than two classes in train.
    """
    keep = problems.raise_or_keep()
    check_not_emptied(rows.split, keep, problems)
    kept = rows.take(keep)
    check_splits_filled(kept.split, problems.source)
    rare = [c for c in rare_classes(kept.labels, kept.split, kept.class_names) if c not in train_only]
    if rare and not (problems.skip or drop_rare):
        raise rare_class_error(kept, rare, [problems.row_names[i] for i in kept.origin], problems.source, label_column)
    absent = Problems(problems.source, [problems.row_names[i] for i in kept.origin], True)
    check_classes_in_splits(kept.labels, kept.split, kept.class_names, absent, column=label_column, exempt=train_only)
    keep_rare = absent.raise_or_keep()
    check_not_emptied(kept.split, keep_rare, absent)
    kept = kept.take(keep_rare)
    present = np.unique(kept.labels)
    if len(present) < len(kept.class_names):
        relabel = np.full(len(kept.class_names), -1)
        relabel[present] = np.arange(len(present))
        names = [kept.class_names[i] for i in present]
        kept = Rows(kept.paths, kept.tabular, relabel[kept.labels], kept.split, names, kept.origin, kept.ids)
    check_trainable(kept.labels, kept.split, kept.class_names, problems.source)
    return kept, {**problems.counts(), **absent.counts()}


def rare_classes(labels: np.ndarray, split: np.ndarray, class_names: Sequence[str]) -> list[str]:
    """The classes that lack a row in one of the splits (too few rows for the split)."""
    out = []
    for cls, name in enumerate(class_names):
        rows = labels == cls
        if rows.any() and any(not np.any(rows & (split == s)) for s in SPLITS):
            out.append(name)
    return out


# a refusal names this many of the classes too small for the split, then counts the rest
LISTED_CLASSES = 10


def rare_class_error(
    rows: Rows, rare: list[str], row_names: Sequence[str], source: str, column: str | None
) -> GaalError:
    """The refusal of classes too small for the split: each named with its rows and its count per split."""
    parts = []
    for name in rare[:LISTED_CLASSES]:
        members = np.flatnonzero(rows.labels == rows.class_names.index(name))
        per_split = ", ".join(f"{s} {int(np.sum(rows.split[members] == s))}" for s in SPLITS)
        where = ", ".join(row_names[i] for i in members[:5]) + (", ..." if len(members) > 5 else "")
        parts.append(f"class {name!r} has {len(members)} row{'s' * (len(members) != 1)} ({per_split}; {where})")
    if len(rare) > LISTED_CLASSES:
        parts.append(f"and {len(rare) - LISTED_CLASSES} more of the {len(rows.class_names)} classes")
    return GaalError(
        f"too few rows for a row of each class in train, val and test: {'; '.join(parts)}. "
        "--skip-bad (or --set data.rare_classes=drop) drops such classes, --set data.rare_classes=train "
        "keeps them in the train split only (val and test then never measure them)",
        source=source,
        field=column,
    )


def check_not_emptied(split: np.ndarray, keep: np.ndarray, problems: Problems) -> None:
    """Refuse a drop that empties a split that had rows, naming the reasons that emptied it.

    Raises:
        GaalError: names the split, its row count and the reasons its rows were dropped for.
    """
    for name in SPLITS:
        rows = split == name
        if rows.any() and not (rows & keep).any():
            reasons = ", ".join(f"{k}: {v}" for k, v in problems.counts(rows).items())
            raise GaalError(
                f"dropping bad rows would leave the {name} split empty: all {int(rows.sum())} of its rows "
                f"are bad ({reasons})",
                source=problems.source,
            )


def write_prepared(out: Path, rows: Rows, image_root: Path, manifest: dict) -> dict:
    """Write table.csv and manifest.json into `out` (each atomically, never through a link:
    gaal_cli.foundation.files); returns the full manifest."""
    own_folder(out, "--out")
    root = os.path.abspath(image_root)
    frame = pd.DataFrame(rows.tabular, columns=manifest["columns"])
    frame.insert(0, "split", rows.split)
    frame.insert(0, "label", rows.labels)
    frame.insert(0, "image", [os.path.relpath(os.path.abspath(p), root) for p in rows.paths])
    counts = {s: int(np.sum(rows.split == s)) for s in SPLITS}
    full = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        **manifest,
        "image_root": root,
        "class_names": rows.class_names,
        "counts": counts,
        "table": TABLE,
    }
    write_file(out / TABLE, frame.to_csv(index=False, float_format="%.7g"))
    write_file(out / MANIFEST, json.dumps(full, indent=1))
    return full


def read_prepared(folder: Path, expected_recipe: str) -> tuple[dict, pd.DataFrame]:
    """The manifest and table of a PREP folder.

    Raises:
        GaalError: no manifest, another recipe's folder, an unknown format version.
    """
    manifest_file = folder / MANIFEST
    if not manifest_file.is_file():
        raise GaalError(
            f"no {MANIFEST}: prepare it first with `gaal data prepare {expected_recipe} --raw RAW --out {folder}`",
            source=str(folder),
            field="data.dir",
        )
    try:
        manifest = json.loads(manifest_file.read_text())
    except json.JSONDecodeError as err:
        raise GaalError(f"not valid JSON ({err})", source=str(manifest_file)) from None
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise GaalError(f"not a {FORMAT} v{FORMAT_VERSION} manifest", source=str(manifest_file))
    if manifest["recipe"]["name"] != expected_recipe:
        raise GaalError(
            f"prepared by the '{manifest['recipe']['name']}' recipe, not '{expected_recipe}'",
            source=str(manifest_file),
            field="data.name",
        )
    table = pd.read_csv(folder / manifest["table"], dtype={"image": str, "split": str})
    return manifest, table


def build_prepared(cfg: DataConfig, recipe: str, progress: Progress | None = None) -> DataBundle:
    """The DataBundle of a PREP folder (`data.dir`) made by `recipe`; `progress` shows the
    image-cache build (gaal_cli.data.images.Progress), default none."""
    if not cfg.dir:
        raise GaalError(f"the {recipe} dataset needs the prepared folder: --data-dir PREP", field="data.dir")
    folder = Path(cfg.dir)
    manifest, table = read_prepared(folder, recipe)
    root = Path(manifest["image_root"])
    if not root.is_dir():
        raise GaalError(
            "the image root recorded in the manifest does not exist (edit image_root if the images moved)",
            source=str(folder / MANIFEST),
            field="image_root",
        )
    rows = Rows(
        paths=[os.path.join(root, p) for p in table["image"]],
        tabular=table[manifest["columns"]].to_numpy(dtype=np.float32),
        labels=table["label"].to_numpy(dtype=np.int64),
        split=table["split"].to_numpy(dtype=object),
        class_names=list(manifest["class_names"]),
        origin=np.arange(len(table)),
        ids=[str(p) for p in table["image"]],
    )
    names = [f"line {i + 2}" for i in range(len(table))]
    problems = Problems(str(folder / TABLE), names, cfg.skip_bad)
    schema = TabularSchema(tuple(manifest["columns"]), tuple(manifest["field_lengths"]))
    info = {"recipe": manifest["recipe"], "prepared_dropped": manifest.get("dropped", {})}
    normalize = manifest["normalize"] if cfg.normalize == "auto" else cfg.normalize
    preprocessing = prepared_record(manifest, cfg.image_size, normalize)
    return bundle(
        rows, schema, cfg, folder / "cache", normalize, problems, info, preprocessing=preprocessing, progress=progress
    )


def bundle(
    rows: Rows,
    schema: TabularSchema,
    cfg: DataConfig,
    cache_folder: Path,
    normalize: str,
    problems: Problems,
    info: dict,
    label_column: str | None = None,
    notes: Notes | None = None,
    preprocessing: dict | None = None,
    dropped_before: dict[str, int] | None = None,
    *,
    files_checked: bool = False,
    drop_rare: bool = False,
    train_only: Sequence[str] = (),
    progress: Progress | None = None,
) -> DataBundle:
    """Check the images, build the cache, drop or report bad rows, and make the three splits.

    Cheap checks (missing files, problems already recorded) fail before the cache is built, so
    a bad table costs seconds, not a decoding pass; files that do not decode fail after it.
    What was dropped, imputed or mapped to `unknown` is counted in `info` (the caller shows it:
    gaal_cli.foundation.display.report_data_notes).

    Args:
        notes: what encoding filled in, per row (counted over the rows kept).
        preprocessing: the fitted preprocessing as plain data, carried by the run.
        dropped_before: rows the caller already dropped, counted per reason (rows without a label).
        files_checked: the caller already checked the image files (a user table's `check_table`).
        drop_rare: drop classes too small for the split (`data.rare_classes=drop`).
        train_only: classes kept in the train split only (`data.rare_classes=train`).
        progress: shows the image-cache build (gaal_cli.data.images.Progress); default none.
    """
    if not files_checked:
        check_files(rows.paths, problems, headers=not cfg.cache)  # the cache build decodes every file anyway
    problems.raise_or_keep()
    cache = None
    if cfg.cache:
        cache = ensure_cache(rows.paths, cfg.image_size, cache_folder, problems, cfg.num_workers, progress)
    kept, dropped = drop_bad(rows, problems, label_column, drop_rare=drop_rare, train_only=train_only)
    dropped = {**(dropped_before or {}), **dropped}
    splits = []
    ids = np.array(kept.row_ids(), dtype=object)
    for name in SPLITS:
        mask = kept.split == name
        transform = ImageTransform(cfg.image_size, augment=cfg.augment and name == "train", normalize=normalize)
        splits.append(
            ImageTableSplit(
                [p for p, m in zip(kept.paths, mask) if m],
                torch.from_numpy(kept.tabular[mask]),
                torch.from_numpy(kept.labels[mask]),
                transform,
                cache=cache,
                cache_rows=kept.origin[mask],
                ids=list(ids[mask]),
            )
        )
    info = {
        **info,
        "class_names": kept.class_names,
        "counts": {s: len(sp) for s, sp in zip(SPLITS, splits)},
        "dropped": dropped,
        "image_cache": str(cache) if cache else None,
    }
    if notes is not None:
        info.update(_note_counts(notes, rows, kept))
    if preprocessing is not None:  # --skip-bad may have dropped a whole class
        preprocessing = {**preprocessing, "class_names": list(kept.class_names)}
    return DataBundle(*splits, schema=schema, class_names=kept.class_names, info=info, preprocessing=preprocessing)


def _note_counts(notes: Notes, rows: Rows, kept: Rows) -> dict:
    """Imputed cells over the kept rows; unknown categories per split (train has none by construction)."""
    position = {int(o): i for i, o in enumerate(rows.origin)}
    origin = np.array([position[int(o)] for o in kept.origin], dtype=np.int64)
    mask = np.zeros(len(rows.origin), dtype=bool)
    mask[origin] = True
    unknown = {}
    for name in SPLITS:
        in_split = np.zeros(len(rows.origin), dtype=bool)
        in_split[origin[kept.split == name]] = True
        unknown[name] = notes.counts(in_split)["unknown_categories"]
    return {"imputed": notes.counts(mask)["imputed"], "unknown_categories": unknown}


def prepare_rows(
    out: Path,
    *,
    features: pd.DataFrame,
    continuous: Sequence[str],
    categorical: Sequence[str],
    labels: np.ndarray,
    class_names: list[str],
    split: np.ndarray,
    paths: list[str],
    image_root: Path,
    problems: Problems,
    manifest: dict,
    vocabulary: pd.DataFrame | None = None,
    impute: bool = False,
) -> dict:
    """The shared end of every recipe: check, encode (fitted on train), drop or report bad rows, write.

    Nothing is written when a bad row stops the preparation.

    Args:
        impute: fill missing feature values from training statistics and give unseen categories
            an `unknown` code (see `fit_encoding`) instead of treating them as bad rows.

    Returns:
        The manifest written to `out`.
    """
    if not impute:
        find_missing(features, list(continuous) + list(categorical), problems)
    notes = Notes()
    tabular, enc = encode_split_table(
        features, continuous, categorical, split, problems, vocabulary, impute=impute, notes=notes
    )
    check_files(paths, problems)
    rows = Rows(paths, tabular, labels, split, class_names, np.arange(len(paths)))
    kept, dropped = drop_bad(rows, problems, manifest.get("target"))
    manifest = {
        **manifest,
        "columns": list(enc.names),
        "field_lengths": list(enc.field_lengths),
        "encoding": enc.to_json(),
        "dropped": {**manifest.get("dropped", {}), **dropped},
        **({"imputed": notes.counts()["imputed"]} if impute else {}),
    }
    return write_prepared(out, kept, image_root, manifest)
