"""Run health in the report: the marks a table cell gets from its runs' health (gaal_cli/training/health.py),
the check against the model of one modality alone that only a table can make, the legend lines under
a table, and the Run health section."""

from __future__ import annotations

import numpy as np
import pandas as pd

from gaal_cli.analysis.collect import HEADS, METRICS, column
from gaal_cli.foundation.display import markdown_text
from gaal_cli.training.health import CHECKS, NOTES, THRESHOLDS

#: a head that may have learned nothing; a stage that stalled (milder); a head below one modality alone
DEAD_MARK, NOTE_MARK, BELOW_MARK = "†", "‡", "↓"
#: the unimodal methods, by the head they are the reference of
ALONE = {"image": "image", "tabular": "tabular"}
BELOW = "below_one_modality"
BELOW_TEXT = (
    "a head's test accuracy below that of the model trained on one modality alone in the same table (the better "
    "of the two for Multi), by a one-sided exact binomial test at 0.05 on the test size"
)


def below_one_modality(runs: pd.DataFrame, rows: list[str]) -> pd.Series:
    """Per run (by folder), the heads whose test accuracy is below the one-modality model's mean
    accuracy in the same table, dataset and other settings (`image` and `tabular` rows; for Multi the
    better of the two), space-separated: the exact one-sided binomial test (scipy.stats.binomtest)
    that the head's n_test samples came from an accuracy at least the reference's rejects at
    THRESHOLDS.alpha. The one-modality rows themselves are not checked."""
    from scipy import stats

    out = pd.Series("", index=runs["folder"].to_numpy(), dtype=object)
    family = [r for r in rows if r != "method"] + ["dataset"]
    if "method" not in rows or not set(ALONE) & set(runs["method"]):
        return out
    for _, part in runs.groupby(family, dropna=False):
        alone = {h: part.loc[part["method"] == m, h].mean() for h, m in ALONE.items() if h in part}
        # pandas' max skips NaN without numpy's all-NaN warning (a dataset with no one-modality run)
        alone["multi"] = pd.Series([alone.get("image"), alone.get("tabular")], dtype=float).max()
        for row in part[~part["method"].isin(list(ALONE.values()))].itertuples():
            n = getattr(row, "n_test", np.nan)
            below = []
            for h in HEADS:
                value, reference = getattr(row, h, np.nan), alone.get(h, np.nan)
                if pd.isna(value) or pd.isna(reference) or pd.isna(n) or value >= reference:
                    continue
                p = stats.binomtest(round(value * n), int(n), float(reference), alternative="less").pvalue
                below += [h] if p <= THRESHOLDS.alpha else []
            out[row.folder] = " ".join(below)
    return out


#: what a dead mark says about the numbers of each table
DEAD_MEANING = {
    "acc": "not above the test split's majority-class rate for its test size",
    "bal_acc": "at chance (1 / classes) for its test size",
    "f1": "its balanced accuracy at chance (1 / classes) for its test size",
}


def health_rule(summary: pd.DataFrame, metric: str = "acc") -> str:
    """The legend lines of the health marks a table of `metric` carries."""
    lines = []
    if any(summary.get(f"dead_{column(h, metric)}", pd.Series(dtype=float)).fillna(0).any() for h in HEADS):
        lines.append(
            f"{DEAD_MARK}: a run of the cell has a run-health finding on that number: {DEAD_MEANING[metric]} (a head "
            "that learned nothing scores as much), or a dead dependency, collapsed features or an encoder without "
            f"gradient ({DEAD_MARK}k/n when k of its n runs do)."
        )
    if summary.get("noted", pd.Series(dtype=float)).fillna(0).any():
        lines.append(
            f"{NOTE_MARK}: a run of the cell has a stage that stalled (its contrastive pretraining ended on its "
            f"ln(batch) plateau); milder than {DEAD_MARK}: the head's own numbers were checked and passed unless "
            f"marked {DEAD_MARK}."
        )
    if metric == "acc" and any(summary.get(f"below_{h}", pd.Series(dtype=float)).fillna(0).any() for h in HEADS):
        lines.append(f"{BELOW_MARK}: {BELOW_TEXT} ({BELOW_MARK}k/n when k of n runs are).")
    if not lines:
        return ""
    return " ".join(lines) + " The runs and findings are listed under Run health in report.md (health.md).\n"


def health_mark(cell: pd.Series, head: str, metric: str = "acc") -> str:
    """The marks of one number's cell: ` †` when every run of the cell has a finding on it, ` †k/n`
    when k of n do; likewise ‡ for a stalled stage and, on accuracy, ↓ for a head below one modality
    alone."""
    n = int(cell["n"])
    marks = ""
    below = [(f"below_{head}", BELOW_MARK)] if metric == "acc" else []
    for name, mark in [(f"dead_{column(head, metric)}", DEAD_MARK), ("noted", NOTE_MARK), *below]:
        k = int(cell.get(name, 0) or 0)
        marks += "" if not k else f" {mark}" if k == n else f" {mark}{k}/{n}"
    return marks


def health_markdown(runs: pd.DataFrame) -> str:
    """Run health over every run: the flagged runs with their findings per head, the notes, the
    runs below one modality alone, and which checks the older runs' records did not allow."""
    checks = {**CHECKS, BELOW: BELOW_TEXT}
    lines = [
        "Checks (gaal_cli/training/health.py, gaal_cli/analysis/health_marks.py; thresholds there and in the README): "
        + "; ".join(f"`{name}`: {text}" for name, text in checks.items())
        + ". Notes (milder): "
        + "; ".join(f"`{name}`: {text}" for name, text in NOTES.items())
        + ".\n"
    ]
    columns = [f"health_{column(h, m)}" for h in HEADS for m in METRICS] + [f"{BELOW}_heads"]
    runs = runs.assign(**{c: runs[c].fillna("") if c in runs else "" for c in [*columns, "health_notes"]})
    per_head = [(row, heads_flagged(row)) for row in runs.sort_values("folder").itertuples()]
    flagged = [(row, heads) for row, heads in per_head if heads or row.health_notes]
    if not flagged:
        lines.append(f"No finding or note in any of the {len(runs)} runs.\n")
    else:
        dead = [sum(1 for names in heads.values() if set(names) - {BELOW}) for _, heads in per_head]
        below = [sum(1 for names in heads.values() if BELOW in names) for _, heads in per_head]
        lines += [
            f"{sum(1 for k in dead if k)} of {len(runs)} runs have findings ({sum(dead)} heads); "
            f"{sum(1 for k in below if k)} runs have a head below one modality alone ({sum(below)} heads); "
            f"{int((runs['health_notes'] != '').sum())} runs have notes.\n",
            "| run | findings per head | notes |",
            "|---|---|---|",
        ]
        for row, heads in flagged:
            text = "; ".join(f"{h}: {' '.join(names)}" for h, names in heads.items())
            notes = markdown_text(row.health_notes) or "-"
            lines.append(f"| {markdown_text(row.folder)} | {markdown_text(text) or '-'} | {notes} |")
        lines.append("")
    unchecked = runs["health_unchecked"].fillna("").str.split().explode().dropna()
    counts = unchecked[unchecked != ""].value_counts()
    if len(counts):
        lines.append(
            "Not checked (the runs' records do not allow these checks: runs from before run health, or before the "
            "random-initialisation reference): "
            + "; ".join(f"`{name}` in {count} runs" for name, count in counts.sort_index().items())
            + ". A cell without a mark is healthy only by the checks that were made.\n"
        )
    return "\n".join(lines)


def heads_flagged(row) -> dict[str, list[str]]:
    """{head: the names of its findings on any of its numbers, `below_one_modality` included}, for
    the heads that have any."""
    below = set(str(getattr(row, f"{BELOW}_heads", "") or "").split())
    out = {}
    for h in HEADS:
        names = {name for m in METRICS for name in str(getattr(row, f"health_{column(h, m)}", "") or "").split()}
        names = sorted(names) + ([BELOW] if h in below else [])
        if names:
            out[h] = names
    return out
