"""`gaal predict`: class probabilities for every row of a new table, from a finished run.

Everything comes from the run folder (or a checkpoint file alone): the config that builds the
model, the weights, and the fitted preprocessing that encodes new rows as training encoded its
own. So it works from any directory, in a fresh process, with the table anywhere. The output
CSV has one row per kept input row: its id first (a user table's `data.id_column`, else the id
column its roles inferred, else the row number from 0; a prepared table's `image` path), then
the predicted class name and one `prob_<class>` column per class (softmax of the chosen head's
logits). It is written to a temporary name and renamed; a bad row (without `--skip-bad`)
stops everything before it is written. It never replaces anything the command reads (the table,
its images, the checkpoint, the run's or a dependency's files) nor a file of gaal's image cache.
A text cell that a spreadsheet would run as a formula (one beginning with =, +, -, @, a tab or a
carriage return: OWASP's CSV-injection rule) is written with a leading apostrophe, as text.

A run on the embedded (synthetic) dataset has no table: `--data train|val|test` predicts that
split, regenerated from the run's config and seed exactly as training made it.

Accuracy is reported per split the table names (a `split` column, as a prepared table.csv
has), so the rows the run trained on are never mixed with held-out ones; a labelled table
without one gets a single accuracy, flagged as possibly including training rows.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gaal_cli.data.images import CACHE_FOLDER
from gaal_cli.data.prediction_rows import PredictionRows, embedded_rows, is_embedded, prediction_rows
from gaal_cli.data.problems import SPLITS
from gaal_cli.foundation.display import CountProgress, csv_quoting, csv_text
from gaal_cli.foundation.errors import GaalError
from gaal_cli.foundation.files import refuse_protected, write_file
from gaal_cli.runs.folder import RunFolder
from gaal_cli.training.evaluation import resolve_device
from gaal_cli.training.preflight import MODALITIES, check_choice
from gaal_cli.training.scores import Scores, score_rows
from gaal_cli.training.trained_run import TrainedRun

HEADS = ("multi", "image", "tabular")
PROB_PREFIX = "prob_"


@dataclass
class PredictSummary:
    """What a prediction did: rows read and written, bad rows dropped, cells imputed, accuracy if labelled."""

    out: Path
    rows_read: int
    rows_written: int
    skipped: dict[str, int] = field(default_factory=dict)
    imputed: dict[str, int] = field(default_factory=dict)
    unknown_categories: dict[str, int] = field(default_factory=dict)
    labelled: int = 0
    accuracy: float | None = None
    # split -> (labelled rows counted, accuracy); empty when the table names no split
    by_split: dict[str, tuple[int, float]] = field(default_factory=dict)
    head: str = "multi"
    head_reason: str = ""
    # every head's metrics and the head's class report on the labelled rows not trained on
    scores: Scores | None = None


def predict_table(
    run: Path,
    data: Path,
    out: Path,
    *,
    missing: str | None = None,
    head: str | None = None,
    skip_bad: bool = False,
    device: str = "auto",
) -> PredictSummary:
    """Predict every row of the table `data` with the run `run` and write the CSV `out`.

    Args:
        missing: 'tabular' predicts from the image alone (Table I's Image column), 'image' from
            the table alone; that modality's columns are not read.
        head: which of the method's predictions: multi (fused), image or tabular; by default the
            one with the best validation accuracy (the fused one with a modality missing).
        skip_bad: drop and count bad rows (the output then has no row for them).

    Raises:
        GaalError: a bad run, table, row or option; nothing is written then.
    """
    check_choice(missing, MODALITIES, "--missing", "no modality called")
    check_choice(head, HEADS, "--head", "unknown head")
    if out.exists() and data.exists() and out.resolve() == data.resolve():
        raise GaalError("is the data file itself; the predictions need another file", source=str(out), field="--out")
    if out.is_dir():
        raise GaalError("is a folder; expected the name of the CSV file to write", source=str(out), field="--out")
    refuse_cache(out)
    trained = TrainedRun.load(run)
    config, file = trained.config, trained.file
    # never over the table, the checkpoint, a dependency or any run's own files (refused before any work)
    protected = [data, file, *RunFolder(file.parent).own_files(), *RunFolder(out.parent).own_files()]
    protected += dependency_files(trained)
    refuse_protected(out, protected, "--out")
    where = resolve_device(device)
    with tempfile.TemporaryDirectory(prefix="gaal-predict-") as images:
        if is_embedded(config.data.name):
            rows = embedded_rows(config.data, config.seed, str(data))
        else:
            rows = prediction_rows(
                trained.preprocessing,
                data,
                split_column=config.data.split_column,
                skip_bad=skip_bad,
                missing=missing,
                cache_folder=Path(images),
                num_workers=config.data.num_workers,
                source=str(file),
                progress=CountProgress,
            )
        protected += rows.inputs  # the images it read: known once the table is
        method = trained.method(rows.field_lengths, len(rows.class_names)).to(where)
        logits = trained.predict(rows.split, method, where, missing=missing)
    if head is None and missing is not None:
        head, reason = "multi", f"the fused prediction, from what is left with the {missing} missing"
    else:
        head, reason = trained.choose_head(head, list(logits))
    if head not in logits:
        raise GaalError(
            f"the {config.method} method has no {head} prediction"
            + (f" with the {missing} missing" if missing else "")
            + f"; it has: {', '.join(logits) or 'none'}",
            source="--head",
        )
    probs = torch.softmax(logits[head].double(), dim=1).numpy()
    table = output_frame(rows, probs)
    quoting = csv_quoting([*table.columns, *table.iloc[:, 0], *table["prediction"]])
    text = table.to_csv(index=False, float_format="%.8g", quoting=quoting)
    write_file(out, text, protected=protected, field="--out")
    summary = summarise(rows, probs, out)
    summary.head, summary.head_reason = head, reason
    if rows.labels is not None and (rows.labels >= 0).any():
        summary.scores = labelled_scores(trained, data, rows, logits, head)
    return summary


def labelled_scores(
    trained: TrainedRun, data: Path, rows: PredictionRows, logits: dict[str, torch.Tensor], head: str
) -> Scores | None:
    """Every metric on the labelled rows the run did not train on (gaal_cli.training.scores); None when
    every labelled row was trained on (the per-split accuracy says so)."""
    if is_embedded(trained.config.data.name):
        return score_rows(logits, rows.labels, rows.class_names, head, "", f"the {data} split (regenerated)")
    try:
        return trained.score_rows_of(data, rows, logits, head)
    except GaalError:
        return None


def refuse_cache(out: Path) -> None:
    """Refuse an output inside gaal's image cache (training reads it back as pixels).

    Raises:
        GaalError: names --out.
    """
    if CACHE_FOLDER in out.parent.resolve().parts or CACHE_FOLDER in out.parent.parts:
        raise GaalError(
            f"is inside gaal's image cache ({CACHE_FOLDER}), which training reads back; "
            "write the predictions elsewhere",
            source=str(out),
            field="--out",
        )


def dependency_files(trained: TrainedRun) -> list[Path]:
    """The files of the runs `trained` was trained from (a teacher, a fixed model): read by nobody here,
    but another run's all the same."""
    files = []
    for dep in trained.dependencies().values():
        files += [dep.file, *RunFolder(dep.file.parent).own_files()]
    return files


def output_frame(rows: PredictionRows, probs: np.ndarray) -> pd.DataFrame:
    """One row per kept input row: id, predicted class name, a probability per class; every text
    cell and header that a spreadsheet would read as a formula is kept as text (display.csv_text)."""
    frame = pd.DataFrame(
        {
            csv_text(rows.id_name): [csv_text(i) for i in rows.ids],
            "prediction": [csv_text(rows.class_names[i]) for i in probs.argmax(1)],
        }
    )
    for j, name in enumerate(rows.class_names):
        frame[csv_text(f"{PROB_PREFIX}{name}")] = probs[:, j]
    return frame



def summarise(rows: PredictionRows, probs: np.ndarray, out: Path) -> PredictSummary:
    summary = PredictSummary(
        out=out,
        rows_read=rows.rows_read,
        rows_written=len(probs),
        skipped=rows.skipped,
        imputed=rows.notes["imputed"],
        unknown_categories=rows.notes["unknown_categories"],
    )
    if rows.labels is None:
        return summary
    labelled = rows.labels >= 0
    hits = probs.argmax(1) == rows.labels
    summary.labelled = int(labelled.sum())
    if summary.labelled:
        summary.accuracy = float(hits[labelled].mean())
    if rows.splits is not None:
        for name in SPLITS:
            counted = labelled & (rows.splits == name)
            if counted.any():
                summary.by_split[name] = (int(counted.sum()), float(hits[counted].mean()))
    return summary
