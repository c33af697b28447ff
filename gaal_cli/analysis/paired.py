"""Is a difference real? Each row of a table against the reference row (CF unless
`gaal report --reference` names another): the paired difference per head with its interval,
Holm-corrected p and verdict, from the runs' predictions files (gaal_cli/analysis/compare.py)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from gaal_cli.analysis import compare, stats
from gaal_cli.analysis.collect import HEAD_LABELS, HEADS, METRICS, column, dataset_label, dataset_order, row_order
from gaal_cli.foundation.display import markdown_text
from gaal_cli.foundation.errors import GaalError
from gaal_cli.runs.run_predictions import note_unpaired
from gaal_cli.sweeps.runner import format_value

#: the row every other row of a table is compared with, unless `gaal report --reference` names another
REFERENCE = "concat"


ALPHA = 0.05


VERDICT_MARKS = {"better": "▲", "worse": "▼", "tie": "="}


def paired_markdown(
    runs: pd.DataFrame, rows: list[str], metric: str, reference: str, resamples: int = stats.RESAMPLES
) -> str:
    """Each row against the reference row (the same settings, method `reference`) on the same
    datasets and seeds: the paired difference of each head's test `metric` with its 95 % interval,
    Holm's correction across the table's rows per column, and the verdict of stats.RULE (printed
    under the table). The bootstrap over seeds and test samples where both runs of every seed kept
    their predictions file; else the paired t test on the per-seed values, marked ᵗ."""
    if "method" not in rows:
        return "No paired differences: the rows of this table do not vary the method, so it has no reference row.\n"
    if reference not in set(runs["method"]):
        return f"No paired differences: no '{reference}' row to compare with (gaal report --reference NAME).\n"
    datasets = dataset_order(runs["dataset"].unique())
    cells: dict[tuple, dict[tuple, tuple[stats.PairedDifference, bool]]] = {}
    loaded: dict[str, Any] = {}
    unpaired: dict[str, None] = {}  # why files were not paired (each once, in order)
    for key, part in runs.groupby(rows, dropna=False, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        if dict(zip(rows, key))["method"] == reference:
            continue
        ref_key = tuple(reference if r == "method" else v for r, v in zip(rows, key))
        ref = runs[_matches(runs, rows, ref_key)]
        for d in datasets:
            for h in HEADS:
                found = paired_cell(
                    part[part["dataset"] == d], ref[ref["dataset"] == d], h, metric, resamples, loaded, unpaired
                )
                if found is not None:
                    cells.setdefault((d, h), {})[key] = found
    verdicts = {col: stats.mark_rows({k: v[0] for k, v in found.items()}, ALPHA) for col, found in cells.items()}
    header = [r.split(".")[-1] for r in rows]
    for d in datasets:
        header += [f"{markdown_text(dataset_label(d))} {HEAD_LABELS[h]}" for h in HEADS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    row_keys_in_order = [k for k in row_order(runs, rows) if any(k in found for found in cells.values())]
    for key in row_keys_in_order:
        text = [markdown_text(format_value(v)) for v in key]
        for d in datasets:
            for h in HEADS:
                verdict = verdicts.get((d, h), {}).get(key)
                text.append("-" if verdict is None else paired_text(verdict, cells[(d, h)][key][1]))
        lines.append("| " + " | ".join(text) + " |")
    if not row_keys_in_order:
        return f"No paired differences: no row shares seeds with a '{reference}' row.\n"
    fallback = any(not boot for found in cells.values() for _, boot in found.values())
    legend = (
        f"Each cell: {METRICS[metric]} of the row minus the '{reference}' row's (same settings, same seeds), "
        f"[95 % interval], Holm-corrected p, then ▲ better, ▼ worse, = tie. {stats.RULE.format(alpha=ALPHA)}"
    )
    if fallback:
        legend += (
            " ᵗ: a run of the pair kept no predictions file (or the files cannot be paired), so the difference is "
            "the paired t test on the per-seed values (seeds only, not the test samples); "
            "`gaal eval RUN --write-predictions` writes the file for an older run."
        )
    if unpaired:
        legend += " Not paired by sample (ᵗ): " + "; ".join(map(markdown_text, unpaired)) + "."
    return "\n".join(lines) + f"\n\n{legend}\n"


def _matches(runs: pd.DataFrame, rows: list[str], key: tuple) -> pd.Series:
    mask = pd.Series(True, index=runs.index)
    for r, v in zip(rows, key):
        mask &= runs[r].isna() if pd.isna(v) else runs[r] == v
    return mask


def paired_cell(
    a: pd.DataFrame,
    r: pd.DataFrame,
    head: str,
    metric: str,
    resamples: int,
    loaded: dict[str, Any],
    unpaired: dict[str, None] | None = None,
) -> tuple[stats.PairedDifference, bool] | None:
    """A's runs minus R's on one dataset and head, paired by seed: (difference, bootstrapped?), or
    None where the two share no seed with that head reported. Files that cannot be paired (or are
    not their runs': gaal_cli.runs.run_predictions) are named in `unpaired` and warned about."""
    c = column(head, metric)
    a_seeds = {int(x.seed): x for x in a.itertuples() if not pd.isna(getattr(x, c))}
    r_seeds = {int(x.seed): x for x in r.itertuples() if not pd.isna(getattr(x, c))}
    seeds = sorted(set(a_seeds) & set(r_seeds))
    if not seeds:
        return None
    folders = [(a_seeds[s].folder, r_seeds[s].folder) for s in seeds]
    if all(compare.has_predictions(f) for pair in folders for f in pair):
        try:
            pairs = [(_predictions(fa, loaded), _predictions(fr, loaded)) for fa, fr in folders]
            return compare.bootstrap_difference(pairs, head, metric, resamples=resamples), True
        except GaalError as err:  # the seeds-only test below, marked ᵗ, the file named
            note_unpaired(err, unpaired)
    values_a = [float(getattr(a_seeds[s], c)) for s in seeds]
    values_r = [float(getattr(r_seeds[s], c)) for s in seeds]
    return compare.t_difference(values_a, values_r, metric), False


def _predictions(folder: str, loaded: dict[str, Any]):
    if folder not in loaded:
        loaded[folder] = compare.predictions_of(folder)
    return loaded[folder]


def paired_text(verdict: stats.RowVerdict, bootstrapped: bool) -> str:
    """`+0.0120 [-0.0040, +0.0290] p 0.21 =, ~14 seeds` (ᵗ after the difference for the t fallback)."""
    d = verdict.difference
    mark = "" if bootstrapped else "ᵗ"
    interval = "" if pd.isna(d.low) else f" [{d.low:+.4f}, {d.high:+.4f}]"
    p = compare.format_p(verdict.adjusted_p)
    text = f"{d.difference:+.4f}{mark}{interval} p {p} {VERDICT_MARKS[verdict.verdict]}"
    if verdict.verdict == "tie" and d.seeds_needed is not None:
        text += f", ~{d.seeds_needed} seeds"
    elif verdict.verdict == "tie" and d.n_seeds < 2:
        text += ", 1 seed"
    return text
