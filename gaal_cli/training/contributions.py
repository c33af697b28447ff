"""How much each modality contributes to a run's fused accuracy: pure functions of its metrics.

Two-player Shapley values (BalanceBenchmark reports the same quantity): the players are the
image and the table, and the value of a coalition is the accuracy reached with those modalities,

    v(image, table) = the multimodal head's accuracy,
    v(image)        = the image head's accuracy (the table missing),
    v(table)        = the tabular head's accuracy (the image missing),
    v(none)         = 1 / classes, the accuracy of guessing without any input.

v(none) is chance rather than the majority class because a finished run folder records the
number of classes but not the training split's class counts; on balanced data the two agree.
Each modality's value is its marginal gain averaged over both orders, so the two values add up
to v(image, table) - v(none). A method without unimodal heads has no value for v(image) or
v(table) and gets none here.

Used by the engine (report.json's `shapley`) and by `gaal report`, which recomputes it from the
metrics so that runs trained before this existed are covered too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

MODALITIES = ("image", "tabular")


def shapley(multi: float, image: float, tabular: float, none: float) -> dict[str, float]:
    """Two-player Shapley values of the image and the table for the coalition values given."""
    return {
        "image": 0.5 * ((image - none) + (multi - tabular)),
        "tabular": 0.5 * ((tabular - none) + (multi - image)),
    }


def split_shapley(metrics: Mapping[str, Mapping[str, Any]], classes: int | None) -> dict[str, float] | None:
    """Shapley values from one split's per-head metrics ({head: {'acc': ...}}), or None when
    the run lacks a unimodal head or the class count."""
    heads = {h: metrics.get(h, {}).get("acc") for h in ("multi", *MODALITIES)}
    if not classes or any(v is None for v in heads.values()):
        return None
    return shapley(heads["multi"], heads["image"], heads["tabular"], 1.0 / classes)


def run_shapley(metrics: Mapping[str, Mapping[str, Any]], classes: int | None) -> dict[str, dict[str, float]]:
    """{split: {modality: value}} for every split (report.json's `metrics`) whose heads allow it."""
    values = {split: split_shapley(m, classes) for split, m in metrics.items()}
    return {split: {k: round(x, 6) for k, x in v.items()} for split, v in values.items() if v is not None}


def negative_rate(steps: Iterable[Mapping[str, Any]], modality: str) -> tuple[float, int] | None:
    """Fraction of logged steps whose `cos_<modality>` is below 0, and how many were logged;
    None when the run logged no such cosine."""
    negative = logged = 0  # counted as the rows stream past: a run logs a row per step
    for step in steps:
        cosine = step.get(f"cos_{modality}")
        if cosine is not None:
            logged += 1
            negative += cosine < 0
    return (negative / logged, logged) if logged else None
