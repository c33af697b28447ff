"""Tables and figures from finished run folders: Table I / II style tables, Figs. 1a, 3, 4, 5,
each table's modality diagnostics and the accuracy-against-dominance figure of a regime sweep.

Every number comes from the runs' own files: test accuracy and seconds per epoch from
report.json, the settings from config.yaml, the curves from metrics.jsonl and the gradient
cosines from steps.jsonl. A table's rows are the settings that vary among the runs of an
experiment on one dataset (the sweep's axes, read back from the configs, so hand-run folders
work too); its columns are Multi / Image / Tabular per dataset, mean ± std over seeds.
Experiments whose rows are the method alone form Table I, those varying GAAL's `cgs` / `ugg`
switches Table II; any other experiment gets its own table. A synthetic regime other than the
default counts as a dataset of its own (`synthetic-table_dominant`), so its Table II sits
beside the complementary one. Figures are written as PNG (for report.md), PDF and SVG. A run that reads one modality at
test (report.json `inputs_at_test`: the unimodal rows, and the test-time tabular-missing methods
such as KD and FMR) has no multimodal prediction: its accuracy goes in that modality's column
and its Multi cell stays empty, as in the paper's Table I.

This lives apart from results.py, which holds the run-folder layout and is imported by every
training run: training should not load pandas and matplotlib, and the layout should stay
readable on its own.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gaal_cli import compare, stats
from gaal_cli.config import read_yaml_file
from gaal_cli.contributions import MODALITIES, negative_rate, run_shapley
from gaal_cli.errors import GaalError
from gaal_cli.files import make_folder, os_error, remove_tree, signals_held, write_file
from gaal_cli.health import CHECKS, folder_health
from gaal_cli.locks import folder_lock
from gaal_cli.methods.registry import all_methods, method_names, method_spec
from gaal_cli.results import RunFolder, finished_runs
from gaal_cli.styles import legend_outside, style
from gaal_cli.sweep import WHERE_KEYS, format_value

HEADS = ("multi", "image", "tabular")
# the test metrics tabulated: accuracy (the paper's), and for imbalanced label sets balanced
# accuracy and macro-F1; one table each ({kind}.md, {kind}_bal_acc.md, {kind}_f1.md)
METRICS = {"acc": "accuracy", "bal_acc": "balanced accuracy", "f1": "macro-F1"}
SPLITS = ("val", "test")
METHOD_ORDER = (
    "image", "tabular", "concat", "max", "daft", "tip", "ogm_ge", "mmpareto", "mla",
    "di_mml", "reconboost", "lfm", "igm", "dgl", "arl", "gaal", "kd", "mfh", "fmr", "mmcl", "charms",
    "dmrnet*", "mmanet*", "gaal*",
)  # fmt: skip
DATASET_LABELS = {"dvm": "DVM", "sun": "SUNAttribute", "celeba": "CelebA", "synthetic": "synthetic"}
ABLATION_KEYS = ("methods.gaal.cgs", "methods.gaal.ugg")
LAMBDA_KEYS = ("methods.gaal.lambda_image", "methods.gaal.lambda_tabular")
EPSILON_KEY = "methods.gaal.epsilon"
DOMINANCE_KEY = "data.synthetic.dominance"
# per-run modality diagnostics (columns of runs.csv) and their headers in report.md
DIAGNOSTICS = {
    "shapley_image_val": "φ image (val)",
    "shapley_tabular_val": "φ table (val)",
    "shapley_image_test": "φ image (test)",
    "shapley_tabular_test": "φ table (test)",
    "gap_image": "image head − image alone",
    "gap_tabular": "tabular head − tabular alone",
    "negcos_image": "cos < 0, image",
    "negcos_tabular": "cos < 0, table",
}
# config keys that never define a row: identity, the dataset (the columns) and where a run trained
# (a modality absent at test names a row by its star instead: see method_label)
NOT_ROWS = {"name", "seed", "data.name", "data.test_missing", *WHERE_KEYS}


# ---------------------------------------------------------------- collecting runs


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a nested mapping; lists become strings so they can be compared."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = str(value) if isinstance(value, list) else value
    return flat


def load_runs(root: Path) -> pd.DataFrame:
    """One row per finished run under `root`: its settings, test accuracies, timings and
    modality diagnostics (see `DIAGNOSTICS`). A run folder whose report.json or config.yaml
    cannot be read is skipped with a warning naming it.

    Raises:
        GaalError: no readable finished run there.
    """
    from gaal_cli.display import console, styled

    rows = []
    for run in finished_runs(root):
        try:
            rows.append(run_row(run))
        except GaalError as err:
            message = styled("warning:", "yellow", f" skipped a broken run folder: {err.render()}")
            console.print(message, highlight=False, soft_wrap=True)
    if not rows:
        raise GaalError("no finished runs (folders with DONE and report.json) under it", source=str(root))
    return add_unimodal_gaps(pd.DataFrame(rows))


def dataset_key(name: str, config: dict[str, Any]) -> str:
    """The dataset a run's numbers belong to: a synthetic regime other than the default is a
    dataset of its own (its own columns, panels and Table II), so `synthetic-table_dominant`."""
    regime = config.get("data.synthetic.regime")
    if name == "synthetic" and isinstance(regime, str) and regime != "complementary":
        return f"synthetic-{regime}"
    return name


def dataset_label(key: str) -> str:
    if key.startswith("synthetic-"):
        return f"synthetic, {key.removeprefix('synthetic-').replace('_', '-')}"
    return DATASET_LABELS.get(key, key)


def run_diagnostics(run: RunFolder, report: dict[str, Any]) -> dict[str, float]:
    """Shapley values per split and modality, and the rate of negative gradient cosines."""
    values = run_shapley(report["metrics"], report.get("data", {}).get("classes"))
    out = {f"shapley_{m}_{split}": values.get(split, {}).get(m, np.nan) for split in SPLITS for m in MODALITIES}
    for m in MODALITIES:
        rate = negative_rate(run.iter_steps(), m)  # streamed: steps.jsonl has a row per training step
        out[f"negcos_{m}"] = rate[0] if rate else np.nan
    return out


def add_unimodal_gaps(runs: pd.DataFrame) -> pd.DataFrame:
    """`gap_<modality>`: a run's unimodal head accuracy minus the mean accuracy of the unimodal
    method trained alone on that modality in the same family (same experiment and dataset,
    same settings apart from the method); NaN where the family has no such run."""
    runs = runs.copy()
    for m in MODALITIES:
        runs[f"gap_{m}"] = np.nan
    for _, part in runs.groupby("experiment"):
        family = [r for r in row_keys(part) if r != "method"] + ["dataset"]
        for m in MODALITIES:
            alone = part[part["method"] == m].groupby(family, dropna=False)[m].mean().rename("alone")
            if alone.empty:
                continue
            joined = part[family].join(alone, on=family)["alone"]
            has_head = part["method"] != m
            runs.loc[part.index[has_head], f"gap_{m}"] = (part[m] - joined)[has_head]
    return runs


def run_row(run: RunFolder) -> dict[str, Any]:
    """A finished run's settings, test accuracies and timings.

    Raises:
        GaalError: report.json or config.yaml unreadable, or missing what a table needs.
    """
    report = run.read_report()
    tree = read_yaml_file(run.file(RunFolder.CONFIG))
    if not isinstance(tree, dict):
        got = type(tree).__name__
        raise GaalError(f"expected a mapping of settings, got {got}", source=str(run.file(RunFolder.CONFIG)))
    config = flatten(tree)
    if report.get("dataset") != "synthetic":  # the embedded set's knobs mean nothing for another dataset
        config = {k: (np.nan if k.startswith("data.synthetic.") else v) for k, v in config.items()}
    try:
        test = dict(report["metrics"]["test"])
        inputs = report.get("inputs_at_test", ("image", "tabular"))
        if len(inputs) == 1:  # the one-modality prediction is reported under its modality alone
            test = {head: value for head, value in test.items() if head == inputs[0]}
        return {
            **config,
            "experiment": report["experiment"],
            "dataset": dataset_key(report["dataset"], config),
            "method": method_label(report["method"], config),
            "seed": report["seed"],
            **run_sizes(report, config),
            **{
                column(head, metric): _number(test[head].get(metric)) if head in test else np.nan
                for head in HEADS
                for metric in METRICS
            },
            "sec_per_epoch": _number(report["timings"]["seconds_per_epoch"]),
            "epochs": report["epochs_run"],
            **run_diagnostics(run, report),
            **run_health(run, report, tree),
            "folder": str(run.path),
        }
    except (KeyError, TypeError, AttributeError) as err:
        raise GaalError(f"lacks what a table needs ({type(err).__name__}: {err})", source=str(run.path)) from None


def run_health(run: RunFolder, report: dict[str, Any], tree: Any) -> dict[str, str]:
    """runs.csv's `health` (the names of the run's findings, space-separated; empty when healthy)
    and `health_unchecked` (the checks its records did not allow), from report.json's `health` or,
    for a run from before run health, from its logs (gaal_cli/health.py)."""
    try:
        health = folder_health(run, report, tree if isinstance(tree, dict) else {})
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        return {"health": "", "health_unchecked": f"all (its records do not read as expected: {type(err).__name__})"}
    return {
        "health": " ".join(sorted({f["name"] for f in health.findings})),
        "health_unchecked": " ".join(sorted(health.unchecked)),
    }


def run_sizes(report: dict[str, Any], config: dict[str, Any]) -> dict[str, float]:
    """n_train / n_val / n_test of the rows the run trained and was measured on, from its own
    report.json (`data.counts`); a synthetic run saved without them falls back to its config."""
    counts = (report.get("data") or {}).get("counts") or {}
    out = {}
    for split in ("train", "val", "test"):
        value = counts.get(split)
        if value is None and report.get("dataset") == "synthetic":
            value = config.get(f"data.synthetic.n_{split}")
        out[f"n_{split}"] = _number(value)
    return out


def column(head: str, metric: str) -> str:
    """runs.csv's column for a head's test metric: the head alone for accuracy, e.g. `image_f1`."""
    return head if metric == "acc" else f"{head}_{metric}"


def method_label(method: str, config: dict[str, Any]) -> str:
    """The row name: a method that reads a modality tested without it (`data.test_missing`, the
    paper's GAAL*) is starred, so it gets a row of its own beside the method tested on both.
    A method that never reads it (KD, FMR: image students) keeps its name."""
    absent = config.get("data.test_missing", "none")
    reads = method_spec(method).cls.modalities if method in method_names() else ()
    return f"{method}*" if isinstance(absent, str) and absent in reads else method


def _number(value: Any) -> float:
    """A metric as a float; null (how a NaN is written) and anything else not a number is NaN."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else np.nan


def row_keys(runs: pd.DataFrame) -> list[str]:
    """The settings that vary among one experiment's runs on the same dataset (else the method)."""
    candidates = [c for c in runs.columns if c == "method" or c.startswith(("methods.", "data.", "model.", "train."))]
    per_dataset = runs.groupby("dataset")
    not_rows = NOT_ROWS | dependency_keys()
    varying = [c for c in candidates if c not in not_rows and per_dataset[c].nunique().max() > 1]
    return varying or ["method"]


def dependency_keys() -> set[str]:
    """Settings that name another run (a teacher, a fixed model): they differ per seed, not per row."""
    keys = {"model.init_from"}
    for name, spec in all_methods().items():
        keys |= {f"methods.{name}.{field}" for field in spec.settings.dependency_fields}
    return keys


def table_kind(runs: pd.DataFrame, rows: list[str], experiment: str) -> str:
    """'table1' (rows: method), 'table2' (rows: GAAL's switches), else the experiment's own table.

    Runs that log gradient cosines (Fig. 1a) are slower and repeat Table I runs: kept apart.
    """
    diagnostic = [c for c in runs.columns if c.endswith(".grad_cosine") and runs[c].eq(True).any()]
    if rows == ["method"] and not diagnostic:
        return "table1"
    if set(rows) <= set(ABLATION_KEYS) and not diagnostic:
        return "table2"
    return experiment.replace("/", "_")


def tables(runs: pd.DataFrame) -> dict[str, tuple[pd.DataFrame, list[str]]]:
    """Runs grouped into tables: {file stem: (runs, row keys)}; Table I / II merge experiments."""
    grouped: dict[str, tuple[list[pd.DataFrame], list[str]]] = {}
    # experiments of several methods first: a one-method experiment that repeats a cell of theirs
    # is a variant of that row (e.g. GAAL as its official code runs it) and gets its own table
    parts = sorted(runs.groupby("experiment", sort=True), key=lambda item: item[1]["method"].nunique() == 1)
    for experiment, part in parts:
        rows = row_keys(part)
        kind = table_kind(part, rows, str(experiment))
        if kind == "table1" and part["method"].nunique() == 1 and fills_a_cell_again(grouped, part):
            kind = str(experiment).replace("/", "_")
        frames, known = grouped.setdefault(kind, ([], []))
        frames.append(part)
        known += [r for r in rows if r not in known]
    out = {}
    for kind in sorted(grouped, key=lambda k: (k not in ("table1", "table2"), k)):
        frames, rows = grouped[kind]
        merged = pd.concat(frames, ignore_index=True)
        check_once(merged, rows)
        out[kind] = (merged, rows)
    return out


def fills_a_cell_again(grouped: dict[str, tuple[list[pd.DataFrame], list[str]]], part: pd.DataFrame) -> bool:
    """Whether `part` has a (method, dataset, seed) cell that Table I's experiments already fill."""
    keys = ["method", "dataset", "seed"]
    known = {tuple(row) for frame in grouped.get("table1", ([], []))[0] for row in frame[keys].itertuples(index=False)}
    return any(tuple(row) in known for row in part[keys].itertuples(index=False))


def check_once(runs: pd.DataFrame, rows: list[str]) -> None:
    """Each (row, dataset, seed) cell must come from one run, or a mean would count it twice.

    Raises:
        GaalError: names two folders that fill the same cell.
    """
    keys = [*rows, "dataset", "seed"]
    dup = runs[runs.duplicated(keys, keep=False)]
    if len(dup):
        folders = dup.sort_values(keys)["folder"].tolist()[:2]
        raise GaalError(
            f"runs {folders[0]} and {folders[1]} fill the same table cell; report a narrower folder",
            source=str(Path(folders[0]).parents[2]),
        )


# ---------------------------------------------------------------- tables


def summarize(runs: pd.DataFrame, rows: list[str]) -> pd.DataFrame:
    """Mean, std and count over seeds of each head's test metrics and of seconds per epoch, and
    each metric's 95 % interval over seeds (`<col>_low`, `<col>_high`: stats.mean_interval)."""
    grouped = runs.groupby([*rows, "dataset"], dropna=False)
    metrics = [column(h, m) for h in HEADS for m in METRICS if column(h, m) in runs.columns]
    table = grouped[[*metrics, "sec_per_epoch"]].agg(["mean", "std", _interval_low, _interval_high])
    table.columns = [f"{col}_{stat.removeprefix('_interval_')}" for col, stat in table.columns]
    table = table.drop(columns=["sec_per_epoch_low", "sec_per_epoch_high"])
    table["n"] = grouped.size()
    if "health" in runs.columns:  # runs with a run-health finding, per cell
        table["flagged"] = grouped["health"].agg(lambda names: int((names.fillna("") != "").sum()))
    return table.reset_index()


def _interval_low(values: pd.Series) -> float:
    values = values.dropna()
    return stats.mean_interval(values.to_numpy()).low if len(values) else np.nan


def _interval_high(values: pd.Series) -> float:
    values = values.dropna()
    return stats.mean_interval(values.to_numpy()).high if len(values) else np.nan


def row_order(summary: pd.DataFrame, rows: list[str]) -> list[tuple]:
    def rank(key: tuple) -> tuple:
        return tuple(
            (METHOD_ORDER.index(v) if v in METHOD_ORDER else len(METHOD_ORDER), str(v)) if r == "method" else (0, v)
            for r, v in zip(rows, key)
        )

    return sorted({tuple(k) for k in summary[rows].itertuples(index=False)}, key=rank)


def dataset_order(datasets) -> list[str]:
    known = [d for d in DATASET_LABELS if d in set(datasets)]
    return known + sorted(set(datasets) - set(known))


HEALTH_MARK = "†"


def health_rule(summary: pd.DataFrame) -> str:
    """The legend line of the health mark, under every table that has one."""
    if "flagged" not in summary.columns or not summary["flagged"].any():
        return ""
    return (
        f"{HEALTH_MARK}: at least one of the cell's runs has a run-health finding (it may have learned nothing: "
        f"majority class, chance, contrastive plateau, a dead dependency, collapsed features or an encoder without "
        f"gradient; {HEALTH_MARK}k/n when k of its n runs do); the runs and findings are listed under Run health in "
        "report.md (health.md).\n"
    )


BOLD_RULE = (
    "Bold: a column's best mean, only where it exceeds the runner-up by more than the larger of their "
    "standard deviations over seeds; nothing is bold with one seed or on a tie."
)


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


INTERVAL_RULE = "Cells: mean ± std over seeds [95 % interval of the mean, Student t over seeds]."


def markdown(summary: pd.DataFrame, rows: list[str], metric: str = "acc") -> str:
    """Rows by setting, columns Multi / Image / Tabular (test `metric`) / s per epoch / n per
    dataset; the best mean bold where it stands apart (`BOLD_RULE`, stated under the table)."""
    datasets = dataset_order(summary["dataset"].unique())
    header = [r.split(".")[-1] for r in rows]
    for d in datasets:
        label = dataset_label(d)
        header += [f"{label} Multi", f"{label} Image", f"{label} Tabular", f"{label} s/epoch", f"{label} n"]
    bold = set()
    for d in datasets:
        part = summary[summary["dataset"] == d]
        for h in HEADS:
            c = column(h, metric)
            best = standout(part[f"{c}_mean"], part[f"{c}_std"])
            bold |= set() if best is None else {(best, h)}
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    position = {
        (*key, d): i for i, (key, d) in enumerate(zip(summary[rows].itertuples(index=False), summary["dataset"]))
    }
    for key in row_order(summary, rows):
        cells = [format_value(v) for v in key]
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
                cells.append(text + health_mark(cell) if text != "-" else text)
            sec = cell["sec_per_epoch_mean"]
            cells += ["-" if pd.isna(sec) else f"{sec:.2f}", str(int(cell["n"]))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\n{INTERVAL_RULE} {BOLD_RULE}\n" + health_rule(summary)


# ---------------------------------------------------------------- is a difference real?

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
    for key, part in runs.groupby(rows, dropna=False, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        if dict(zip(rows, key))["method"] == reference:
            continue
        ref_key = tuple(reference if r == "method" else v for r, v in zip(rows, key))
        ref = runs[_matches(runs, rows, ref_key)]
        for d in datasets:
            for h in HEADS:
                found = paired_cell(part[part["dataset"] == d], ref[ref["dataset"] == d], h, metric, resamples, loaded)
                if found is not None:
                    cells.setdefault((d, h), {})[key] = found
    verdicts = {col: stats.mark_rows({k: v[0] for k, v in found.items()}, ALPHA) for col, found in cells.items()}
    header = [r.split(".")[-1] for r in rows]
    for d in datasets:
        header += [f"{dataset_label(d)} {HEAD_LABELS[h]}" for h in HEADS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    row_keys_in_order = [k for k in row_order(runs, rows) if any(k in found for found in cells.values())]
    for key in row_keys_in_order:
        text = [format_value(v) for v in key]
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
    return "\n".join(lines) + f"\n\n{legend}\n"


def _matches(runs: pd.DataFrame, rows: list[str], key: tuple) -> pd.Series:
    mask = pd.Series(True, index=runs.index)
    for r, v in zip(rows, key):
        mask &= runs[r].isna() if pd.isna(v) else runs[r] == v
    return mask


def paired_cell(
    a: pd.DataFrame, r: pd.DataFrame, head: str, metric: str, resamples: int, loaded: dict[str, Any]
) -> tuple[stats.PairedDifference, bool] | None:
    """A's runs minus R's on one dataset and head, paired by seed: (difference, bootstrapped?), or
    None where the two share no seed with that head reported."""
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
        except GaalError:
            pass  # files that cannot be paired: the seeds-only test below, marked as such
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


def ranks_markdown(summary: pd.DataFrame, rows: list[str], kind: str, out: Path) -> tuple[str, list[Path]]:
    """Across conditions (a regime sweep's datasets x dominance levels, or Table I's datasets):
    each fused method's average rank on the Multi test accuracy, Friedman's test with Iman and
    Davenport's F, Nemenyi's critical difference and its diagram (`cd_<kind>`, PNG/PDF/SVG).
    Methods missing from a condition are left out (named); nothing when fewer than 3 methods or 2
    conditions remain."""
    if set(rows) == {"method", DOMINANCE_KEY}:
        condition, what = ["dataset", DOMINANCE_KEY], "regime and dominance level"
    elif rows == ["method"] and summary["dataset"].nunique() >= 2:
        condition, what = ["dataset"], "dataset"
    else:
        return "", []
    scores = summary.pivot_table(index=condition, columns="method", values="multi_mean", dropna=False)
    fused = [m for m in scores.columns if scores[m].notna().any()]
    complete = [m for m in fused if scores[m].notna().all()]
    methods = [m for m in METHOD_ORDER if m in complete] + sorted(set(complete) - set(METHOD_ORDER))
    n = len(scores.index)
    if len(methods) < 3 or n < 2:
        return "", []
    table = scores[methods].to_numpy(dtype=float)
    result = stats.friedman(table)
    cd = stats.nemenyi_cd(len(methods), n, ALPHA)
    from gaal_cli.cd_diagram import cd_diagram

    title = f"{kind}: Multi test accuracy over {n} conditions, Friedman p = {result.p_value:.3g}"
    drawn = cd_diagram(methods, result.average_ranks, cd, out / f"cd_{kind}.png", title=title)
    ranked = sorted(zip(methods, result.average_ranks), key=lambda x: (x[1], x[0]))
    left_out = sorted(set(fused) - set(complete))
    text = (
        f"Average rank of each method's mean Multi test accuracy over {n} conditions (each {what}; 1 = best): "
        + ", ".join(f"{m} {r:.2f}" for m, r in ranked)
        + f". Friedman χ² = {result.chi2:.2f} (p = {result.p_value:.3g}); Iman-Davenport F = {result.f:.2f} "
        f"(p = {result.f_p_value:.3g}); Nemenyi critical difference {cd:.2f} at α = {ALPHA:g}: methods whose average "
        "ranks differ by less are not told apart (joined by a bar in the diagram)."
        + (f" Left out (not run in every condition): {', '.join(left_out)}." if left_out else "")
        + "\n"
    )
    return text, [drawn.png.with_suffix(s) for s in FORMATS]


def health_mark(cell: pd.Series) -> str:
    """` †` when every run of the cell has a finding, ` †k/n` when k of n do, else nothing."""
    flagged, n = int(cell.get("flagged", 0)), int(cell["n"])
    if not flagged:
        return ""
    return f" {HEALTH_MARK}" if flagged == n else f" {HEALTH_MARK}{flagged}/{n}"


def health_markdown(runs: pd.DataFrame) -> str:
    """Run health over every run: the flagged runs with their findings, and which checks the
    older runs' records did not allow (how many runs each)."""
    lines = [
        "Checks (gaal_cli/health.py; thresholds there and in the README): "
        + "; ".join(f"`{name}`: {text}" for name, text in CHECKS.items())
        + ".\n"
    ]
    flagged = runs[runs["health"].fillna("") != ""].sort_values("folder")
    if flagged.empty:
        lines.append(f"No finding in any of the {len(runs)} runs.\n")
    else:
        lines += [f"{len(flagged)} of {len(runs)} runs have findings:\n", "| run | findings |", "|---|---|"]
        lines += [f"| {row.folder} | {row.health} |" for row in flagged.itertuples()]
        lines.append("")
    unchecked = runs["health_unchecked"].fillna("").str.split().explode().dropna()
    counts = unchecked[unchecked != ""].value_counts()
    if len(counts):
        lines.append(
            "Not checked (runs from before run health carry no `health` in report.json; it is computed from their "
            "logs, which do not allow these checks): "
            + "; ".join(f"`{name}` in {count} runs" for name, count in counts.sort_index().items())
            + ". A cell without the mark is healthy only by the checks that were made.\n"
        )
    return "\n".join(lines)


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
            lines.append(
                "| " + " | ".join([*(format_value(v) for v in key), dataset_label(d), *values, str(cell["n"])]) + " |"
            )
    return "\n".join(lines) + "\n\n" + DIAGNOSTICS_NOTE + "\n"


DIAGNOSTICS_NOTE = (
    "φ: two-player Shapley value of each modality's contribution to the fused accuracy, from the accuracies "
    "of the multimodal head v(both), the image head v(image), the tabular head v(table) and chance 1/classes "
    "v(none); φ image + φ table = v(both) − v(none); '-' where the method has no unimodal heads. "
    "Head − alone: the run's unimodal head accuracy (test) minus the mean of the unimodal method trained alone "
    "in the same experiment with the same settings. cos < 0: fraction of training steps whose logged gradient "
    "cosine (unimodal vs multimodal loss, that encoder) is negative. Mean ± std over seeds."
)


# ---------------------------------------------------------------- figures


# print-sized text, and fonts kept as text (SVG) or embedded as TrueType (PDF) for editing
STYLE = {
    "font.size": 10,
    "axes.titlesize": 10,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 8,
    "svg.fonttype": "none",
    "pdf.fonttype": 42,
    # SVG element ids are random unless salted: a fixed salt makes the same figure the same bytes
    "svg.hashsalt": "gaal",
}
FORMATS = (".png", ".pdf", ".svg")
HEAD_LABELS = {"multi": "Multi", "image": "Image", "tabular": "Tabular"}


def _figure(n_panels: int, width: float = 4.5, height: float = 3.6):
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    plt.rcParams.update(STYLE)
    fig, axes = plt.subplots(1, n_panels, figsize=(width * n_panels, height), squeeze=False)
    return fig, list(axes[0])


def _save(fig, path: Path) -> Path:
    """Write the figure as PNG (for report.md), PDF and SVG (for a paper); returns the PNG."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    for suffix in FORMATS:
        # no creation date in the vector files (and salted SVG ids, see STYLE), so a rebuilt
        # report over the same runs is byte-identical
        metadata = {"Date": None} if suffix == ".svg" else {"CreationDate": None} if suffix == ".pdf" else None
        options = {"format": suffix[1:], "dpi": 200, "metadata": metadata}
        write_file(path.with_suffix(suffix), lambda fh: fig.savefig(fh, **options), sync=False)
    plt.close(fig)
    return path.with_suffix(".png")


def seeds_caption(counts, bars: str = "error bars") -> str:
    """'mean ± std over 3 seeds' (or a range of counts); one seed has no `bars` to explain."""
    n = sorted({int(c) for c in counts})
    if n == [1]:
        return f"1 seed (no {bars})"
    return f"{bars}: mean ± std over {n[0]}{'' if len(n) == 1 else f'-{n[-1]}'} seeds"


def conflict_figure(runs: pd.DataFrame, path: Path) -> Path | None:
    """Fig. 1a: histogram of cos(image-loss gradient, multimodal gradient) of the image encoder
    over the steps of joint training (concat with `grad_cosine: true`)."""
    values: dict[str, list[float]] = {}
    for row in runs[runs["method"] == "concat"].itertuples():
        # a NaN cosine is written as null (strict JSON): it is no step of the histogram
        steps = RunFolder(row.folder).iter_steps()
        cosines = [s["cos_image"] for s in steps if isinstance(s.get("cos_image"), int | float)]
        values.setdefault(row.dataset, []).extend(cosines)
    values = {d: v for d, v in values.items() if v}
    if not values:
        return None
    fig, axes = _figure(len(values))
    for ax, d in zip(axes, dataset_order(values)):
        v = np.asarray(values[d])
        ax.hist(v, bins=np.linspace(-1, 1, 41), color="tab:blue", alpha=0.8)
        ax.set_xlim(-1, 1)
        ax.axvline(0, color="black", lw=1)
        ax.set_title(
            f"{dataset_label(d)}\nCF image-encoder gradient cosine: {np.mean(v < 0):.0%} of {len(v)} steps < 0"
        )
        ax.set_xlabel(r"$\cos(g_I^{\mathrm{image}},\ g_I^{\mathrm{multi}})$")
        ax.set_ylabel("training steps")
    return _save(fig, path)


def lambda_figure(summary: pd.DataFrame, path: Path) -> Path:
    """Fig. 3: mean multimodal test accuracy over the λ_I x λ_T grid, one panel per dataset."""
    datasets = dataset_order(summary["dataset"].unique())
    fig, axes = _figure(len(datasets))
    for ax, d in zip(axes, datasets):
        part = summary[summary["dataset"] == d]
        grid = part.pivot_table(index=LAMBDA_KEYS[0], columns=LAMBDA_KEYS[1], values="multi_mean")
        image = ax.imshow(grid.values, origin="lower", cmap="viridis")
        ax.set_xticks(range(len(grid.columns)), [format_value(v) for v in grid.columns])
        ax.set_yticks(range(len(grid.index)), [format_value(v) for v in grid.index])
        middle = np.nanmean([np.nanmin(grid.values), np.nanmax(grid.values)])
        for (i, j), value in np.ndenumerate(grid.values):
            colour = "white" if value < middle else "black"  # readable on viridis' dark and light ends
            ax.text(j, i, f"{value:.3f}", ha="center", va="center", color=colour, fontsize=8)
        ax.set_xlabel(r"$\lambda_T$ (tabular guidance fraction)")
        ax.set_ylabel(r"$\lambda_I$ (image guidance fraction)")
        n = sorted({int(c) for c in part["n"]})
        seeds = f"{n[0]} seed{'s' if n[-1] > 1 else ''}" if len(n) == 1 else f"{n[0]}-{n[-1]} seeds"
        ax.set_title(f"{dataset_label(d)}: test Multi accuracy\n(mean over {seeds})")
        fig.colorbar(image, ax=ax, label="test Multi accuracy")
    return _save(fig, path)


def curves_figure(runs: pd.DataFrame, path: Path) -> Path | None:
    """Fig. 4: GAAL's per-modality training losses per epoch, mean ± std over seeds."""
    frames = []
    for row in runs[runs["method"] == "gaal"].itertuples():
        for record in RunFolder(row.folder).iter_metrics():
            train = record.get("train")
            if isinstance(train, dict) and "loss_image" in train and "loss_tabular" in train:
                frames.append((row.dataset, row.seed, record["epoch"], train["loss_image"], train["loss_tabular"]))
    if not frames:
        return None
    curves = pd.DataFrame(frames, columns=["dataset", "seed", "epoch", "loss_image", "loss_tabular"])
    datasets = dataset_order(curves["dataset"].unique())
    fig, axes = _figure(len(datasets))
    captions = []
    for ax, d in zip(axes, datasets):
        part = curves[curves["dataset"] == d]
        stats = part.groupby("epoch")[["loss_image", "loss_tabular"]].agg(["mean", "std"])
        for modality in MODALITIES:  # each in the colour and marker of its unimodal method
            look = style(modality)
            mean, std = stats[(f"loss_{modality}", "mean")], stats[(f"loss_{modality}", "std")].fillna(0)
            ax.plot(stats.index, mean, ms=3, label=modality, **look)
            ax.fill_between(stats.index, mean - std, mean + std, color=look["color"], alpha=0.2)
        ax.set_xlabel("epoch")
        ax.set_ylabel("training cross-entropy")
        ax.set_title(f"{dataset_label(d)}: GAAL training loss per modality")
        captions.append(seeds_caption(part.groupby("epoch")["seed"].nunique(), bars="band"))
    legend_beside(fig, axes, captions)
    return _save(fig, path)


def legend_beside(fig, axes, captions: list[str], order: list[str] | None = None) -> None:
    """One legend for side-by-side panels, right of the last one (a legend beside each panel
    would sit on its neighbour), titled with the seeds caption when the panels share it, else
    each panel's caption under its title."""
    shared = len(set(captions)) == 1
    if not shared:
        for ax, caption in zip(axes, captions):
            ax.set_title(f"{ax.get_title()}\n{caption}")
    legend_outside(fig, axes=list(axes), order=order, title=captions[0] if shared else None)


def _epsilon_axis(ax, eps: np.ndarray) -> None:
    """ε on a scale that shows every point: symlog when the values span zero (or reach it) and
    more than a decade, log when all are positive over decades, else linear."""
    nonzero = np.abs(eps[eps != 0])
    if len(nonzero) == 0:
        return
    decades = nonzero.max() / nonzero.min() >= 10
    if decades and (eps <= 0).any():
        ax.set_xscale("symlog", linthresh=float(nonzero.min()))
    elif decades:
        ax.set_xscale("log")
    ax.set_xticks(eps, [format_value(e) for e in eps])
    ax.minorticks_off()


def epsilon_figure(summary: pd.DataFrame, path: Path) -> Path:
    """Fig. 5: test accuracy of each head against ε, mean ± std over seeds."""
    datasets = dataset_order(summary["dataset"].unique())
    fig, axes = _figure(len(datasets))
    captions = []
    for ax, d in zip(axes, datasets):
        part = summary[summary["dataset"] == d].sort_values(EPSILON_KEY)
        for head in HEADS:  # GAAL's fused head in GAAL's style, each unimodal head in its modality's
            ax.errorbar(
                part[EPSILON_KEY], part[f"{head}_mean"], yerr=part[f"{head}_std"].fillna(0), capsize=3,
                label=HEAD_LABELS[head], **style("gaal" if head == "multi" else head),
            )  # fmt: skip
        _epsilon_axis(ax, part[EPSILON_KEY].to_numpy(dtype=float))
        ax.set_xlabel(r"alignment margin $\varepsilon$")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{dataset_label(d)}: GAAL test accuracy vs " + r"$\varepsilon$")
        captions.append(seeds_caption(part["n"]))
    legend_beside(fig, axes, captions)
    return _save(fig, path)


def regime_figure(summary: pd.DataFrame, path: Path) -> Path:
    """Each method's Multi and Image test accuracy against the dominance knob, one row of two
    panels per dataset (regime), mean ± std over seeds; unimodal methods appear in the panel
    of the head they have. Each method in its own style (gaal_cli/styles.py), as in every figure."""
    datasets = dataset_order(summary["dataset"].unique())
    methods = [m for m in METHOD_ORDER if m in set(summary["method"])]
    methods += sorted(set(summary["method"]) - set(methods))
    fig, axes = _figure(2 * len(datasets), width=5.5, height=3.8)
    grid = [axes[i : i + 2] for i in range(0, len(axes), 2)]
    captions = []
    for row, d in zip(grid, datasets):
        part = summary[summary["dataset"] == d]
        for ax, head in zip(row, ("multi", "image")):
            for method in methods:
                line = part[part["method"] == method].sort_values(DOMINANCE_KEY)
                if line[f"{head}_mean"].isna().all():
                    continue
                ax.errorbar(
                    line[DOMINANCE_KEY], line[f"{head}_mean"], yerr=line[f"{head}_std"].fillna(0),
                    ms=4, capsize=2, label=method, **style(method),
                )  # fmt: skip
            ax.set_xlabel("dominance (0: balanced, 1: calibrated to DVM)")
            ax.set_ylabel(f"test {HEAD_LABELS[head]} accuracy")
            ax.set_title(f"{dataset_label(d)}\ntest {HEAD_LABELS[head]} accuracy vs dominance")
        captions += [seeds_caption(part["n"])] * len(row)
    # one legend for every panel: the tabular-only model has no Image accuracy to draw
    legend_beside(fig, axes, captions, order=methods)
    return _save(fig, path)


# ---------------------------------------------------------------- the whole report


#: where a report is built before its files replace the old ones together
STAGING = ".staging"


def write_report(
    root: Path | Sequence[Path], out: Path, *, reference: str = REFERENCE, resamples: int = stats.RESAMPLES
) -> list[Path]:
    """Write runs.csv, one Markdown + CSV table per table kind with its modality diagnostics and
    paired differences, the figures (PNG, PDF, SVG) and report.md.

    Args:
        root: a folder of finished runs, or several (e.g. results/synthetic and results/ham10000:
            their Table I runs form one table, and the ranks across its datasets a CD diagram).
        reference: the method every row is compared with (`paired_markdown`).
        resamples: the paired bootstrap's resamples.

    Every file is built first in `out/.staging`, then all are renamed into `out` at once with
    SIGTERM and Ctrl-C held back, so a stopped report leaves the old files all in place, never
    new ones beside old ones. `out` is locked like a run folder (gaal_cli.locks) meanwhile.

    Returns:
        The files written.

    Raises:
        GaalError: no finished runs, two runs filling the same table cell, another process
            writing `out`, or a file that cannot be written (names it and why).
    """
    roots = [Path(root)] if isinstance(root, str | Path) else [Path(r) for r in root]
    runs = pd.concat([load_runs(r) for r in roots], ignore_index=True) if len(roots) > 1 else load_runs(roots[0])
    with folder_lock(out, "gaal report"):
        staging = out / STAGING
        remove_tree(staging)  # what a killed report left
        try:
            try:
                built = build_report(
                    runs, roots, make_folder(staging), reference=reference, resamples=resamples
                )
            except GaalError as err:  # name the file the user asked for, not its staging copy
                source = (err.source or "").replace(str(staging), str(out))
                raise GaalError(err.message, source=source or None, field=err.field) from None
            with signals_held():
                for file in built:
                    try:
                        os.replace(file, out / file.name)
                    except OSError as err:
                        raise os_error(err, out / file.name) from None
        finally:
            remove_tree(staging)
    return [out / file.name for file in built]


def build_report(
    runs: pd.DataFrame,
    root: Path | Sequence[Path],
    out: Path,
    *,
    reference: str = REFERENCE,
    resamples: int = stats.RESAMPLES,
) -> list[Path]:
    """Write every file of the report on `runs` into the folder `out`; returns them."""
    written = [out / "runs.csv"]
    write_file(written[0], runs.sort_values(["experiment", "folder"]).to_csv(index=False), sync=False)
    where = str(root) if isinstance(root, str | Path) else ", ".join(map(str, root))
    sections = [
        f"# Results under {where}\n\n{len(runs)} finished runs; test metrics, mean ± std over seeds "
        f"[95 % interval]; each row against the '{reference}' row as a paired difference.\n"
    ]
    for kind, (part, rows) in tables(runs).items():
        summary = summarize(part, rows)
        write_file(out / f"{kind}.csv", summary.to_csv(index=False), sync=False)
        table = markdown(summary, rows) + "\n" + paired_markdown(part, rows, "acc", reference, resamples)
        write_file(out / f"{kind}.md", table, sync=False)
        others = []
        for metric, name in list(METRICS.items())[1:]:
            other = markdown(summary, rows, metric)
            if metric in compare.PAIRED_METRICS:
                other += "\n" + paired_markdown(part, rows, metric, reference, resamples)
            write_file(out / f"{kind}_{metric}.md", other, sync=False)
            written.append(out / f"{kind}_{metric}.md")
            others.append(f"### Test {name}\n\n{other}")
        diagnostics = diagnostics_markdown(summarize_diagnostics(part, rows), rows)
        write_file(out / f"{kind}_diagnostics.md", diagnostics, sync=False)
        written += [out / f"{kind}.csv", out / f"{kind}.md", out / f"{kind}_diagnostics.md"]
        experiments = ", ".join(sorted(part["experiment"].unique()))
        sections.append(
            f"## {kind} ({experiments})\n\nTest accuracy.\n\n{table}\n"
            + "\n".join(others)
            + f"\n### Modality diagnostics\n\n{diagnostics}"
        )
        ranks, cd_files = ranks_markdown(summary, rows, kind, out)
        if ranks:
            written += cd_files
            sections.append(f"### Across conditions\n\n{ranks}\n![cd_{kind}](cd_{kind}.png)\n")
        figure = None
        if set(rows) == set(LAMBDA_KEYS):
            figure = lambda_figure(summary, out / f"fig3_{kind}.png")
        elif rows == [EPSILON_KEY]:
            figure = epsilon_figure(summary, out / f"fig5_{kind}.png")
        elif set(rows) == {"method", DOMINANCE_KEY}:
            figure = regime_figure(summary, out / f"regime_{kind}.png")
        if figure:
            written += [figure.with_suffix(s) for s in FORMATS]
            sections.append(f"![{figure.stem}]({figure.name})\n")
    for figure, title in (
        (conflict_figure(runs, out / "fig1a_conflict.png"), "Fig. 1a: gradient conflict under joint training"),
        (curves_figure(runs[runs["experiment"].map(_is_table1(runs))], out / "fig4_curves.png"), "Fig. 4: GAAL"),
    ):
        if figure:
            written += [figure.with_suffix(s) for s in FORMATS]
            sections.append(f"## {title}\n\n![{figure.stem}]({figure.name})\n")
    health = health_markdown(runs)
    write_file(out / "health.md", health, sync=False)
    sections.append(f"## Run health\n\n{health}")
    write_file(out / "report.md", "\n".join(sections), sync=False)
    return [*written, out / "health.md", out / "report.md"]


def _is_table1(runs: pd.DataFrame) -> dict[str, bool]:
    """Which experiments compare methods at their default settings (Fig. 4 uses their GAAL runs)."""
    return {e: table_kind(part, row_keys(part), str(e)) == "table1" for e, part in runs.groupby("experiment")}
