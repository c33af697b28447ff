"""CelebA as GAAL uses it: one attribute (default `Attractive`) from the face and the other 39.

Raw layout (RAW = the download folder; the two text files may also sit in RAW/Anno and RAW/Eval):

    RAW/img_align_celeba/000001.jpg ...
    RAW/list_attr_celeba.txt      line 1: count; line 2: 40 names; then "000001.jpg -1  1 ..."
    RAW/list_eval_partition.txt   "000001.jpg 0" with 0/1/2 = train/valid/test

The official partition is the split. Attributes (+1 / -1) become 0/1; the 39 non-target ones
are the table, as 2-category columns. Images are ImageNet-normalised (GAAL), at the training
resolution (GAAL trains at 225).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from gaal_cli.data.prepared import prepare_rows
from gaal_cli.data.problems import Problems
from gaal_cli.foundation.errors import GaalError

VERSION = 1
PARTITIONS = {0: "train", 1: "val", 2: "test"}


def find(raw: Path, name: str, subfolders: tuple[str, ...]) -> Path:
    for folder in ("", *subfolders):
        path = raw / folder / name
        if path.is_file():
            return path
    raise GaalError(f"no {name} (looked in the folder and in {', '.join(subfolders)})", source=str(raw), field="--raw")


def read_attributes(path: Path, skip_bad: bool) -> tuple[pd.DataFrame, Problems]:
    """The attribute table (image + 40 columns of ±1); bad values are recorded per line."""
    with open(path) as fh:
        declared = fh.readline().strip()
        names = fh.readline().split()
    frame = pd.read_csv(path, sep=r"\s+", skiprows=2, header=None, names=["image", *names], dtype=str)
    if not declared.isdigit() or int(declared) != len(frame):
        raise GaalError(f"line 1 declares {declared!r} images but the file lists {len(frame)}", source=str(path))
    problems = Problems(str(path), [f"line {i + 3}" for i in range(len(frame))], skip_bad)
    for name in names:
        bad = ~frame[name].isin(["1", "-1"])
        problems.add_many(bad.to_numpy(), f"attribute value {name} is not 1 or -1", column=name)
    return frame, problems


def prepare(raw: Path, out: Path, *, skip_bad: bool = False, target: str = "Attractive") -> dict:
    """Prepare CelebA from RAW into OUT with `target` as the class (see the module docstring)."""
    attr_file = find(raw, "list_attr_celeba.txt", ("Anno",))
    part_file = find(raw, "list_eval_partition.txt", ("Eval",))
    frame, problems = read_attributes(attr_file, skip_bad)
    attributes = [c for c in frame.columns if c != "image"]
    if target not in attributes:
        raise GaalError(f"no attribute '{target}'; expected one of: {', '.join(attributes)}", field="--target")
    partition = pd.read_csv(part_file, sep=r"\s+", header=None, names=["image", "part"], dtype=str)
    part = frame["image"].map(dict(zip(partition["image"], partition["part"])))
    split = part.map({str(k): v for k, v in PARTITIONS.items()})
    for row in np.flatnonzero(split.isna().to_numpy()):
        reason = f"image {frame['image'].iloc[row]} has no partition 0/1/2 in {part_file.name}"
        problems.add(row, reason, kind=f"no partition 0/1/2 in {part_file.name}")

    binary = (frame[attributes] == "1").astype(np.int64)
    features = [c for c in attributes if c != target]
    manifest = {
        "recipe": {"name": "celeba", "version": VERSION, "params": {"target": target}},
        "target": target,
        "normalize": "imagenet",
        "split": "official partition (list_eval_partition.txt)",
    }
    return prepare_rows(
        out,
        features=binary[features],
        continuous=[],
        categorical=features,
        labels=binary[target].to_numpy(),
        class_names=[f"not {target}", target],
        split=split.fillna("train").to_numpy(dtype=object),
        paths=[str(raw / "img_align_celeba" / name) for name in frame["image"]],
        image_root=raw / "img_align_celeba",
        problems=problems,
        manifest=manifest,
        vocabulary=pd.DataFrame({c: [0, 1] for c in features}),
    )
