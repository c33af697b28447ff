"""SUN Attribute as GAAL uses it: `open area` from the scene photo and the other 101 attributes.

Raw layout (RAW = the download folder; the .mat files may also sit in RAW/SUNAttributeDB):

    RAW/attributes.mat                  key `attributes`: 102 names
    RAW/images.mat                      key `images`: 14,340 paths such as a/abbey/sun_....jpg
    RAW/attributeLabels_continuous.mat  key `labels_cv`: 14340 x 102 vote fractions in [0, 1]
    RAW/images/<path>

GAAL does not document two choices; this recipe makes them explicit and adjustable:
- binarisation: an attribute is present when at least `threshold` of its annotators saw it
  (default 0.5, a majority of the three votes); the target is binarised the same way;
- split: no official one exists; stratified on the target, 20 % test, then 20 % of the rest
  val, seed 2022 (9,177 / 2,295 / 2,868 train / val / test images).
The 101 other attributes are the table, as 2-category columns; images are ImageNet-normalised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from gaal_cli.data.prepared import prepare_rows
from gaal_cli.data.problems import Problems
from gaal_cli.data.splits import stratified_split
from gaal_cli.foundation.errors import GaalError

VERSION = 1
TEST_FRACTION, VAL_FRACTION = 0.2, 0.2


def load_mat(raw: Path, name: str, key: str) -> np.ndarray:
    try:
        import scipy.io
    except ImportError:
        raise GaalError("reading SUN's .mat files needs scipy: pip install 'gaal[sun]'") from None
    for path in (raw / name, raw / "SUNAttributeDB" / name):
        if path.is_file():
            content = scipy.io.loadmat(path)
            if key not in content:
                raise GaalError(f"no variable '{key}' in the .mat file", source=str(path))
            return content[key]
    raise GaalError(f"no {name} (looked in the folder and in SUNAttributeDB)", source=str(raw), field="--raw")


def cell_strings(cell: np.ndarray) -> list[str]:
    """A MATLAB cell array of strings as a Python list."""
    return [str(np.asarray(item).ravel()[0]) if np.asarray(item).size else "" for item in cell.ravel()]


def prepare(
    raw: Path, out: Path, *, skip_bad: bool = False, target: str = "open area", threshold: float = 0.5, seed: int = 2022
) -> dict:
    """Prepare SUN Attribute from RAW into OUT (see the module docstring).

    Args:
        target: the attribute to predict.
        threshold: vote fraction at or above which an attribute counts as present.
        seed: the split seed.
    """
    names = cell_strings(load_mat(raw, "attributes.mat", "attributes"))
    images = cell_strings(load_mat(raw, "images.mat", "images"))
    votes = np.asarray(load_mat(raw, "attributeLabels_continuous.mat", "labels_cv"), dtype=float)
    if votes.shape != (len(images), len(names)):
        raise GaalError(
            f"labels_cv is {votes.shape[0]}x{votes.shape[1]} but there are {len(images)} images and "
            f"{len(names)} attributes",
            source=str(raw / "attributeLabels_continuous.mat"),
        )
    if target not in names:
        raise GaalError(f"no attribute '{target}'; expected one of: {', '.join(names)}", field="--target")
    if not 0 < threshold <= 1:
        raise GaalError("the threshold is a vote fraction in (0, 1]", field="--threshold")

    problems = Problems(
        str(raw / "attributeLabels_continuous.mat"), [f"image {i + 1} ({p})" for i, p in enumerate(images)], skip_bad
    )
    for j, name in enumerate(names):
        problems.add_many(np.isnan(votes[:, j]), "vote fraction is NaN", column=name)
    present = pd.DataFrame((np.nan_to_num(votes) >= threshold).astype(np.int64), columns=names)
    labels = present[target].to_numpy()
    features = [n for n in names if n != target]
    manifest = {
        "recipe": {
            "name": "sun",
            "version": VERSION,
            "params": {"target": target, "threshold": threshold, "seed": seed},
        },
        "target": target,
        "normalize": "imagenet",
        "split": f"stratified on '{target}', test {TEST_FRACTION}, val {VAL_FRACTION} of the rest, seed {seed}",
    }
    return prepare_rows(
        out,
        features=present[features],
        continuous=[],
        categorical=features,
        labels=labels,
        class_names=[f"not {target}", target],
        split=stratified_split(labels, TEST_FRACTION, VAL_FRACTION, seed),
        paths=[str(raw / "images" / p) for p in images],
        image_root=raw / "images",
        problems=problems,
        manifest=manifest,
        vocabulary=pd.DataFrame({c: [0, 1] for c in features}),
    )
