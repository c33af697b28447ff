"""Whether a predictions file is the run's own, and whether two runs' files can be paired.

A predictions file sits in a run folder, but nothing stops one being copied from another run,
written by hand, or left from an older attempt. `gaal compare` and `gaal report` read a run's
file only through `read_run_predictions`, which checks it against the run before any number is
computed from it:

- what the file records of its run (`meta`: method, seed, dataset, `data.test_missing`, and for
  files written since this check existed the config's hash and the dataset's identity) is what
  the run's report.json and config.yaml say;
- it holds the test split, as many samples as the run tested (report.json `data.counts.test`);
- each head's accuracy, balanced accuracy and macro-F1 recomputed from the file's predictions is
  report.json's test metric, within rounding (a file from another run, or a crafted `predicted`
  array, scores other numbers);
- every head's logits are finite.

`check_pairable` refuses to pair two runs whose datasets differ (another table, another
synthetic generator setting, another split seed), even when their sample ids and labels agree.
A failure is a GaalError naming the file and the field: `gaal compare` exits 2 with it, and
`gaal report` falls back to the paired t test on the per-seed values, naming the file.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from gaal_cli.config import read_yaml_file
from gaal_cli.foundation.errors import GaalError
from gaal_cli.runs.folder import WHERE_KEYS, RunFolder, dataset_folder, to_json
from gaal_cli.runs.predictions_file import Predictions, read_predictions

#: report.json's test metrics a predictions file recomputes (AUROC needs the probabilities of
#: full-precision logits; the float16 copy can differ in the last digit)
RECOMPUTED = ("acc", "bal_acc", "f1")
#: how far a recomputed metric may lie from report.json's (both are means of the same predictions)
TOLERANCE = 1e-6
#: the data settings that decide which samples a run is tested on, and with which labels
IDENTITY_KEYS = ("name", "target", "split_column", "group_column", "rare_classes", "missing", "skip_bad")
REWRITE = "rewrite it from the run's checkpoint with: gaal eval {run} --write-predictions"


def config_hash(tree: dict[str, Any]) -> str:
    """sha256 of a resolved config, less where and how fast it ran (`WHERE_KEYS`) and where its
    table lies (`data.name`: `dataset_identity` keeps its file name): the same for the config.yaml
    training wrote and the config `gaal eval --write-predictions` rebuilds on another host."""
    kept = {key: value for key, value in _flat(tree).items() if key not in WHERE_KEYS | {"data.name"}}
    return hashlib.sha256(to_json(kept, sort_keys=True).encode()).hexdigest()


def dataset_identity(tree: dict[str, Any]) -> dict[str, Any]:
    """What makes a run's test samples and labels: the dataset (a table by its file name), how its
    rows are chosen and split, the split seed, and for the generated dataset every generator
    setting (`data.synthetic.*`)."""
    data = tree.get("data") if isinstance(tree.get("data"), dict) else {}
    identity = {f"data.{key}": data[key] for key in IDENTITY_KEYS if key in data}
    if isinstance(identity.get("data.name"), str):
        identity["data.name"] = dataset_folder(identity["data.name"])
    if data.get("name") == "synthetic" and isinstance(data.get("synthetic"), dict):
        identity |= {f"data.synthetic.{k}": v for k, v in data["synthetic"].items()}
    identity["seed"] = tree.get("seed")
    return identity


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out |= _flat(value, f"{prefix}{key}.")
    return out


def read_run_predictions(run: RunFolder) -> Predictions:
    """The predictions file of the finished run `run`, read (`read_predictions`) and checked against
    the run (see the module's docstring); `identity` is set to the run's dataset identity.

    Raises:
        GaalError: names the file, or the run's report.json or config.yaml, and the field that disagrees.
    """
    predictions = read_predictions(run.file(RunFolder.PREDICTIONS))
    report = run.read_report()
    tree = read_yaml_file(run.file(RunFolder.CONFIG))
    if not isinstance(tree, dict):
        raise GaalError("expected a mapping of settings", source=str(run.file(RunFolder.CONFIG)))
    check_recorded(predictions, run, report, tree)
    check_metrics(predictions, run, report)
    for head in predictions.heads:
        predictions.logits(head)  # refuses NaN or infinite logits, naming the head
    predictions.identity = dataset_identity(tree)
    return predictions


def _mismatch(predictions: Predictions, run: RunFolder, field: str, what: str) -> GaalError:
    return GaalError(
        f"is not this run's predictions file: {what} (copied from another run, or damaged); "
        + REWRITE.format(run=run.path),
        source=str(predictions.path),
        field=field,
    )


def check_recorded(predictions: Predictions, run: RunFolder, report: dict[str, Any], tree: dict[str, Any]) -> None:
    """What the file records of its run against the run's own report.json and config.yaml.

    Raises:
        GaalError: the first field that disagrees.
    """
    meta = predictions.meta
    data = tree.get("data") if isinstance(tree.get("data"), dict) else {}
    recorded = dict(meta)
    if isinstance(recorded.get("dataset"), str):  # a table moved since keeps its file name
        recorded["dataset"] = dataset_folder(recorded["dataset"])
    dataset = report.get("dataset")
    expected = {
        "method": report.get("method"),
        "seed": report.get("seed"),
        "dataset": dataset_folder(dataset) if isinstance(dataset, str) else dataset,
        "test_missing": data.get("test_missing", "none"),
        "config_sha256": config_hash(tree),
        "data": dataset_identity(tree),
    }
    for key, value in expected.items():
        if key in recorded and recorded[key] != value:
            got = json.dumps(recorded[key])[:120]
            what = f"it records {key} {got}, the run has {json.dumps(value)[:120]}"
            raise _mismatch(predictions, run, f"meta.{key}", what)
    if predictions.split != "test":
        raise _mismatch(predictions, run, "split", f"it holds the '{predictions.split}' split, not the test split")
    counts = report.get("data", {}).get("counts") if isinstance(report.get("data"), dict) else None
    tested = counts.get("test") if isinstance(counts, dict) else None
    if isinstance(tested, int) and tested != len(predictions.ids):
        what = f"it holds {len(predictions.ids)} samples, the run tested {tested}"
        raise _mismatch(predictions, run, "ids", what)


def check_metrics(predictions: Predictions, run: RunFolder, report: dict[str, Any]) -> None:
    """Each head's test metrics recomputed from the file against report.json's.

    Raises:
        GaalError: a head the run did not report, or a metric further than TOLERANCE from it.
    """
    tested = report.get("metrics", {}).get("test", {})
    for head in predictions.heads:
        reported = tested.get(head) if isinstance(tested, dict) else None
        if not isinstance(reported, dict):
            raise _mismatch(predictions, run, f"predicted.{head}", f"the run reported no test metrics of a {head} head")
        found = recomputed(predictions.predicted(head), predictions.labels, predictions.n_classes)
        for name, value in found.items():
            saved = reported.get(name)
            if isinstance(saved, int | float) and math.isfinite(saved) and abs(saved - value) > TOLERANCE:
                what = f"its {head} head scores test {name} {value:.4f}, the run's report.json says {saved:.4f}"
                raise _mismatch(predictions, run, f"predicted.{head}", what)


def recomputed(predicted: np.ndarray, labels: np.ndarray, n_classes: int) -> dict[str, float]:
    """Accuracy, balanced accuracy (classes present in the labels) and macro-F1 (classes in the
    labels or the predictions), as gaal_cli.methods.metrics computes them from logits."""
    support = np.bincount(labels, minlength=n_classes).astype(float)
    guessed = np.bincount(predicted, minlength=n_classes).astype(float)
    hits = np.bincount(labels[predicted == labels], minlength=n_classes).astype(float)
    present = support > 0
    either = (support + guessed) > 0
    f1 = 2 * hits / np.maximum(support + guessed, 1)
    return {
        "acc": float(np.mean(predicted == labels)),
        "bal_acc": float(np.mean(hits[present] / support[present])),
        "f1": float(np.mean(f1[either])),
    }


def check_pairable(a: Predictions, b: Predictions) -> None:
    """Two runs' files may be paired sample by sample only when their runs tested the same
    dataset the same way (`dataset_identity`); ids and labels are `align`'s to check.

    Raises:
        GaalError: names both files and the first setting that differs.
    """
    first, second = a.identity, b.identity
    if first is None or second is None:
        return
    for key in [k for k in first if k in second]:
        if first[key] != second[key]:
            raise GaalError(
                f"the runs were tested on different data ({key} is {first[key]!r} and {second[key]!r}); "
                "a paired comparison needs the same test samples of the same dataset",
                source=f"{Path(a.path)} and {Path(b.path)}",
                field=key,
            )


def note_unpaired(err: GaalError, unpaired: dict[str, None] | None) -> None:
    """`gaal report`'s word on files it could not pair: each reason once, in `unpaired` (the table's
    legend names them) and as a warning."""
    from gaal_cli.foundation.display import console, styled

    why = err.render()
    if unpaired is not None and why not in unpaired:
        unpaired[why] = None
        note = f" not paired by sample, compared by the paired t test on the per-seed values (ᵗ): {why}"
        console.print(styled("warning:", "yellow", note), highlight=False, soft_wrap=True)
