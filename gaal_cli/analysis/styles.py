"""One look per method in every figure, and legends that stay off the data.

A reader who has learnt that GAAL is the thick black line with stars should find it so in every
figure, and tell a balancing method from a distillation one by its hue before reading the
legend. So each method has one fixed style, chosen by its family:

    GAAL                                 black, star marker, thick line, drawn on top
    unimodal (image, tabular)            greys, dashed
    fusion baselines (CF, MF, DAFT)      blues
    gradient balancing / modulation      reds to golds
    missing modality / distillation      purples to magentas
    contrastive pretraining (MMCL, TIP)  greens
    anything else (a plugin's method)    teals, dash-dot, derived from its name

Within a family every method has its own colour and its own marker, so no two methods share
(colour, marker) and a figure printed in grey still tells them apart by marker. A starred row
(`gaal*`: the method tested with a modality missing) keeps its method's colour and marker, with
a dotted line and a hollow marker.
"""

from __future__ import annotations

import colorsys
import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

#: family -> the hue range (degrees, HSV; lo > hi wraps through 0) its colours stay in, or None
#: for the greys (no hue), and each method's (colour, marker)
FAMILIES: dict[str, tuple[tuple[float, float] | None, dict[str, tuple[str, str]]]] = {
    "gaal": (None, {"gaal": ("#000000", "*")}),
    "unimodal": (None, {"image": ("#525252", "<"), "tabular": ("#969696", ">")}),
    "fusion": (
        (195.0, 235.0),
        {"concat": ("#08519c", "s"), "max": ("#3182bd", "v"), "daft": ("#6baed6", "D")},
    ),
    "balancing": (
        (350.0, 50.0),
        {
            "ogm_ge": ("#a50f15", "o"),
            "mmpareto": ("#de2d26", "^"),
            "mla": ("#fb6a4a", "s"),
            "di_mml": ("#7f2704", "D"),
            "reconboost": ("#d94801", "v"),
            "lfm": ("#e6ab02", "p"),
            "igm": ("#fd8d3c", "h"),
            "dgl": ("#8c510a", "X"),
            "arl": ("#bf812d", "P"),
        },
    ),
    "missing": (
        (255.0, 335.0),
        {
            "kd": ("#54278f", "o"),
            "fmr": ("#8c6bb1", "s"),
            "mfh": ("#bc80bd", "^"),
            "charms": ("#ae017e", "D"),
            "dmrnet": ("#7a0177", "v"),
            "mmanet": ("#dd3497", "P"),
        },
    ),
    "contrastive": ((90.0, 160.0), {"mmcl": ("#006d2c", "o"), "tip": ("#41ab5d", "s")}),
}
#: the hue range of methods no family lists (plugins): between the greens and the blues
OTHER_HUES = (165.0, 190.0)
OTHER_MARKERS = ("o", "s", "^", "v", "D", "p", "h", "X", "P", "<", ">", "d")

LINEWIDTH = 1.4
GAAL_LINEWIDTH = 2.6
LINESTYLES = {"gaal": "-", "unimodal": "--", "other": "-."}
# drawn above the other methods, so GAAL is never hidden under a tie
GAAL_ZORDER = 5
#: inches between the data area and a legend outside it (the gap at bbox_to_anchor x = 1.02)
LEGEND_PAD = 0.15


def family(method: str) -> str:
    """The family a method (or its starred row) belongs to; 'other' for a method none lists."""
    name = method.rstrip("*")
    return next((f for f, (_, members) in FAMILIES.items() if name in members), "other")


def _fallback(name: str) -> tuple[str, str]:
    """A colour in OTHER_HUES and a marker, both fixed by the name (sha256: the same in every
    process, unlike hash()), so a plugin's method looks the same in every figure."""
    digest = hashlib.sha256(name.encode()).digest()
    lo, hi = OTHER_HUES
    hue = lo + (hi - lo) * digest[0] / 255
    value = 0.45 + 0.35 * digest[1] / 255
    r, g, b = colorsys.hsv_to_rgb(hue / 360, 0.85, value)
    colour = "#{:02x}{:02x}{:02x}".format(*(round(255 * c) for c in (r, g, b)))
    return colour, OTHER_MARKERS[digest[2] % len(OTHER_MARKERS)]


def style(method: str) -> dict[str, Any]:
    """Keyword arguments for `ax.plot` / `ax.errorbar` that draw `method` as in every figure.

    Returns:
        color, marker, linestyle, linewidth, markerfacecolor and zorder (only GAAL is raised).
    """
    name = method.rstrip("*")
    fam = family(method)
    colour, marker = FAMILIES[fam][1][name] if fam != "other" else _fallback(name)
    starred = method.endswith("*")
    return {
        "color": colour,
        "marker": marker,
        "linestyle": ":" if starred else LINESTYLES.get(fam, "-"),
        "linewidth": GAAL_LINEWIDTH if fam == "gaal" else LINEWIDTH,
        "markerfacecolor": "white" if starred else colour,
        "zorder": GAAL_ZORDER if fam == "gaal" else 2,
    }


def legend_outside(
    target, *, axes: Sequence | None = None, order: Iterable[str] | None = None, grow: bool = True, **kwargs
):
    """A legend to the right of the data area, never over it; returns the Legend.

    Args:
        target: an Axes (the legend sits outside its right edge) or a Figure (outside the
            right edge of its top-right Axes, gathering the entries of all its Axes).
        axes: the Axes whose entries the legend lists (default: the target's), each label once.
        order: labels to list first, in this order (e.g. the report's method order).
        grow: widen the figure by the legend's width, so the panels keep their size rather
            than being squeezed to make room.
        kwargs: passed to `legend` (title, ncol, ...).

    `fig.tight_layout()` (as the report's `_save` calls) counts an Axes' legend in its extent,
    so the saved figure makes room for it instead of cutting it off.
    """
    from matplotlib.figure import Figure  # imported here: the CLI loads matplotlib only to draw

    if isinstance(target, Figure):
        sources = list(axes if axes is not None else target.get_axes())
        host = max(sources, key=lambda ax: (ax.get_position().x1, ax.get_position().y1))
    else:
        host, sources = target, list(axes if axes is not None else [target])
    entries: dict[str, Any] = {}
    for ax in sources:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    first = [label for label in (order or ()) if label in entries]
    labels = first + [label for label in entries if label not in first]
    options = {"loc": "upper left", "bbox_to_anchor": (1.02, 1.0), "borderaxespad": 0.0, **kwargs}
    legend = host.legend([entries[label] for label in labels], labels, **options)
    if grow:
        fig = host.get_figure()
        fig.draw_without_rendering()  # a legend's size is known only once drawn
        fig.set_figwidth(fig.get_figwidth() + legend.get_window_extent().width / fig.dpi + LEGEND_PAD)
    return legend
