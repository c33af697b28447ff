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


VERDICT_MARKS = {"better": "▲", "worse": "▼", "tie": "=", "no verdict": "·"}


def paired_markdown(runs: pd.DataFrame, rows: list[str], metric: str, reference: str) -> str:
    """Each row against the reference row (the same settings, method `reference`) on the same
    datasets and seeds: the paired difference of each head's test `metric` with its 95 % interval,
    Holm's correction across the table's rows per column, and the verdict of stats.RULE (printed
    under the table). From the runs' predictions files where both runs of every seed kept one;
    else the paired t test on the per-seed values, marked ᵗ, which draws no verdict on a dataset
    whose seeds share one test set (`dataset_designs`)."""
    if "method" not in rows:
        return "No paired differences: the rows of this table do not vary the method, so it has no reference row.\n"
    if reference not in set(runs["method"]):
        return f"No paired differences: no '{reference}' row to compare with (gaal report --reference NAME).\n"
    datasets = dataset_order(runs["dataset"].unique())
    loaded: dict[str, Any] = {}
    unpaired: dict[str, None] = {}  # why files were not paired (each once, in order)
    designs = dataset_designs(runs, loaded)
    cells: dict[tuple, dict[tuple, tuple[stats.PairedDifference, bool]]] = {}
    for key, part in runs.groupby(rows, dropna=False, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        if dict(zip(rows, key))["method"] == reference:
            continue
        ref_key = tuple(reference if r == "method" else v for r, v in zip(rows, key))
        ref = runs[_matches(runs, rows, ref_key)]
        for d in datasets:
            a, r = part[part["dataset"] == d], ref[ref["dataset"] == d]
            for h in HEADS:
                found = paired_cell(a, r, h, metric, loaded, designs.get(d), unpaired)
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
    found = [d for by_row in cells.values() for d, _ in by_row.values()]
    return "\n".join(lines) + "\n\n" + legend(metric, reference, found, designs, datasets, unpaired) + "\n"


def legend(
    metric: str,
    reference: str,
    found: list[stats.PairedDifference],
    designs: dict[str, bool],
    datasets: list[str],
    unpaired: dict[str, None],
) -> str:
    """The lines under a paired table: what a cell is, the rule, each dataset's test-set design, and
    the footnotes its cells need."""
    text = (
        f"Each cell: {METRICS[metric]} of the row minus the '{reference}' row's (same settings, same seeds), "
        "[95 % interval], Holm-corrected p, then ▲ better, ▼ worse, = tie, · no verdict. "
        + stats.RULE.format(alpha=ALPHA)
    )
    known = [f"{dataset_label(d)}: {stats.SHARED if designs[d] else stats.PER_SEED}" for d in datasets if d in designs]
    if known:
        text += (
            " Test sets (from the runs' predictions files: the same sample ids with the same labels in every seed, or "
            "not): " + "; ".join(known) + "."
        )
    if any(d.design == stats.VALUES for d in found):
        text += (
            " ᵗ: a run of the pair kept no predictions file (or the files cannot be paired), so the difference is the "
            "paired t test on the per-seed values (seeds only, not the test samples); on a dataset whose seeds share "
            "one test set it draws no verdict (it would miss that test set's variance); "
            "`gaal eval RUN --write-predictions` writes the file for an older run."
        )
    if any(d.basis == stats.ONE_SEED for d in found):
        text += " 1 seed: the interval is the test samples' noise alone; no verdict."
    if any(d.basis == stats.NO_SPREAD for d in found):
        text += " no spread: every seed gives the same difference, so the seeds' spread is unmeasured; no verdict."
    if unpaired:
        text += " Not paired by sample (ᵗ): " + "; ".join(map(markdown_text, unpaired)) + "."
    return text


def _matches(runs: pd.DataFrame, rows: list[str], key: tuple) -> pd.Series:
    mask = pd.Series(True, index=runs.index)
    for r, v in zip(rows, key):
        mask &= runs[r].isna() if pd.isna(v) else runs[r] == v
    return mask


def dataset_designs(runs: pd.DataFrame, loaded: dict[str, Any]) -> dict[str, bool]:
    """Per dataset whose runs of at least two seeds kept predictions files: whether its seeds share
    one test set (`compare.same_test_set` over one file per seed, the first folder of each)."""
    out = {}
    for dataset, part in runs.groupby("dataset"):
        first = {}
        for seed, folder in part.sort_values("folder")[["seed", "folder"]].to_numpy():
            if int(seed) not in first and compare.has_predictions(folder):
                first[int(seed)] = folder
        if len(first) < 2:
            continue
        try:
            out[str(dataset)] = compare.same_test_set([_predictions(f, loaded) for f in first.values()])
        except GaalError:
            continue  # an unreadable file: the design stays unknown
    return out


def paired_cell(
    a: pd.DataFrame,
    r: pd.DataFrame,
    head: str,
    metric: str,
    loaded: dict[str, Any],
    shared: bool | None,
    unpaired: dict[str, None] | None = None,
) -> tuple[stats.PairedDifference, bool] | None:
    """A's runs minus R's on one dataset and head, paired by seed: (difference, from samples?), or
    None where the two share no seed with that head reported. Files that cannot be paired (or are
    not their runs': gaal_cli.runs.run_predictions) are named in `unpaired` and warned about."""
    c = column(head, metric)
    a_seeds = {int(seed): (folder, value) for seed, folder, value in a[["seed", "folder", c]].dropna().to_numpy()}
    r_seeds = {int(seed): (folder, value) for seed, folder, value in r[["seed", "folder", c]].dropna().to_numpy()}
    seeds = sorted(set(a_seeds) & set(r_seeds))
    if not seeds:
        return None
    folders = [(a_seeds[s][0], r_seeds[s][0]) for s in seeds]
    if all(compare.has_predictions(f) for pair in folders for f in pair):
        try:
            pairs = [(_predictions(fa, loaded), _predictions(fr, loaded)) for fa, fr in folders]
            return compare.sample_difference(pairs, head, metric), True
        except GaalError as err:  # the seeds-only test below, marked ᵗ, the file named
            note_unpaired(err, unpaired)
    values_a = [float(a_seeds[s][1]) for s in seeds]
    values_r = [float(r_seeds[s][1]) for s in seeds]
    return compare.t_difference(values_a, values_r, metric, shared=bool(shared)), False


def _predictions(folder: str, loaded: dict[str, Any]):
    if folder not in loaded:
        loaded[folder] = compare.predictions_of(folder)
    return loaded[folder]


def paired_text(verdict: stats.RowVerdict, from_samples: bool) -> str:
    """`+0.0120 [-0.0040, +0.0290] p 0.21 =, ~14 seeds` (ᵗ after the difference for the t fallback)."""
    d = verdict.difference
    mark = "" if from_samples else "ᵗ"
    interval = "" if pd.isna(d.low) else f" [{d.low:+.4f}, {d.high:+.4f}]"
    p = "" if pd.isna(verdict.adjusted_p) else f" p {compare.format_p(verdict.adjusted_p)}"
    text = f"{d.difference:+.4f}{mark}{interval}{p} {VERDICT_MARKS[verdict.verdict]}"
    if verdict.verdict == "tie" and verdict.plan is not None and verdict.plan.short():
        text += f", {verdict.plan.short()}"
    elif verdict.verdict == "no verdict":
        text += ", " + NO_VERDICT_WORDS.get(d.basis, "")
    return text.rstrip(", ")


#: the few words a cell without a verdict says about why (the legend says the rest)
NO_VERDICT_WORDS = {
    stats.ONE_SEED: "1 seed",
    stats.NO_SPREAD: "no spread",
    stats.NOTHING: "no difference",
    stats.BLIND: "shared test set",
}
