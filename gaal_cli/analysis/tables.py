"""The Markdown tables: mean ± std over seeds with the 95 % interval of each head's test metric
(Multi / Image / Tabular per dataset), the best mean bold where it stands apart, health marks,
and the modality diagnostics table. A run that reads one modality at test (report.json
`inputs_at_test`: the unimodal rows, and the test-time tabular-missing methods such as KD and FMR)
has no multimodal prediction: its accuracy goes in that modality's column and its Multi cell
stays empty, as in the paper's Table I."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from gaal_cli.analysis import stats
from gaal_cli.analysis.collect import DIAGNOSTICS, HEADS, METRICS, column, dataset_label, dataset_order, row_order
from gaal_cli.analysis.health_marks import BELOW, health_mark, health_rule
from gaal_cli.analysis.provenance_groups import cell_mark, letters_of, several
from gaal_cli.foundation.display import markdown_text
from gaal_cli.sweeps.runner import format_value

INTERVAL_RULE = "Cells: mean ± std over seeds [95 % interval of the mean, Student t over seeds]."


BOLD_RULE = (
    "Bold: a column's best mean, only where it exceeds the runner-up by more than the larger of their "
    "standard deviations over seeds; nothing is bold with one seed or on a tie."
)


def summarize(runs: pd.DataFrame, rows: list[str]) -> pd.DataFrame:
    """Mean, std and count over seeds of each head's test metrics and of seconds per epoch, and
    each metric's 95 % interval over seeds (`<col>_low`, `<col>_high`: stats.mean_interval)."""
    grouped = runs.groupby([*rows, "dataset"], dropna=False)
    metrics = [column(h, m) for h in HEADS for m in METRICS if column(h, m) in runs.columns]
    table = grouped[[*metrics, "sec_per_epoch"]].agg(["mean", "std", _interval_low, _interval_high, "count"])
    table.columns = [f"{col}_{stat.removeprefix('_interval_')}" for col, stat in table.columns]
    table = table.drop(columns=["sec_per_epoch_low", "sec_per_epoch_high", "sec_per_epoch_count"])
    table["n"] = grouped.size()
    if "null_metrics" in runs.columns:  # the metrics some seed reported as NaN, per cell
        table["null_metrics"] = grouped["null_metrics"].agg(
            lambda v: " ".join(sorted(set(" ".join(v.fillna("")).split())))
        )
    for h in HEADS:  # per cell and number, the runs with a run-health finding on it, or below one modality
        for m in METRICS:
            if f"health_{column(h, m)}" in runs.columns:
                table[f"dead_{column(h, m)}"] = grouped[f"health_{column(h, m)}"].agg(_nonempty)
        if f"{BELOW}_heads" in runs.columns:
            table[f"below_{h}"] = grouped[f"{BELOW}_heads"].agg(lambda heads, h=h: _count_head(heads, h))
    if "health_notes" in runs.columns:
        table["noted"] = grouped["health_notes"].agg(_nonempty)
    if "provenance" in runs.columns:  # the code-state and host groups of each cell's runs
        table["provenance"] = grouped["provenance"].agg(letters_of)
    return table.reset_index()


def _nonempty(names: pd.Series) -> int:
    return int((names.fillna("") != "").sum())


def _count_head(heads: pd.Series, head: str) -> int:
    return int(heads.fillna("").str.split().map(lambda names: head in names).sum())


def _interval_low(values: pd.Series) -> float:
    values = values.dropna()
    return stats.mean_interval(values.to_numpy()).low if len(values) else np.nan


def _interval_high(values: pd.Series) -> float:
    values = values.dropna()
    return stats.mean_interval(values.to_numpy()).high if len(values) else np.nan


def standout(means: pd.Series, stds: pd.Series) -> Any:
    """The index of the best mean if it stands apart from the runner-up by more than the
    seeds' spread (the larger of the two standard deviations), else None.

    A single seed has no spread and a tie no gap, so neither is ever called best.
    """
    ranked = means.dropna().sort_values(ascending=False)
    if len(ranked) < 2:
        return None
    best, second = ranked.index[0], ranked.index[1]
    spread = np.nanmax([stds[best], stds[second]]) if not pd.isna(stds[best]) else np.nan
    return best if not pd.isna(spread) and ranked.iloc[0] - ranked.iloc[1] > spread else None


def mean_std(mean: float, std: float, digits: int = 4) -> str:
    # one seed has no spread: show the mean alone rather than a made-up ± 0
    if pd.isna(mean):
        return "-"
    return f"{mean:.{digits}f}" if pd.isna(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def with_interval(text: str, low: float, high: float, digits: int = 4) -> str:
    """`mean ± std` followed by the 95 % interval over seeds, where there is one (two seeds or more)."""
    if text == "-" or pd.isna(low) or pd.isna(high):
        return text
    return f"{text} [{low:.{digits}f}, {high:.{digits}f}]"


def markdown(summary: pd.DataFrame, rows: list[str], metric: str = "acc") -> str:
    """Rows by setting, columns Multi / Image / Tabular (test `metric`) / s per epoch / n per
    dataset; the best mean bold where it stands apart (`BOLD_RULE`, stated under the table)."""
    datasets = dataset_order(summary["dataset"].unique())
    header = [r.split(".")[-1] for r in rows]
    for d in datasets:
        label = markdown_text(dataset_label(d))
        header += [f"{label} Multi", f"{label} Image", f"{label} Tabular", f"{label} s/epoch", f"{label} n"]
    bold = set()
    for d in datasets:
        part = summary[summary["dataset"] == d]
        for h in HEADS:
            c = column(h, metric)
            best = standout(part[f"{c}_mean"], part[f"{c}_std"])
            bold |= set() if best is None else {(best, h)}
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    mixed = several(summary)
    position = {
        (*key, d): i for i, (key, d) in enumerate(zip(summary[rows].itertuples(index=False), summary["dataset"]))
    }
    for key in row_order(summary, rows):
        cells = [markdown_text(format_value(v)) for v in key]
        for d in datasets:
            i = position.get((*key, d))
            if i is None:
                cells += ["-"] * 5
                continue
            cell = summary.loc[summary.index[i]]
            for h in HEADS:
                c = column(h, metric)
                text = mean_std(cell[f"{c}_mean"], cell[f"{c}_std"])
                text = with_interval(text, cell.get(f"{c}_low", np.nan), cell.get(f"{c}_high", np.nan))
                text = f"**{text}**" if (summary.index[i], h) in bold else text
                marked = text + health_mark(cell, h, metric) if text != "-" else text
                cells.append(marked + seeds_left(cell, h, metric))
            sec = cell["sec_per_epoch_mean"]
            groups = cell_mark(cell.get("provenance", ""), mixed)
            cells += ["-" if pd.isna(sec) else f"{sec:.2f}", f"{int(cell['n'])}{groups}"]
        lines.append("| " + " | ".join(cells) + " |")
    nulls = summary.get("null_metrics", pd.Series(dtype=str)).fillna("")
    nan_rule = f" {NAN_RULE}" if (nulls != "").any() else ""
    return "\n".join(lines) + f"\n\n{INTERVAL_RULE} {BOLD_RULE}{nan_rule}\n" + health_rule(summary, metric)


NAN_RULE = (
    "(k of n seeds): the other seeds reported this metric as NaN (null in report.json: a diverged run); "
    "mean, std and interval are over the k seeds."
)


def seeds_left(cell: pd.Series, head: str, metric: str) -> str:
    """` (2 of 3 seeds)` where some seed of the cell reported the metric as NaN, else nothing."""
    if f"{head}.{metric}" not in str(cell.get("null_metrics", "") or "").split():
        return ""
    return f" ({int(cell[f'{column(head, metric)}_count'])} of {int(cell['n'])} seeds)"


def summarize_diagnostics(runs: pd.DataFrame, rows: list[str]) -> pd.DataFrame:
    """Mean and std over seeds of each modality diagnostic, per row and dataset."""
    grouped = runs.groupby([*rows, "dataset"], dropna=False)
    stats = grouped[list(DIAGNOSTICS)].agg(["mean", "std"])
    stats.columns = [f"{col}_{stat}" for col, stat in stats.columns]
    stats["n"] = grouped.size()
    return stats.reset_index()


def diagnostics_markdown(diag: pd.DataFrame, rows: list[str]) -> str:
    """One line per row and dataset: Shapley values, gaps to the unimodal models, cosine rates."""
    header = [*(r.split(".")[-1] for r in rows), "dataset", *DIAGNOSTICS.values(), "n"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for d in dataset_order(diag["dataset"].unique()):
        part = diag[diag["dataset"] == d]
        for key in row_order(part, rows):
            cell = part[(part[rows] == pd.Series(key, index=rows)).all(axis=1)].iloc[0]
            values = [mean_std(cell[f"{c}_mean"], cell[f"{c}_std"], digits=3) for c in DIAGNOSTICS]
            texts = [*(format_value(v) for v in key), dataset_label(d)]
            lines.append("| " + " | ".join([*map(markdown_text, texts), *values, str(cell["n"])]) + " |")
    return "\n".join(lines) + "\n\n" + DIAGNOSTICS_NOTE + "\n"


DIAGNOSTICS_NOTE = (
    "φ: two-player Shapley value of each modality's contribution to the fused accuracy, from the accuracies "
    "of the multimodal head v(both), the image head v(image), the tabular head v(table) and chance 1/classes "
    "v(none); φ image + φ table = v(both) − v(none); '-' where the method has no unimodal heads. "
    "Head − alone: the run's unimodal head accuracy (test) minus the mean of the unimodal method trained alone "
    "in the same experiment with the same settings. cos < 0: fraction of training steps whose logged gradient "
    "cosine (unimodal vs multimodal loss, that encoder) is negative. Mean ± std over seeds."
)
