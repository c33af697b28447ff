"""Tables and figures from finished run folders: Table I / II style tables, Figs. 1a, 3, 4, 5.

Every number comes from the runs' own files: test accuracy and seconds per epoch from
report.json, the settings from config.yaml, the curves from metrics.jsonl and the gradient
cosines from steps.jsonl. A table's rows are the settings that vary among the runs of an
experiment on one dataset (the sweep's axes, read back from the configs, so hand-run folders
work too); its columns are Multi / Image / Tabular per dataset, mean ± std over seeds.
Experiments whose rows are the method alone form Table I, those varying GAAL's `cgs` / `ugg`
switches Table II; any other experiment gets its own table. A run that reads one modality at
test (report.json `inputs_at_test`: the unimodal rows, and the test-time tabular-missing methods
such as KD and FMR) has no multimodal prediction: its accuracy goes in that modality's column
and its Multi cell stays empty, as in the paper's Table I.

This lives apart from results.py, which holds the run-folder layout and is imported by every
training run: training should not load pandas and matplotlib, and the layout should stay
readable on its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from gaal_cli.errors import GaalError
from gaal_cli.results import RunFolder, finished_runs
from gaal_cli.sweep import WHERE_KEYS, format_value

HEADS = ("multi", "image", "tabular")
METHOD_ORDER = (
    "image", "tabular", "concat", "max", "daft", "ogm_ge", "mmpareto", "mla",
    "di_mml", "reconboost", "lfm", "igm", "dgl", "arl", "gaal", "kd", "fmr",
)  # fmt: skip
DATASET_LABELS = {"dvm": "DVM", "sun": "SUNAttribute", "celeba": "CelebA", "synthetic": "synthetic"}
ABLATION_KEYS = ("methods.gaal.cgs", "methods.gaal.ugg")
LAMBDA_KEYS = ("methods.gaal.lambda_image", "methods.gaal.lambda_tabular")
EPSILON_KEY = "methods.gaal.epsilon"
# config keys that never define a row: identity, the dataset (the columns) and where a run trained
NOT_ROWS = {"name", "seed", "data.name", *WHERE_KEYS}


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
    """One row per finished run under `root`: its settings, test accuracies and timings.

    Raises:
        GaalError: no finished run there.
    """
    rows = []
    for run in finished_runs(root):
        report = run.read_report()
        test = dict(report["metrics"]["test"])
        if len(report.get("inputs_at_test", ("image", "tabular"))) == 1:
            test.pop("multi", None)  # the one-modality prediction is reported under its modality
        rows.append(
            {
                **flatten(yaml.safe_load(run.file(RunFolder.CONFIG).read_text())),
                "experiment": report["experiment"],
                "dataset": report["dataset"],
                "method": report["method"],
                "seed": report["seed"],
                **{head: test[head]["acc"] if head in test else np.nan for head in HEADS},
                "sec_per_epoch": report["timings"]["seconds_per_epoch"],
                "epochs": report["epochs_run"],
                "folder": str(run.path),
            }
        )
    if not rows:
        raise GaalError("no finished runs (folders with DONE and report.json) under it", source=str(root))
    return pd.DataFrame(rows)


def row_keys(runs: pd.DataFrame) -> list[str]:
    """The settings that vary among one experiment's runs on the same dataset (else the method)."""
    candidates = [c for c in runs.columns if c == "method" or c.startswith(("methods.", "data.", "model.", "train."))]
    per_dataset = runs.groupby("dataset")
    not_rows = NOT_ROWS | dependency_keys()
    varying = [c for c in candidates if c not in not_rows and per_dataset[c].nunique().max() > 1]
    return varying or ["method"]


def dependency_keys() -> set[str]:
    """Settings that name another run (a teacher, a fixed model): they differ per seed, not per row."""
    from gaal_cli.methods import METHODS

    keys = {"model.init_from"}
    for name, spec in METHODS.items():
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
    for experiment, part in runs.groupby("experiment", sort=True):
        rows = row_keys(part)
        kind = table_kind(part, rows, str(experiment))
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
    """Mean, std and count over seeds of each head's test accuracy and of seconds per epoch."""
    grouped = runs.groupby([*rows, "dataset"], dropna=False)
    stats = grouped[[*HEADS, "sec_per_epoch"]].agg(["mean", "std"])
    stats.columns = [f"{col}_{stat}" for col, stat in stats.columns]
    stats["n"] = grouped.size()
    return stats.reset_index()


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


def markdown(summary: pd.DataFrame, rows: list[str]) -> str:
    """Rows by setting, columns Multi / Image / Tabular / s per epoch / n per dataset; best mean bold."""
    datasets = dataset_order(summary["dataset"].unique())
    header = [r.split(".")[-1] for r in rows]
    for d in datasets:
        label = DATASET_LABELS.get(d, d)
        header += [f"{label} Multi", f"{label} Image", f"{label} Tabular", f"{label} s/epoch", f"{label} n"]
    best = {
        (d, h): summary.loc[summary["dataset"] == d, f"{h}_mean"].max() for d in datasets for h in HEADS
    }  # NaN when no run has that head
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    index = summary.set_index([*rows, "dataset"])
    for key in row_order(summary, rows):
        cells = [format_value(v) for v in key]
        for d in datasets:
            cell = index.loc[(*key, d)] if (*key, d) in index.index else None
            if cell is None:
                cells += ["-"] * 5
                continue
            for h in HEADS:
                mean, std = cell[f"{h}_mean"], cell[f"{h}_std"]
                # one seed has no spread: show the mean alone rather than a made-up ± 0
                text = "-" if pd.isna(mean) else f"{mean:.4f}" if pd.isna(std) else f"{mean:.4f} ± {std:.4f}"
                cells.append(f"**{text}**" if not pd.isna(mean) and mean == best[(d, h)] else text)
            sec = cell["sec_per_epoch_mean"]
            cells += ["-" if pd.isna(sec) else f"{sec:.2f}", str(int(cell["n"]))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- figures


def _figure(n_panels: int, width: float = 4.5, height: float = 3.6):
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n_panels, figsize=(width * n_panels, height), squeeze=False)
    return fig, list(axes[0])


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def conflict_figure(runs: pd.DataFrame, path: Path) -> Path | None:
    """Fig. 1a: histogram of cos(image-loss gradient, multimodal gradient) of the image encoder
    over the steps of joint training (concat with `grad_cosine: true`)."""
    values: dict[str, list[float]] = {}
    for row in runs[runs["method"] == "concat"].itertuples():
        cosines = [s["cos_image"] for s in RunFolder(row.folder).read_steps() if "cos_image" in s]
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
        ax.set_title(f"{DATASET_LABELS.get(d, d)}: {np.mean(v < 0):.0%} of {len(v)} steps < 0")
        ax.set_xlabel("cos(g_image, g_multimodal), image encoder")
        ax.set_ylabel("steps")
    return _save(fig, path)


def lambda_figure(summary: pd.DataFrame, path: Path) -> Path:
    """Fig. 3: mean multimodal test accuracy over the λ_I x λ_T grid, one panel per dataset."""
    datasets = dataset_order(summary["dataset"].unique())
    fig, axes = _figure(len(datasets))
    for ax, d in zip(axes, datasets):
        grid = summary[summary["dataset"] == d].pivot_table(
            index=LAMBDA_KEYS[0], columns=LAMBDA_KEYS[1], values="multi_mean"
        )
        image = ax.imshow(grid.values, origin="lower", cmap="viridis")
        ax.set_xticks(range(len(grid.columns)), [format_value(v) for v in grid.columns])
        ax.set_yticks(range(len(grid.index)), [format_value(v) for v in grid.index])
        middle = np.nanmean([np.nanmin(grid.values), np.nanmax(grid.values)])
        for (i, j), value in np.ndenumerate(grid.values):
            colour = "white" if value < middle else "black"  # readable on viridis' dark and light ends
            ax.text(j, i, f"{value:.3f}", ha="center", va="center", color=colour, fontsize=8)
        ax.set_xlabel("λ_T")
        ax.set_ylabel("λ_I")
        ax.set_title(f"{DATASET_LABELS.get(d, d)}: multi accuracy")
        fig.colorbar(image, ax=ax)
    return _save(fig, path)


def curves_figure(runs: pd.DataFrame, path: Path) -> Path | None:
    """Fig. 4: GAAL's per-modality training losses per epoch, mean ± std over seeds."""
    frames = []
    for row in runs[runs["method"] == "gaal"].itertuples():
        for record in RunFolder(row.folder).read_metrics():
            train = record["train"]
            if "loss_image" in train:
                frames.append((row.dataset, record["epoch"], train["loss_image"], train["loss_tabular"]))
    if not frames:
        return None
    curves = pd.DataFrame(frames, columns=["dataset", "epoch", "loss_image", "loss_tabular"])
    datasets = dataset_order(curves["dataset"].unique())
    fig, axes = _figure(len(datasets))
    for ax, d in zip(axes, datasets):
        stats = curves[curves["dataset"] == d].groupby("epoch")[["loss_image", "loss_tabular"]].agg(["mean", "std"])
        for loss, colour in (("loss_image", "tab:orange"), ("loss_tabular", "tab:green")):
            mean, std = stats[(loss, "mean")], stats[(loss, "std")].fillna(0)
            ax.plot(stats.index, mean, color=colour, label=loss.replace("loss_", ""))
            ax.fill_between(stats.index, mean - std, mean + std, color=colour, alpha=0.2)
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss")
        ax.set_title(f"{DATASET_LABELS.get(d, d)}: GAAL per-modality loss")
        ax.legend()
    return _save(fig, path)


def epsilon_figure(summary: pd.DataFrame, path: Path) -> Path:
    """Fig. 5: test accuracy of each head against ε, mean ± std over seeds."""
    datasets = dataset_order(summary["dataset"].unique())
    fig, axes = _figure(len(datasets))
    for ax, d in zip(axes, datasets):
        part = summary[summary["dataset"] == d].sort_values(EPSILON_KEY)
        for head in HEADS:
            ax.errorbar(
                part[EPSILON_KEY], part[f"{head}_mean"], yerr=part[f"{head}_std"].fillna(0), marker="o", capsize=3,
                label=head,
            )  # fmt: skip
        ax.set_xlabel("ε")
        ax.set_ylabel("test accuracy")
        ax.set_title(DATASET_LABELS.get(d, d))
        ax.legend()
    return _save(fig, path)


# ---------------------------------------------------------------- the whole report


def write_report(root: Path, out: Path) -> list[Path]:
    """Write runs.csv, one Markdown + CSV table per table kind, the figures and report.md.

    Returns:
        The files written.

    Raises:
        GaalError: no finished runs, or two runs filling the same table cell.
    """
    runs = load_runs(root)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "runs.csv"]
    runs.sort_values(["experiment", "folder"]).to_csv(written[0], index=False)
    sections = [f"# Results under {root}\n\n{len(runs)} finished runs; test accuracy, mean ± std over seeds.\n"]
    for kind, (part, rows) in tables(runs).items():
        summary = summarize(part, rows)
        summary.to_csv(out / f"{kind}.csv", index=False)
        table = markdown(summary, rows)
        (out / f"{kind}.md").write_text(table)
        written += [out / f"{kind}.csv", out / f"{kind}.md"]
        experiments = ", ".join(sorted(part["experiment"].unique()))
        sections.append(f"## {kind} ({experiments})\n\n{table}")
        figure = None
        if set(rows) == set(LAMBDA_KEYS):
            figure = lambda_figure(summary, out / f"fig3_{kind}.png")
        elif rows == [EPSILON_KEY]:
            figure = epsilon_figure(summary, out / f"fig5_{kind}.png")
        if figure:
            written.append(figure)
            sections.append(f"![{figure.stem}]({figure.name})\n")
    for figure, title in (
        (conflict_figure(runs, out / "fig1a_conflict.png"), "Fig. 1a: gradient conflict under joint training"),
        (curves_figure(runs[runs["experiment"].map(_is_table1(runs))], out / "fig4_curves.png"), "Fig. 4: GAAL"),
    ):
        if figure:
            written.append(figure)
            sections.append(f"## {title}\n\n![{figure.stem}]({figure.name})\n")
    (out / "report.md").write_text("\n".join(sections))
    return [*written, out / "report.md"]


def _is_table1(runs: pd.DataFrame) -> dict[str, bool]:
    """Which experiments compare methods at their default settings (Fig. 4 uses their GAAL runs)."""
    return {e: table_kind(part, row_keys(part), str(e)) == "table1" for e, part in runs.groupby("experiment")}
