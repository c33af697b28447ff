"""`gaal report`: tables and figures from finished run folders, built in the order report.md
reads. Table I / II style tables, each with its paired differences against a reference row, its
other test metrics, its modality diagnostics, the ranks across its conditions and its figure
(Figs. 3, 5, a regime sweep's); then Figs. 1a and 4; then run health. The parts: collect.py
(runs read and grouped), tables.py, paired.py, ranks.py, health_marks.py and figures.py.

This lives apart from gaal_cli/runs/folder.py, which holds the run-folder layout and is imported by
every training run: training should not load pandas and matplotlib.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from gaal_cli.analysis import compare
from gaal_cli.analysis.collect import (
    DOMINANCE_KEY,
    EPSILON_KEY,
    LAMBDA_KEYS,
    METRICS,
    dataset_label,
    dataset_order,
    load_runs,
    row_keys,
    short_dataset_names,
    table_kind,
    tables,
)
from gaal_cli.analysis.figures import (
    FORMATS,
    conflict_figure,
    confusion_panels,
    curves_figure,
    epsilon_figure,
    lambda_figure,
    methods_figure,
    regime_figure,
    sweep_figure,
)
from gaal_cli.analysis.health_marks import BELOW, below_one_modality, health_markdown
from gaal_cli.analysis.paired import REFERENCE, paired_markdown
from gaal_cli.analysis.provenance_groups import legend as provenance_legend
from gaal_cli.analysis.provenance_groups import several, with_groups
from gaal_cli.analysis.ranks import ranks_markdown
from gaal_cli.analysis.tables import diagnostics_markdown, markdown, summarize, summarize_diagnostics
from gaal_cli.foundation.display import markdown_text
from gaal_cli.foundation.errors import GaalError
from gaal_cli.foundation.files import os_error, own_folder, remove_tree, signals_held, write_file
from gaal_cli.foundation.locks import folder_lock
from gaal_cli.runs.folder import RunFolder
from gaal_cli.runs.predictions_file import read_predictions

#: where a report is built before its files replace the old ones together
STAGING = ".staging"


def write_report(root: Path | Sequence[Path], out: Path, *, reference: str = REFERENCE) -> list[Path]:
    """Write runs.csv, one Markdown + CSV table per table kind with its modality diagnostics and
    paired differences, the figures (PNG, PDF, SVG) and report.md.

    Args:
        root: a folder of finished runs, or several (e.g. results/synthetic and results/ham10000:
            their Table I runs form one table, and the ranks across its datasets a CD diagram).
        reference: the method every row is compared with (`paired_markdown`).

    Every file is built first in `out/.staging`, then all are renamed into `out` at once with
    SIGTERM and Ctrl-C held back, so a stopped report leaves the old files all in place, never
    new ones beside old ones. `out` is locked like a run folder (gaal_cli.foundation.locks) meanwhile.

    Returns:
        The files written.

    Raises:
        GaalError: no finished runs, two runs filling the same table cell, another process
            writing `out`, or a file that cannot be written (names it and why).
    """
    roots = [Path(root)] if isinstance(root, str | Path) else [Path(r) for r in root]
    runs = pd.concat([load_runs(r) for r in roots], ignore_index=True) if len(roots) > 1 else load_runs(roots[0])
    runs = short_dataset_names(runs)
    with folder_lock(out, "gaal report"):
        staging = out / STAGING
        remove_tree(staging)  # what a killed report left
        try:
            try:
                built = build_report(runs, roots, own_folder(staging), reference=reference)
            except GaalError as err:  # name the file the user asked for, not its staging copy
                source = (err.source or "").replace(str(staging), str(out))
                raise GaalError(err.message, source=source or None, field=err.field) from None
            refuse_duplicates(built, out)
            with signals_held():
                for file in built:
                    try:
                        os.replace(file, out / file.name)
                    except OSError as err:
                        raise os_error(err, out / file.name) from None
        finally:
            remove_tree(staging)
    return [out / file.name for file in built]


def refuse_duplicates(built: list[Path], out: Path) -> None:
    """Two parts of a report under one file name would leave one of them lost and `out` half
    replaced: refused before anything is moved.

    Raises:
        GaalError: names the file.
    """
    names = [file.name for file in built]
    twice = next((name for name in names if names.count(name) > 1), None)
    if twice is not None:
        raise GaalError("two parts of the report would be written to this one file", source=str(out / twice))


def build_report(
    runs: pd.DataFrame, root: Path | Sequence[Path], out: Path, *, reference: str = REFERENCE
) -> list[Path]:
    """Write every file of the report on `runs` into the folder `out`, in the order report.md
    reads: runs.csv and the heading, each table's section, the figures across tables, run health;
    returns the files."""
    runs = with_modality_check(runs)
    written = [out / "runs.csv"]
    write_file(written[0], runs.sort_values(["experiment", "folder"]).to_csv(index=False), sync=False)
    sections = [heading(runs, root, reference)]
    for kind, (part, rows) in tables(runs).items():
        texts, files = table_sections(kind, part, rows, out, reference)
        sections += texts
        written += files
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


def with_modality_check(runs: pd.DataFrame) -> pd.DataFrame:
    """`runs` with the heads each run has below the one-modality model of its table (`below_one_modality`)."""
    below = pd.concat([below_one_modality(part, rows) for part, rows in tables(runs).values()])
    return runs.assign(**{f"{BELOW}_heads": runs["folder"].map(below).fillna("")})


def heading(runs: pd.DataFrame, root: Path | Sequence[Path], reference: str) -> str:
    where = markdown_text(root) if isinstance(root, str | Path) else ", ".join(map(markdown_text, root))
    return (
        f"# Results under {where}\n\n{len(runs)} finished runs; test metrics, mean ± std over seeds "
        f"[95 % interval]; each row against the '{reference}' row as a paired difference.\n"
    )


def table_sections(
    kind: str, runs: pd.DataFrame, rows: list[str], out: Path, reference: str
) -> tuple[list[str], list[Path]]:
    """One table's files and its sections of report.md, in their order: the accuracy table with its
    paired differences, the other test metrics, the modality diagnostics, the ranks across its
    conditions and its figure."""
    runs = with_groups(runs)
    summary = summarize(runs, rows)
    write_file(out / f"{kind}.csv", summary.to_csv(index=False), sync=False)
    origin = provenance_legend(runs) + "\n"
    table = markdown(summary, rows) + "\n" + paired_markdown(runs, rows, "acc", reference) + "\n" + origin
    write_file(out / f"{kind}.md", table, sync=False)
    written, others = [], []
    for metric, name in list(METRICS.items())[1:]:
        other = markdown(summary, rows, metric)
        if metric in compare.PAIRED_METRICS:
            other += "\n" + paired_markdown(runs, rows, metric, reference)
        write_file(out / f"{kind}_{metric}.md", other, sync=False)
        written.append(out / f"{kind}_{metric}.md")
        others.append(f"### Test {name}\n\n{other}")
    diagnostics = diagnostics_markdown(summarize_diagnostics(runs, rows), rows)
    write_file(out / f"{kind}_diagnostics.md", diagnostics, sync=False)
    written += [out / f"{kind}.csv", out / f"{kind}.md", out / f"{kind}_diagnostics.md"]
    experiments = ", ".join(map(markdown_text, sorted(runs["experiment"].unique())))
    sections = [
        f"## {kind} ({experiments})\n\nTest accuracy.\n\n{table}\n"
        + "\n".join(others)
        + f"\n### Modality diagnostics\n\n{diagnostics}"
    ]
    ranks, cd_files = ranks_markdown(summary, rows, kind, out)
    if ranks:
        written += cd_files
        mixed = "\nThe ranks take rows of several provenance groups (named under the table above).\n"
        sections.append(f"### Across conditions\n\n{ranks}" + (mixed if several(runs) else ""))
    figure = table_figure(summary, rows, kind, out)
    if figure:
        written += [figure.with_suffix(s) for s in FORMATS]
        sections.append(f"![{figure.stem}]({figure.name})\n")
    confusion = (
        confusion_panels(best_confusions(runs, summary), out / f"confusion_{kind}.png") if rows == ["method"] else None
    )
    if confusion:
        written += [confusion.with_suffix(s) for s in FORMATS]
        sections.append(
            "Confusion matrix of each dataset's best row on Multi test accuracy (its seeds' test predictions "
            f"pooled; rows: true class):\n\n![{confusion.stem}]({confusion.name})\n"
        )
    return sections, written


def best_confusions(runs: pd.DataFrame, summary: pd.DataFrame) -> list[tuple[str, list[list[int]], list[str]]]:
    """Per dataset, the confusion matrix of the row with the best mean Multi test accuracy (of its
    one head for a unimodal row), pooled over its seeds' predictions files; a dataset none of whose
    best row's runs kept one is left out."""
    panels = []
    for d in dataset_order(summary["dataset"].unique()):
        part = summary[summary["dataset"] == d]
        scores = part["multi_mean"].fillna(part[["image_mean", "tabular_mean"]].max(axis=1))
        if scores.isna().all():
            continue
        method = part.loc[scores.idxmax(), "method"]
        pooled, names, seeds = None, [], 0
        for folder in runs[(runs["dataset"] == d) & (runs["method"] == method)]["folder"]:
            found = run_confusion(RunFolder(folder))
            if found is None:
                continue
            matrix, names = found
            pooled = matrix if pooled is None else pooled + matrix
            seeds += 1
        if pooled is not None:
            title = f"{dataset_label(d)}: {method}, {seeds} seed{'s' * (seeds > 1)} pooled"
            panels.append((title, pooled.tolist(), names))
    return panels


def run_confusion(run: RunFolder):
    """A run's test confusion matrix from its predictions file (its fused head, else its one head) and
    its class names; None when it kept no readable file."""
    try:
        predictions = read_predictions(run.file(RunFolder.PREDICTIONS))
        head = "multi" if "multi" in predictions.heads else predictions.heads[0]
        predicted = predictions.predicted(head)
    except (GaalError, IndexError):
        return None
    n = int(predictions.logits(head).shape[1])
    names = run.read_report().get("data", {}).get("class_names")
    names = [str(c) for c in names] if isinstance(names, list) and len(names) == n else [str(i) for i in range(n)]
    labels = predictions.labels.astype(np.int64)
    return np.bincount(labels * n + predicted, minlength=n * n).reshape(n, n), names


def table_figure(summary: pd.DataFrame, rows: list[str], kind: str, out: Path) -> Path | None:
    """The figure a table's rows call for: Fig. 3 over the λ grid, Fig. 5 over ε, accuracy against
    dominance over a regime sweep, each method's accuracy with its interval for a table of methods,
    each head's accuracy against the setting of any other one-dimensional sweep; None otherwise."""
    if set(rows) == set(LAMBDA_KEYS):
        return lambda_figure(summary, out / f"fig3_{kind}.png")
    if rows == [EPSILON_KEY]:
        return epsilon_figure(summary, out / f"fig5_{kind}.png")
    if set(rows) == {"method", DOMINANCE_KEY}:
        return regime_figure(summary, out / f"regime_{kind}.png")
    if rows == ["method"]:
        return methods_figure(summary, out / f"methods_{kind}.png")
    if len(rows) == 1:
        return sweep_figure(summary, rows[0], out / f"sweep_{kind}.png")
    return None


def _is_table1(runs: pd.DataFrame) -> dict[str, bool]:
    """Which experiments compare methods at their default settings (Fig. 4 uses their GAAL runs)."""
    return {e: table_kind(part, row_keys(part), str(e)) == "table1" for e, part in runs.groupby("experiment")}
