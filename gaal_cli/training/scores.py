"""What `gaal eval` and `gaal predict` report on labelled rows: every metric of report.json per
head, and for one head a table per class and the confusion matrix; which head that is (the best on
validation unless told); and whether the rows are ones the run trained on.

A run's heads are scored on validation when it trains (report.json's `metrics.val`, and each
epoch's in the checkpoint as `val_heads`); `best_head` picks the one with the highest validation
accuracy, the fused head on a tie, so that a fused head worse than one of its own heads (a weak
modality dragging it down) is not used by default without a word.

Whether labelled rows of a table were trained on is known when the run's own table is at hand:
its split is recomputed as training made it (gaal_cli.data.user_table.load_table) and the rows
are matched by image file. `training_overlap` answers None when it cannot tell (the run's table
moved or changed, or the run is on a prepared dataset and the table names no split).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gaal_cli.foundation.errors import GaalError
from gaal_cli.runs.folder import RunFolder
from gaal_cli.training.evaluation import score_heads

HEADS = ("multi", "image", "tabular")


@dataclass
class Scores:
    """Each head's metrics on some labelled rows, and one head's per-class table and confusion matrix."""

    metrics: dict[str, dict[str, float]]
    head: str
    head_reason: str
    class_names: list[str]
    per_class: list[dict[str, Any]]
    confusion: list[list[int]]
    rows: int
    where: str
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "where": self.where,
            "metrics": self.metrics,
            "head": self.head,
            "head_reason": self.head_reason,
            "per_class": self.per_class,
            "confusion": {"classes": self.class_names, "rows_true_columns_predicted": self.confusion},
            "notes": self.notes,
        }


def class_report(pred: np.ndarray, labels: np.ndarray, class_names: list[str]) -> tuple[list[dict], list[list[int]]]:
    """Per class: its rows, the rows predicted as it, recall, precision and F1 (None where undefined);
    and the confusion matrix (rows: true class, columns: predicted class)."""
    n = len(class_names)
    confusion = np.bincount(labels * n + pred, minlength=n * n).reshape(n, n)
    table = []
    for i, name in enumerate(class_names):
        support, predicted, hits = int(confusion[i].sum()), int(confusion[:, i].sum()), int(confusion[i, i])
        table.append(
            {
                "class": name,
                "rows": support,
                "predicted": predicted,
                "recall": hits / support if support else None,
                "precision": hits / predicted if predicted else None,
                "f1": 2 * hits / (support + predicted) if support + predicted else None,
            }
        )
    return table, confusion.tolist()


def score_rows(
    logits: dict[str, torch.Tensor],
    labels: np.ndarray,
    class_names: list[str],
    head: str,
    head_reason: str,
    where: str,
) -> Scores:
    """Every head's metrics on the rows with a label (label >= 0), and `head`'s class report.

    Raises:
        GaalError: no labelled row, or `head` is not one of the heads scored.
    """
    labelled = labels >= 0
    if not labelled.any():
        raise GaalError(f"{where}: no row has a label of the run's classes; nothing to score")
    if head not in logits:
        raise GaalError(f"the run has no {head} prediction here; it has: {', '.join(logits)}", source="--head")
    mask = torch.from_numpy(labelled)
    kept = {h: out[mask] for h, out in logits.items()}
    y = torch.from_numpy(labels[labelled])
    per_class, confusion = class_report(kept[head].argmax(1).numpy(), y.numpy(), class_names)
    rows = int(labelled.sum())
    return Scores(score_heads(kept, y), head, head_reason, class_names, per_class, confusion, rows, where)


def best_head(val: dict[str, float] | None, available: list[str]) -> tuple[str, str]:
    """The head to use by default and why: the highest validation accuracy among `available` (the
    fused head on a tie, and when the run recorded no validation scores)."""
    scores = {h: v for h, v in (val or {}).items() if h in available}
    if not scores:
        return ("multi" if "multi" in available else available[0]), "the run recorded no validation score per head"
    order = [h for h in HEADS if h in scores]
    head = max(order, key=lambda h: (scores[h], -order.index(h)))
    others = ", ".join(f"{h} {scores[h]:.4f}" for h in order if h != head)
    return head, f"the best on validation, {scores[head]:.4f}" + (f", against {others}" if others else "")


def val_head_scores(state: dict[str, Any], run_folder: Path) -> dict[str, float] | None:
    """Each head's validation accuracy at the best epoch: the checkpoint's `val_heads`, else the
    run folder's report.json (`metrics.val`), else None (checked: numbers only)."""
    recorded = state.get("val_heads")
    if not isinstance(recorded, dict):
        folder = RunFolder(run_folder)
        try:
            val = folder.read_report().get("metrics", {}).get("val") if folder.done else None
        except (GaalError, AttributeError):
            val = None
        recorded = {h: m.get("acc") for h, m in val.items() if isinstance(m, dict)} if isinstance(val, dict) else None
    if not isinstance(recorded, dict):
        return None
    return {str(h): float(v) for h, v in recorded.items() if isinstance(v, int | float) and np.isfinite(v)}


def trained_on(run_config, images: list[str] | None, recorded_sha: str | None) -> np.ndarray | None:
    """Per row, whether its image is one of the run's training split (by file path); None when it
    cannot tell (see the module's docstring).

    Args:
        run_config: the run's Config (its table, target and split settings).
        images: the rows' image paths, absolute (None: the rows were read without images).
        recorded_sha: the sha256 the run recorded of its table (report.json), if any.
    """
    from gaal_cli.data.leakage import absolute_paths
    from gaal_cli.data.recipes import TABLE_SUFFIXES
    from gaal_cli.data.table_file import file_sha256
    from gaal_cli.data.user_table import load_table

    own = Path(run_config.data.name)
    if images is None or not own.name.lower().endswith(TABLE_SUFFIXES) or not own.is_file():
        return None
    if recorded_sha is not None and file_sha256(own) != recorded_sha:
        return None  # the file there now is not the one the run trained on
    try:
        loaded = load_table(run_config.data)
    except GaalError:
        return None
    paths = absolute_paths(loaded.frame[run_config.data.image_column], own.parent)
    trained = {p for p, s in zip(paths, loaded.split) if s == "train" and p}
    return np.array([p in trained for p in images], dtype=bool)
