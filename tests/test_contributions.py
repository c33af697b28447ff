"""Modality contributions: two-player Shapley values and negative-cosine rates on hand-made cases."""

import pytest

from gaal_cli.training.contributions import negative_rate, run_shapley, shapley, split_shapley


def test_shapley_by_hand():
    # v(both) 0.9, v(image) 0.5, v(table) 0.8, v(none) 0.1:
    # image: ((0.5 - 0.1) + (0.9 - 0.8)) / 2 = 0.25; table: ((0.8 - 0.1) + (0.9 - 0.5)) / 2 = 0.55
    values = shapley(multi=0.9, image=0.5, tabular=0.8, none=0.1)
    assert values == pytest.approx({"image": 0.25, "tabular": 0.55})
    assert sum(values.values()) == pytest.approx(0.9 - 0.1)  # efficiency: the gain over none is shared out


def test_a_modality_that_adds_nothing_gets_nothing():
    # the image head at chance and the fused head no better than the table: the image's value is 0
    assert shapley(multi=0.8, image=0.25, tabular=0.8, none=0.25)["image"] == pytest.approx(0.0)


def test_shapley_needs_both_unimodal_heads_and_the_class_count():
    heads = {"multi": {"acc": 0.9}, "image": {"acc": 0.5}, "tabular": {"acc": 0.8}}
    assert split_shapley(heads, 10) == pytest.approx({"image": 0.25, "tabular": 0.55})
    assert split_shapley({"multi": {"acc": 0.9}}, 10) is None  # a method without unimodal heads
    assert split_shapley(heads, None) is None
    assert run_shapley({"val": heads, "test": {"multi": {"acc": 0.7}}}, 10) == {
        "val": pytest.approx({"image": 0.25, "tabular": 0.55})
    }


def test_negative_rate_counts_only_logged_cosines():
    steps = [{"cos_image": -0.2}, {"cos_image": 0.3}, {"loss": 1.0}, {"cos_image": -0.01}, {"cos_image": 0.0}]
    assert negative_rate(steps, "image") == (pytest.approx(0.5), 4)
    assert negative_rate(steps, "tabular") is None
