"""Attention mass in the box and the mask, and the pointing game."""

from __future__ import annotations

import pytest
import torch

from ltpa.evaluate import as_distribution, localization_scores, object_boxes, pointing_hits, uniform_map


def blob_masks() -> torch.Tensor:
    masks = torch.zeros(3, 10, 12, dtype=torch.bool)
    masks[0, 2:5, 3:9] = True  # a rectangle: box = mask
    masks[1, 1, 1] = masks[1, 6, 8] = True  # two pixels: box 6 x 8
    masks[2, 4:9, 2:4] = True
    masks[2, 8, 2:11] = True  # an L
    return masks


def test_uniform_map_scores_exactly_the_box_and_mask_area_fractions() -> None:
    masks = blob_masks()
    scores = localization_scores(torch.ones(3, 10, 12), masks)
    box_area = torch.tensor([3 * 6, 6 * 8, 5 * 9], dtype=torch.float32) / 120
    assert torch.allclose(scores["mass_in_box"], box_area)
    assert torch.allclose(scores["mass_in_mask"], masks.flatten(1).float().mean(1))
    assert torch.allclose(
        scores["pointing_accuracy"], masks.flatten(1).float().mean(1)
    )  # ties: share on the object
    assert torch.equal(object_boxes(masks)[1].nonzero().min(0).values, torch.tensor([1, 1]))


def test_a_map_equal_to_the_mask_puts_all_mass_on_the_object() -> None:
    masks = blob_masks()
    scores = localization_scores(masks.float(), masks)
    assert torch.allclose(scores["mass_in_mask"], torch.ones(3))
    assert torch.allclose(scores["mass_in_box"], torch.ones(3))
    assert torch.equal(scores["pointing_accuracy"], torch.ones(3))


def test_pointing_game_hits_and_misses() -> None:
    masks = blob_masks()[:1]
    peak_in = torch.zeros(1, 10, 12)
    peak_in[0, 3, 4] = 1.0
    peak_out = torch.zeros(1, 10, 12)
    peak_out[0, 9, 0] = 1.0
    assert pointing_hits(peak_in, masks).item() == 1.0
    assert pointing_hits(peak_out, masks).item() == 0.0


def test_cam_maps_with_negative_values_become_distributions() -> None:
    cam = torch.randn(4, 6, 6)
    dist = as_distribution(cam)
    assert (dist >= 0).all() and torch.allclose(dist.flatten(1).sum(1), torch.ones(4))
    assert torch.allclose(as_distribution(uniform_map(6, 2)), uniform_map(6, 2))
    assert torch.allclose(as_distribution(torch.zeros(1, 3, 3)), torch.full((1, 3, 3), 1 / 9))


def test_shapes_must_agree() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        localization_scores(torch.ones(2, 4, 4), torch.ones(2, 5, 5, dtype=torch.bool))


def test_localization_figure_says_what_each_bar_measures() -> None:
    from _figures import assert_readable

    from ltpa.evaluate.localization import SCORE_LABELS, localization_figure

    rows = [
        {"model": m, "level": lv, "mass_in_box": 0.4, "mass_in_mask": 0.2, "pointing_accuracy": 0.6}
        for m, lv in (("att2", "conv10"), ("att2", "conv13"), ("baseline", "uniform"))
    ]
    fig = localization_figure(rows, title="attention localisation on cluttered-digits (n=500)")
    texts = assert_readable(fig)
    assert set(SCORE_LABELS.values()) <= set(texts)  # words in the legend, not column names
    assert not {"mass_in_box", "mass_in_mask", "pointing_accuracy", "%"} & set(texts)
    assert "score (%)" in texts and "att2\nconv13" in texts
