"""The report's rows: every finished run under a folder read into one row (its settings, test
metrics, timings, modality diagnostics and health), and those rows grouped into tables.

Every number comes from the runs' own files: test metrics and seconds per epoch from report.json,
the settings from config.yaml, the gradient cosines from steps.jsonl. A table's rows are the
settings that vary among the runs of an experiment on one dataset (the sweep's axes, read back
from the configs, so hand-run folders work too). Experiments whose rows are the method alone form
Table I, those varying GAAL's `cgs` / `ugg` switches Table II; any other experiment gets its own
table. A synthetic regime other than the default counts as a dataset of its own
(`synthetic-table_dominant`). Also here: the order and labels of rows, datasets and heads that
every table and figure shares.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gaal_cli.analysis.provenance_groups import provenance_columns
from gaal_cli.config import read_yaml_file
from gaal_cli.data.recipes import TABLE_SUFFIXES
from gaal_cli.foundation.errors import GaalError
from gaal_cli.foundation.names import file_stem
from gaal_cli.methods.registry import all_methods, method_names, method_spec
from gaal_cli.runs.folder import RunFolder, finished_runs
from gaal_cli.runs.predictions_file import read_predictions
from gaal_cli.sweeps.runner import WHERE_KEYS
from gaal_cli.training.contributions import MODALITIES, negative_rate, run_shapley
from gaal_cli.training.health import affected_heads, folder_health, printed_heads

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


HEAD_LABELS = {"multi": "Multi", "image": "Image", "tabular": "Tabular"}


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


# the report's own file stems (runs.csv, report.md, health.md) and its table kinds: an experiment
# of one of these names gets a stem of its own, never the same file
REPORT_STEMS = ("runs", "report", "health", "table1", "table2")


# config keys that never define a row: identity, the dataset (the columns) and where a run trained
# (a modality absent at test names a row by its star instead: see method_label)
NOT_ROWS = {"name", "seed", "data.name", "data.test_missing", *WHERE_KEYS}


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
    from gaal_cli.foundation.display import console, styled

    records = []
    for run in finished_runs(root):
        try:
            records.append((run, *read_records(run)))
        except GaalError as err:
            message = styled("warning:", "yellow", f" skipped a broken run folder: {err.render()}")
            console.print(message, highlight=False, soft_wrap=True)
    counts = known_test_counts(records)
    rows = []
    for run, report, tree in records:
        try:
            rows.append(run_row(run, report, tree, counts))
        except GaalError as err:
            message = styled("warning:", "yellow", f" skipped a broken run folder: {err.render()}")
            console.print(message, highlight=False, soft_wrap=True)
    if not rows:
        raise GaalError("no finished runs (folders with DONE and report.json) under it", source=str(root))
    for row in rows:
        if row["null_metrics"]:
            note = f" {row['folder']}: test {row['null_metrics']} reported as null (NaN); left out of the means"
            console.print(styled("warning:", "yellow", note), highlight=False, soft_wrap=True)
    return add_unimodal_gaps(pd.DataFrame(rows))


def read_records(run: RunFolder) -> tuple[dict[str, Any], dict[str, Any]]:
    """A finished run's report.json and config.yaml, read.

    Raises:
        GaalError: either unreadable, or the config not a mapping.
    """
    report = run.read_report()
    tree = read_yaml_file(run.file(RunFolder.CONFIG))
    if not isinstance(tree, dict):
        got = type(tree).__name__
        raise GaalError(f"expected a mapping of settings, got {got}", source=str(run.file(RunFolder.CONFIG)))
    return report, tree


def run_row(
    run: RunFolder, report: dict[str, Any], tree: dict[str, Any], test_counts: dict[tuple, list[int]] | None = None
) -> dict[str, Any]:
    """A finished run's settings, test accuracies, timings, diagnostics and health, from its
    records (`read_records`).

    Args:
        test_counts: test class counts by `data_identity`, for runs whose report.json lacks them.

    Raises:
        GaalError: missing what a table needs.
    """
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
            "null_metrics": null_metrics(test),
            "sec_per_epoch": _number(report["timings"]["seconds_per_epoch"]),
            "epochs": report["epochs_run"],
            **run_diagnostics(run, report),
            **run_health(run, report, tree, (test_counts or {}).get(data_identity(report, tree))),
            **provenance_columns(report),
            "folder": str(run.path),
        }
    except (KeyError, TypeError, AttributeError) as err:
        raise GaalError(f"lacks what a table needs ({type(err).__name__}: {err})", source=str(run.path)) from None


def null_metrics(test: dict[str, Any]) -> str:
    """The tabulated test metrics a run reported as null (a NaN: a diverged run), as `head.metric`
    names separated by spaces: they are left out of means, and the tables say how many seeds remain."""
    return " ".join(
        f"{head}.{metric}"
        for head in HEADS
        for metric in METRICS
        if isinstance(test.get(head), dict) and metric in test[head] and np.isnan(_number(test[head][metric]))
    )


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


def dataset_key(name: str, config: dict[str, Any]) -> str:
    """The dataset a run's numbers belong to: a synthetic regime other than the default is a
    dataset of its own (its own columns, panels and Table II), so `synthetic-table_dominant`."""
    regime = config.get("data.synthetic.regime")
    if name == "synthetic" and isinstance(regime, str) and regime != "complementary":
        return f"synthetic-{regime}"
    return name


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


def data_identity(report: dict[str, Any], tree: Any) -> tuple:
    """What fixes a run's test split: the dataset, the seed, the recipe that prepared it, the split
    sizes and the embedded set's generator settings. Runs with the same identity share their test
    labels (so one run's class counts serve another's health)."""
    data = report.get("data") or {}
    synthetic = (tree.get("data") or {}).get("synthetic") if isinstance(tree, dict) else None
    return (
        report.get("dataset"),
        report.get("seed"),
        json.dumps(data.get("recipe"), sort_keys=True, default=str),
        json.dumps(data.get("counts"), sort_keys=True, default=str),
        json.dumps(synthetic if report.get("dataset") == "synthetic" else None, sort_keys=True, default=str),
    )


def known_test_counts(records: list[tuple[RunFolder, dict, dict]]) -> dict[tuple, list[int]]:
    """Test class counts by `data_identity`, from every run that recorded them (report.json's
    data.class_counts.test, else its predictions file's labels)."""
    out: dict[tuple, list[int]] = {}
    for run, report, tree in records:
        try:
            key = data_identity(report, tree)
            if key in out:
                continue
            counts = ((report.get("data") or {}).get("class_counts") or {}).get("test")
            if counts is None and run.file(RunFolder.PREDICTIONS).is_file():
                file = read_predictions(run.file(RunFolder.PREDICTIONS))
                counts = np.bincount(file.labels, minlength=file.n_classes).tolist()
        except (GaalError, AttributeError, TypeError):
            continue
        if isinstance(counts, list) and counts and all(isinstance(c, int) for c in counts):
            out[key] = counts
    return out


def run_health(run: RunFolder, report: dict[str, Any], tree: Any, test_counts: list[int] | None) -> dict[str, str]:
    """runs.csv's health columns, from the run's records (gaal_cli/training/health.py): `health`, the
    names of its findings (space-separated; empty when healthy); `health_<column>`, those that
    concern each number a table prints (a head's test metric, named as its column: `health_multi`,
    `health_image_bal_acc`); `health_notes`, the milder notes (a stalled pretraining); and
    `health_unchecked`, the checks its records did not allow."""
    try:
        health = folder_health(run, report, tree if isinstance(tree, dict) else {}, test_counts=test_counts)
    except (KeyError, TypeError, AttributeError, ValueError) as err:
        return {"health": "", "health_unchecked": f"all (its records do not read as expected: {type(err).__name__})"}
    heads = printed_heads(report)
    return {
        "health": " ".join(sorted({f["name"] for f in health.findings})),
        **{
            f"health_{column(h, m)}": " ".join(
                sorted({f["name"] for f in health.findings if h in affected_heads(f, heads, m)})
            )
            for h in HEADS
            for m in METRICS
        },
        "health_notes": " ".join(sorted({f["name"] for f in health.notes})),
        "health_unchecked": " ".join(sorted(health.unchecked)),
    }


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
    return file_stem(experiment.replace("/", "_"), REPORT_STEMS)


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
            kind = file_stem(str(experiment).replace("/", "_"), REPORT_STEMS)
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


def dataset_label(key: str) -> str:
    if key.startswith("synthetic-"):
        return f"synthetic, {key.removeprefix('synthetic-').replace('_', '-')}"
    return DATASET_LABELS.get(key, key)


def short_dataset_names(runs: pd.DataFrame) -> pd.DataFrame:
    """`runs` with each table's runs labelled by the table's stem (`houses`) rather than its path, so a
    report's columns and panel titles stay short; two tables of one stem by their folder as well
    (`train (clinic)`), and by a hash of their path when that is not enough. The path stays in
    the `data.name` column."""
    if runs.empty:
        return runs
    tables = sorted({str(d) for d in runs["dataset"].unique() if str(d).lower().endswith(TABLE_SUFFIXES)})
    labels = {path: Path(path).stem for path in tables}
    for stem in {s for s in labels.values() if list(labels.values()).count(s) > 1}:
        same = [p for p in tables if labels[p] == stem]
        for path in same:
            labels[path] = f"{stem} ({Path(path).parent.name or '.'})"
        if len({labels[p] for p in same}) < len(same):
            for path in same:
                labels[path] = f"{stem} ({hashlib.sha256(path.encode()).hexdigest()[:8]})"
    known = set(runs["dataset"].unique()) - set(tables)
    labels = {path: (label if label not in known else f"{label} (table)") for path, label in labels.items()}
    return runs.assign(dataset=runs["dataset"].map(lambda d: labels.get(str(d), d)))
