"""The report's figures, each written as PNG (for report.md), PDF and SVG, byte-identical when
rebuilt over the same runs: Fig. 1a (gradient conflict), Fig. 3 (λ grid), Fig. 4 (GAAL's losses),
Fig. 5 (ε) and a regime sweep's accuracy against dominance, each method in its own style
(gaal_cli/analysis/styles.py)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from gaal_cli.analysis.collect import (
    DOMINANCE_KEY,
    EPSILON_KEY,
    HEAD_LABELS,
    HEADS,
    LAMBDA_KEYS,
    METHOD_ORDER,
    dataset_label,
    dataset_order,
)
from gaal_cli.analysis.styles import legend_outside, style
from gaal_cli.foundation.files import write_file
from gaal_cli.runs.folder import RunFolder
from gaal_cli.sweeps.runner import format_value
from gaal_cli.training.contributions import MODALITIES

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

    wrap_titles(fig)
    fig.tight_layout()
    for suffix in FORMATS:
        # no creation date in the vector files (and salted SVG ids, see STYLE), so a rebuilt
        # report over the same runs is byte-identical
        options = {"format": suffix[1:], "dpi": 200, "metadata": _metadata(suffix)}
        write_file(path.with_suffix(suffix), lambda fh, options=options: fig.savefig(fh, **options), sync=False)
    plt.close(fig)
    return path.with_suffix(".png")


# characters of title text per inch of panel width, at the title's 10 pt
TITLE_CHARACTERS_PER_INCH = 12


def wrap_titles(fig) -> None:
    """Wrap each panel's title to its panel's width, so that side-by-side titles never run into
    each other (a long dataset name would otherwise cross into the next panel)."""
    for ax in fig.axes:
        title = ax.get_title(loc="left") or ax.get_title()
        loc = "left" if ax.get_title(loc="left") else "center"
        width = max(20, int(ax.get_position().width * fig.get_figwidth() * TITLE_CHARACTERS_PER_INCH))
        lines = [textwrap.fill(line, width) for line in title.split("\n")]
        if title:
            ax.set_title("\n".join(lines), loc=loc)


def seeds_caption(counts, bars: str = "error bars") -> str:
    """'mean ± std over 3 seeds' (or a range of counts); one seed has no `bars` to explain."""
    n = sorted({int(c) for c in counts})
    if n == [1]:
        return f"1 seed (no {bars})"
    return f"{bars}: mean ± std over {n[0]}{'' if len(n) == 1 else f'-{n[-1]}'} seeds"


def legend_beside(fig, axes, captions: list[str], order: list[str] | None = None) -> None:
    """One legend for side-by-side panels, right of the last one (a legend beside each panel
    would sit on its neighbour), titled with the seeds caption when the panels share it, else
    each panel's caption under its title."""
    shared = len(set(captions)) == 1
    if not shared:
        for ax, caption in zip(axes, captions):
            ax.set_title(f"{ax.get_title()}\n{caption}")
    legend_outside(fig, axes=list(axes), order=order, title=captions[0] if shared else None)


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
    of the head they have. Each method in its own style (gaal_cli/analysis/styles.py), as in every figure."""
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


def confusion_axes(ax, matrix, class_names: list[str], title: str) -> None:
    """A confusion matrix on `ax`: rows true class, columns predicted, each cell its count, shaded by
    the share of its row (so a small class's errors show as clearly as a large one's)."""
    counts = np.asarray(matrix, dtype=float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, [str(c) for c in class_names], rotation=45, ha="right")
    ax.set_yticks(ticks, [str(c) for c in class_names])
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, loc="left")
    if len(class_names) <= 20:
        for i, j in np.ndindex(counts.shape):
            ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=7,
                    color="white" if shares[i, j] > 0.6 else "black")  # fmt: skip


def confusion_figure(matrix, class_names: list[str], title: str, path: Path, protected=()) -> Path:
    """`gaal eval --out FILE`: the confusion matrix as one figure, in the format FILE's suffix names.

    Raises:
        GaalError: FILE is one of `protected` (the command's inputs) or cannot be written.
    """
    import matplotlib.pyplot as plt

    side = min(3.0 + 0.45 * len(class_names), 14.0)
    fig, (ax,) = _figure(1, width=side, height=side)
    confusion_axes(ax, matrix, class_names, "\n".join(textwrap.wrap(title, 60)))
    fig.tight_layout()
    options = {"format": path.suffix[1:].lower(), "dpi": 200, "metadata": _metadata(path.suffix.lower())}
    write_file(path, lambda fh: fig.savefig(fh, **options), protected=protected, field="--out")
    plt.close(fig)
    return path


def _metadata(suffix: str) -> dict | None:
    """No creation date in a vector file, so the same figure is the same bytes."""
    return {"Date": None} if suffix == ".svg" else {"CreationDate": None} if suffix == ".pdf" else None


# each head's look in the figures that put the three heads side by side
HEAD_LOOK = {
    "multi": {"color": "black", "marker": "o"},
    "image": {"color": "tab:blue", "marker": "s"},
    "tabular": {"color": "tab:orange", "marker": "^"},
}
INTERVAL_CAPTION = "bars: 95 % interval of the mean over seeds (Student t)"


def _interval(cell: pd.Series, head: str) -> tuple[float, list[list[float]] | None]:
    """A summary cell's mean of `head` and its interval as errorbar half-widths (None: one seed)."""
    mean, low, high = cell[f"{head}_mean"], cell.get(f"{head}_low"), cell.get(f"{head}_high")
    if low is None or high is None or not (np.isfinite(low) and np.isfinite(high)):
        return float(mean), None
    return float(mean), [[mean - low], [high - mean]]


def methods_figure(summary: pd.DataFrame, path: Path) -> Path | None:
    """Table I as a figure: each method's test accuracy per head with its 95 % interval over seeds,
    one panel per dataset (a method without a head's prediction has no point there)."""
    if summary.empty:
        return None
    datasets = dataset_order(summary["dataset"].unique())
    methods = [m for m in METHOD_ORDER if m in set(summary["method"])]
    methods += sorted(set(summary["method"]) - set(methods))
    fig, axes = _figure(len(datasets), width=5.0, height=max(2.6, 0.32 * len(methods) + 1.4))
    for ax, d in zip(axes, datasets):
        part = summary[summary["dataset"] == d].set_index("method")
        for k, head in enumerate(HEADS):
            shown = False
            for i, method in enumerate(methods):
                if method not in part.index or pd.isna(part.loc[method, f"{head}_mean"]):
                    continue
                mean, half = _interval(part.loc[method], head)
                label = None if shown else HEAD_LABELS[head]
                ax.errorbar(
                    mean, i + (k - 1) * 0.22, xerr=half, ms=4, capsize=2, ls="none", label=label, **HEAD_LOOK[head]
                )
                shown = True
        ax.set_yticks(range(len(methods)), methods)
        ax.set_ylim(len(methods) - 0.5, -0.5)
        ax.set_xlabel("test accuracy")
        ax.grid(axis="x", alpha=0.3)
        n = sorted({int(c) for c in part["n"]})
        seeds = f"{n[0]}" if len(n) == 1 else f"{n[0]}-{n[-1]}"
        ax.set_title(f"{dataset_label(d)}: test accuracy per method ({seeds} seed{'s' * (n[-1] > 1)})")
    legend_beside(fig, axes, [INTERVAL_CAPTION] * len(axes))
    return _save(fig, path)


def sweep_figure(summary: pd.DataFrame, key: str, path: Path) -> Path:
    """A one-dimensional sweep: each head's test accuracy against the setting `key`, mean and 95 %
    interval over seeds, one panel per dataset (values in their order; text values as categories)."""
    datasets = dataset_order(summary["dataset"].unique())
    fig, axes = _figure(len(datasets))
    for ax, d in zip(axes, datasets):
        part = summary[summary["dataset"] == d]
        values = sorted(part[key].unique(), key=lambda v: (isinstance(v, str), v))
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        x = {v: (float(v) if numeric else i) for i, v in enumerate(values)}
        for head in HEADS:
            line = part.dropna(subset=[f"{head}_mean"])
            if line.empty:
                continue
            line = line.assign(_x=line[key].map(x)).sort_values("_x")
            halves = [_interval(cell, head)[1] for _, cell in line.iterrows()]
            yerr = None if any(h is None for h in halves) else np.hstack(halves)
            ax.errorbar(
                line["_x"], line[f"{head}_mean"], yerr=yerr, capsize=3, ms=4, label=HEAD_LABELS[head], **HEAD_LOOK[head]
            )
        ax.set_xticks(list(x.values()), [format_value(v) for v in values])
        ax.set_xlabel(key)
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{dataset_label(d)}: test accuracy against {key.split('.')[-1]}")
    legend_beside(fig, axes, [INTERVAL_CAPTION] * len(axes))
    return _save(fig, path)


def confusion_panels(panels: list[tuple[str, list[list[int]], list[str]]], path: Path) -> Path | None:
    """One confusion matrix per panel: (title, matrix, class names), as `confusion_axes` draws it."""
    if not panels:
        return None
    side = min(3.0 + 0.4 * max(len(names) for _, _, names in panels), 9.0)
    fig, axes = _figure(len(panels), width=side, height=side)
    for ax, (title, matrix, names) in zip(axes, panels):
        confusion_axes(ax, matrix, names, title)
    return _save(fig, path)
