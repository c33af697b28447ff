"""Figure styles: one per method, families in one hue range, GAAL fixed; legends off the data."""

from __future__ import annotations

import colorsys

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402

from gaal_cli.analysis.collect import METHOD_ORDER  # noqa: E402
from gaal_cli.analysis.styles import FAMILIES, OTHER_HUES, family, legend_outside, style  # noqa: E402
from gaal_cli.methods import METHODS  # noqa: E402


def hue_saturation(colour: str) -> tuple[float, float]:
    h, s, _ = colorsys.rgb_to_hsv(*to_rgb(colour))
    return 360 * h, s


def in_range(hue: float, lo: float, hi: float) -> bool:
    """hue within [lo, hi] degrees; lo > hi is a range through 0 (reds)."""
    return lo <= hue <= hi if lo <= hi else hue >= lo or hue <= hi


def test_every_registered_and_reported_method_has_a_style_of_its_own_family():
    # a new built-in must be given a family here, not fall back to the plugin teals
    names = set(METHODS) | {m.rstrip("*") for m in METHOD_ORDER}
    unassigned = sorted(m for m in names if family(m) == "other")
    assert not unassigned, f"methods without a family in gaal_cli/analysis/styles.py: {unassigned}"
    for m in names:
        assert set(style(m)) >= {"color", "marker", "linestyle", "linewidth"}


def test_no_two_methods_share_colour_and_marker():
    names = sorted(set(METHODS) | {m for m in METHOD_ORDER} | {"late_sum", "my_plugin"})
    pairs = {}
    for m in names:
        s = style(m)
        # a starred row is its method tested with a modality missing: same colour and marker,
        # told apart by its dotted line and hollow marker
        key = (to_rgb(s["color"]), s["marker"], s["linestyle"], s["markerfacecolor"])
        assert key not in pairs, f"{m} and {pairs[key]} look the same"
        pairs[key] = m
    unstarred = [m for m in names if not m.endswith("*")]
    assert len({(to_rgb(style(m)["color"]), style(m)["marker"]) for m in unstarred}) == len(unstarred)


def test_within_a_family_colours_and_markers_all_differ():
    for name, (_, members) in FAMILIES.items():
        colours = [c for c, _ in members.values()]
        markers = [mk for _, mk in members.values()]
        assert len(set(colours)) == len(colours), name
        assert len(set(markers)) == len(markers), name


def test_each_family_stays_in_its_own_hue_range_and_the_ranges_do_not_overlap():
    ranges = {name: hues for name, (hues, _) in FAMILIES.items() if hues is not None}
    ranges["other"] = OTHER_HUES
    for name, (hues, members) in FAMILIES.items():
        for method, (colour, _) in members.items():
            hue, saturation = hue_saturation(colour)
            if hues is None:  # GAAL and the unimodal rows are black and greys
                assert saturation < 0.05, f"{method} ({colour}) should be grey"
            else:
                assert saturation > 0.2 and in_range(hue, *hues), f"{method} ({colour}): hue {hue:.0f} outside {hues}"
                others = [f for f, r in ranges.items() if f != name and in_range(hue, *r)]
                assert not others, f"{method}'s hue {hue:.0f} also falls in {others}"


def test_gaal_is_black_thick_starred_and_on_top():
    s = style("gaal")
    assert to_rgb(s["color"]) == (0.0, 0.0, 0.0) and s["marker"] == "*"
    assert s["linewidth"] == max(style(m)["linewidth"] for m in METHODS)
    assert s["linewidth"] > style("concat")["linewidth"]
    assert s["zorder"] > max(style(m)["zorder"] for m in METHODS if m != "gaal")
    starred = style("gaal*")
    assert (starred["color"], starred["marker"]) == (s["color"], s["marker"])
    assert starred["linestyle"] != s["linestyle"]


@pytest.mark.parametrize("name", ["late_sum", "my_method", "x"])
def test_an_unknown_method_gets_a_fixed_teal_style_apart_from_the_built_ins(name):
    s = style(name)
    assert s == style(name)  # the same in every call (and process: sha256, not hash())
    hue, _ = hue_saturation(s["color"])
    assert in_range(hue, *OTHER_HUES) and family(name) == "other"
    assert s["linestyle"] == "-."


def bbox_overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_legend_outside_keeps_the_legend_off_the_data_and_inside_the_saved_figure():
    fig, axes = plt.subplots(1, 2, figsize=(8, 3), squeeze=False)
    axes = list(axes[0])
    for i, m in enumerate(["concat", "gaal", "mla", "image"]):
        axes[i % 2].plot([0, 1, 2], [0.5, 0.6 + 0.01 * i, 0.7], label=m, **style(m))
    fig.tight_layout()
    fig.canvas.draw()
    width_without_legend = axes[0].get_window_extent().width
    legend = legend_outside(fig, order=["gaal"], title="error bars: mean ± std over 3 seeds")
    fig.tight_layout()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = legend.get_window_extent(renderer)
    assert [t.get_text() for t in legend.get_texts()] == ["gaal", "concat", "mla", "image"]
    for ax in axes:
        assert not bbox_overlap(box, ax.get_window_extent(renderer))
    figure_box = fig.bbox
    assert box.x0 >= figure_box.x0 and box.x1 <= figure_box.x1 + 1
    # the figure grew by the legend's width: the panels keep (nearly) their size
    assert axes[0].get_window_extent().width > 0.9 * width_without_legend
    plt.close(fig)


def test_legend_outside_of_one_axes_lists_each_label_once():
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], label="gaal", **style("gaal"))
    ax.plot([0, 1], [1, 0], label="gaal")
    ax.plot([0, 1], [0.5, 0.5], label="_hidden")
    legend = legend_outside(ax)
    assert [t.get_text() for t in legend.get_texts()] == ["gaal"]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    assert legend.get_window_extent(renderer).x0 > ax.get_window_extent(renderer).x1
    plt.close(fig)
