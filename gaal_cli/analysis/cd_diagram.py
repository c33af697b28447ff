"""The critical-difference diagram of Demšar (2006, JMLR 7:1-30, section 3.2.2 and figures 1-2).

An axis of average ranks (1, the best, on the left), each method hanging from its rank with
its name on the left side (the better half) or the right side (the worse half), the critical
difference drawn as a bar above the axis, and below it thick bars joining the methods that are
not significantly different (`gaal_cli.analysis.friedman.cliques`). Written as PNG, PDF and SVG with the
same settings as the report's figures, so the same ranks give the same bytes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from gaal_cli.analysis.friedman import cliques
from gaal_cli.foundation.files import write_file

#: the report's figure settings that matter here (gaal_cli/analysis/report.py STYLE): fonts kept as text,
#: and SVG ids salted so that a figure is the same bytes every time it is drawn
STYLE = {"font.size": 9, "svg.fonttype": "none", "pdf.fonttype": 42, "svg.hashsalt": "gaal"}
FORMATS = (".png", ".pdf", ".svg")
#: layout, in inches
_AXIS_WIDTH = 3.6
_CHAR_WIDTH = 0.075
_ROW = 0.22
_BAR_ROW = 0.1


class CDDiagram(NamedTuple):
    """What was drawn: the PNG written (PDF and SVG beside it) and the groups joined by bars, by name."""

    png: Path
    groups: tuple[tuple[str, ...], ...]


def cd_diagram(
    names: Sequence[str],
    ranks: Sequence[float],
    cd: float,
    path: str | Path,
    *,
    title: str | None = None,
    save: Callable[[object, Path], Path] | None = None,
) -> CDDiagram:
    """Draw the critical-difference diagram of methods `names` with average `ranks` (1 = best).

    Args:
        cd: the critical difference (`gaal_cli.analysis.friedman.nemenyi_cd`): methods whose ranks differ by
            less are joined by a bar.
        path: where to write; its suffix is replaced by .png, .pdf and .svg.
        title: a line above the diagram (e.g. "Table I, Multi accuracy: Friedman p = 0.01").
        save: the caller's figure writer, `save(figure, path) -> png path` (the report passes
            its own, so every figure it writes goes through one function); by default the
            three formats are written here.
    """
    import matplotlib

    if len(names) != len(ranks) or len(names) < 2:
        got = f"got {len(names)} names and {len(ranks)} ranks"
        raise ValueError(f"expected one rank per method and at least two methods, {got}")
    groups = cliques(ranks, cd)
    path = Path(path)
    with matplotlib.rc_context(STYLE):
        fig = _draw(list(names), [float(r) for r in ranks], cd, groups, title)
        png = (save or _save)(fig, path)
    return CDDiagram(png, tuple(tuple(names[i] for i in group) for group in groups))


def _draw(names: list[str], ranks: list[float], cd: float, groups: list[tuple[int, ...]], title: str | None):
    from matplotlib.figure import Figure

    k = len(names)
    order = sorted(range(k), key=lambda i: (ranks[i], names[i]))
    left, right = order[: math.ceil(k / 2)], order[math.ceil(k / 2) :][::-1]
    text = _CHAR_WIDTH * (max(len(n) for n in names) + 7) + 0.3
    width = 2 * text + _AXIS_WIDTH
    top = 0.35 if title else 0.0
    axis_y = top + 0.65
    first_row = axis_y + 0.3 + _BAR_ROW * len(groups)
    height = first_row + _ROW * max(len(left), len(right)) + 0.1

    def x(rank: float) -> float:
        return text + _AXIS_WIDTH * (rank - 1) / max(k - 1, 1)

    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    line = {"color": "black", "linewidth": 0.8}
    if title:
        ax.text(width / 2, 0.12, title, ha="center", va="top")
    # the rank axis: a tick per rank, a short tick per half rank, numbers above
    ax.plot([x(1), x(k)], [axis_y, axis_y], **line)
    for step in range(2 * k - 1):
        rank = 1 + step / 2
        tick = 0.1 if step % 2 == 0 else 0.05
        ax.plot([x(rank), x(rank)], [axis_y, axis_y - tick], **line)
        if step % 2 == 0:
            ax.text(x(rank), axis_y - 0.13, str(int(rank)), ha="center", va="bottom")
    # the critical difference, as a bar from rank 1
    cd_y = top + 0.25
    ax.plot([x(1), x(1 + cd)], [cd_y, cd_y], **line)
    for end in (1, 1 + cd):
        ax.plot([x(end), x(end)], [cd_y - 0.04, cd_y + 0.04], **line)
    ax.text((x(1) + x(1 + cd)) / 2, cd_y - 0.03, "CD", ha="center", va="bottom")
    # each method: down from its rank, then out to its name
    for side, members in (("left", left), ("right", right)):
        for row, i in enumerate(members):
            y = first_row + _ROW * row
            edge = text - 0.1 if side == "left" else text + _AXIS_WIDTH + 0.1
            ax.plot([x(ranks[i]), x(ranks[i]), edge], [axis_y, y, y], **line)
            label = f"{names[i]} ({ranks[i]:.2f})"
            shift, align = (-0.05, "right") if side == "left" else (0.05, "left")
            ax.text(edge + shift, y, label, ha=align, va="center")
    # the groups not significantly different: thick bars just below the axis
    for row, group in enumerate(groups):
        y = axis_y + 0.2 + _BAR_ROW * row
        low, high = min(ranks[i] for i in group), max(ranks[i] for i in group)
        ax.plot([x(low) - 0.04, x(high) + 0.04], [y, y], color="black", linewidth=2.5, solid_capstyle="butt")
    return fig


def _save(fig, path: Path) -> Path:
    """PNG, PDF and SVG, without creation dates (as the report's figures), through write_file."""
    for suffix in FORMATS:
        metadata = {"Date": None} if suffix == ".svg" else {"CreationDate": None} if suffix == ".pdf" else None
        options = {"format": suffix[1:], "dpi": 200, "metadata": metadata}
        write_file(path.with_suffix(suffix), lambda fh, options=options: fig.savefig(fh, **options), sync=False)
    return path.with_suffix(".png")
