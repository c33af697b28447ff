"""Seeded splits of a table's rows, and the checks that each split can train or measure a run.

`stratified_split` keeps each class's share in every split; `grouped_split` also keeps every
group of rows (a patient, a lesion) in one split. Both are seeded, so a table splits the same
way for every run seed, as the paper's splits do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from gaal_cli.data.problems import SPLITS, Problems
from gaal_cli.foundation.errors import GaalError


def stratified_holdout(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of a stratified held-out part with ceil(fraction * n) rows.

    Each class contributes floor(fraction * n_c) rows; the remaining rows go to the classes with
    the largest remainders (ties broken at random), which gives the totals of scikit-learn's
    `train_test_split` (DVM: 88,207 / 17,642 / 70,565) though not the same rows.
    """
    n = len(labels)
    classes, counts = np.unique(labels, return_counts=True)
    quota = fraction * counts
    take = np.floor(quota).astype(int)
    short = math.ceil(fraction * n) - take.sum()
    if short > 0:
        order = np.lexsort((rng.random(len(classes)), -(quota - take)))
        take[order[:short]] += 1
    held = np.zeros(n, dtype=bool)
    for cls, k in zip(classes, take):
        rows = np.flatnonzero(labels == cls)
        held[rng.permutation(rows)[:k]] = True
    return held


def stratified_split(labels: np.ndarray, test_fraction: float, val_fraction: float, seed: int) -> np.ndarray:
    """Split names per row: `test_fraction` of all rows to test, then `val_fraction` of the rest to val."""
    rng = np.random.default_rng(seed)
    split = np.full(len(labels), "train", dtype=object)
    test = stratified_holdout(labels, test_fraction, rng)
    split[test] = "test"
    rest = np.flatnonzero(~test)
    val = stratified_holdout(labels[rest], val_fraction, rng)
    split[rest[val]] = "val"
    return split


def check_classes_in_splits(
    labels: np.ndarray,
    split: np.ndarray,
    class_names: Sequence[str],
    problems: Problems,
    column: str | None = None,
    exempt: Sequence[str] = (),
) -> None:
    """Record the rows of every class that is absent from one of the splits (but the `exempt` ones)."""
    for cls, name in enumerate(class_names):
        if name in exempt:
            continue
        rows = labels == cls
        absent = [s for s in SPLITS if not np.any(rows & (split == s))]
        if absent:
            problems.add_many(rows, f"class {name!r} has no row in the {'/'.join(absent)} split", column=column)


def grouped_holdout(labels: np.ndarray, groups: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of a held-out part made of whole groups, stratified as far as groups allow.

    Each group counts towards the class most of its rows have; per class, groups in a random
    order are held out up to the prefix whose row count is closest to `fraction` of that
    class's rows.
    """
    names, group_of_row = np.unique(groups, return_inverse=True)
    size = np.bincount(group_of_row, minlength=len(names))
    votes = np.zeros((len(names), labels.max() + 1 if len(labels) else 1), dtype=np.int64)
    np.add.at(votes, (group_of_row, labels), 1)
    majority = votes.argmax(1)
    held = np.zeros(len(names), dtype=bool)
    for cls in np.unique(majority):
        members = rng.permutation(np.flatnonzero(majority == cls))
        totals = np.concatenate([[0], np.cumsum(size[members])])
        take = int(np.argmin(np.abs(totals - fraction * totals[-1])))
        held[members[:take]] = True
    return held[group_of_row]


def grouped_split(
    labels: np.ndarray, groups: np.ndarray, test_fraction: float, val_fraction: float, seed: int
) -> np.ndarray:
    """Like `stratified_split`, but every group's rows land in one split (no patient in two)."""
    rng = np.random.default_rng(seed)
    split = np.full(len(labels), "train", dtype=object)
    test = grouped_holdout(labels, groups, test_fraction, rng)
    split[test] = "test"
    rest = np.flatnonzero(~test)
    val = grouped_holdout(labels[rest], groups[rest], val_fraction, rng)
    split[rest[val]] = "val"
    return split


def check_splits_filled(split: np.ndarray, source: str) -> None:
    """Refuse a split with no rows: nothing could be selected or measured on it.

    Raises:
        GaalError: names the empty split and the counts of all three.
    """
    for name in SPLITS:
        if not np.any(split == name):
            raise GaalError(f"the {name} split has no rows (counts: {_split_counts(split)})", source=source)


def check_trainable(labels: np.ndarray, split: np.ndarray, class_names: Sequence[str], source: str) -> None:
    """Refuse data a run cannot learn or be measured on: an empty split, or under two classes in train.

    Raises:
        GaalError: names the split and what it holds.
    """
    check_splits_filled(split, source)
    present = np.unique(labels[split == "train"])
    if len(present) < 2:
        held = ", ".join(repr(class_names[i]) for i in present)
        raise GaalError(
            f"the train split holds {len(present)} class ({held}); a classifier needs at least two", source=source
        )


def _split_counts(split: np.ndarray) -> str:
    return ", ".join(f"{s} {int(np.sum(split == s))}" for s in SPLITS)
