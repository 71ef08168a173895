"""Jaccard index, Otsu's threshold, the oracle and the map normalisation of the segmentation experiment."""

from __future__ import annotations

import pytest
import torch

from ltpa.evaluate import (
    binarize,
    jaccard,
    normalize_minmax,
    otsu_threshold,
    score_segmentation,
    threshold_grid,
    uniform_map,
)


def random_masks(n: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for i in range(n):
        y0, x0 = torch.randint(0, size // 2, (2,), generator=g).tolist()
        h, w = torch.randint(2, size // 2, (2,), generator=g).tolist()
        masks[i, y0 : y0 + h, x0 : x0 + w] = True
    return masks


def test_jaccard_known_values() -> None:
    a = torch.zeros(3, 4, 4, dtype=torch.bool)
    b = torch.zeros(3, 4, 4, dtype=torch.bool)
    a[0, :2] = True  # 8 pixels
    b[0, 1:3] = True  # 8 pixels, 4 shared -> 4 / 12
    a[1] = True
    b[1] = True
    assert jaccard(a, b).tolist() == pytest.approx([1 / 3, 1.0, 1.0])  # third: both empty


def test_all_ones_mask_scores_the_area_fraction() -> None:
    masks = random_masks(10, 16, seed=0)
    ones = torch.ones_like(masks)
    assert torch.allclose(jaccard(ones, masks), masks.flatten(1).float().mean(dim=1))


def test_uniform_map_scores_the_area_fraction_under_every_rule() -> None:
    masks = random_masks(12, 16, seed=1)
    labels = torch.arange(12) % 3
    maps = normalize_minmax(uniform_map(16, 12))
    assert torch.equal(maps, torch.ones(12, 16, 16))
    area = masks.flatten(1).float().mean(dim=1)
    for values, _ in score_segmentation(maps, masks, labels).values():
        assert torch.allclose(values, area)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_oracle_never_scores_below_the_fixed_threshold(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    masks = random_masks(30, 16, seed)
    labels = torch.randint(0, 3, (30,), generator=g)
    maps = normalize_minmax(masks.float() + 0.8 * torch.rand(30, 16, 16, generator=g))
    for fixed in (0.3, 0.5, 0.77):
        scores = score_segmentation(maps, masks, labels, fixed=fixed)
        oracle, fixed_j = scores["oracle"][0], scores["fixed"][0]
        for c in labels.unique():
            members = labels == c
            assert oracle[members].mean() >= fixed_j[members].mean() - 1e-7
            assert len(scores["oracle"][1][members].unique()) == 1  # one threshold per class
    assert 0.77 in threshold_grid(0.77).tolist() and 0.5 in threshold_grid().tolist()


def test_otsu_matches_a_brute_force_search_of_the_between_class_variance() -> None:
    bins = 64
    g = torch.Generator().manual_seed(0)
    # values at bin centres, so the histogram is exact; two overlapping clusters
    idx = torch.cat(
        [torch.randint(5, 30, (4, 150), generator=g), torch.randint(25, 60, (4, 106), generator=g)], dim=1
    )
    maps = ((idx.float() + 0.5) / bins).view(4, 16, 16)
    got = otsu_threshold(maps, bins=bins)
    for i in range(4):
        values = maps[i].flatten().double()
        best, best_t = -1.0, None
        for k in range(1, bins):
            t = k / bins
            fg, bg = values[values >= t], values[values < t]
            if len(fg) == 0 or len(bg) == 0:
                continue
            w0, w1 = len(bg) / len(values), len(fg) / len(values)
            between = w0 * w1 * (bg.mean() - fg.mean()).item() ** 2
            if between > best + 1e-12:
                best, best_t = between, t
        assert got[i].item() == pytest.approx(best_t)


def test_otsu_separates_two_modes_and_handles_constant_maps() -> None:
    maps = torch.full((2, 8, 8), 0.2)
    maps[0, 2:5, 2:6] = 0.9
    maps[1] = 1.0
    t = otsu_threshold(maps)
    assert 0.2 < t[0] <= 0.9
    assert torch.equal(binarize(maps[:1], t[:1])[0], maps[0] > 0.5)
    assert t[1] == 0.0 and binarize(maps[1:], t[1:]).all()


def test_normalize_minmax_is_per_image() -> None:
    maps = torch.stack([torch.linspace(2, 4, 16).view(4, 4), torch.linspace(-1, 0, 16).view(4, 4)])
    out = normalize_minmax(maps)
    assert torch.allclose(out.flatten(1).min(1).values, torch.zeros(2))
    assert torch.allclose(out.flatten(1).max(1).values, torch.ones(2))


def test_segmentation_figure_labels_rows_and_columns_and_has_a_colour_bar() -> None:
    from _figures import assert_readable

    from ltpa.evaluate.segmentation import segmentation_figure

    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[:, 4:12, 4:12] = True
    maps = masks.float() * 0.9 + 0.05
    titles = ["test image 3\nclass 1", "test image 7\nclass 4"]
    fig = segmentation_figure(
        images,
        maps,
        masks,
        threshold=0.5,
        titles=titles,
        suptitle="att2: attention conv10",
        map_name="conv10",
    )
    texts = assert_readable(fig)
    assert all(t in texts for t in titles)
    assert texts.count("ground truth") == 1 and "conv10 >= 0.5" in texts  # headings once, above the columns
    assert texts.count("Jaccard 1.00") == 2  # the map binarises to the mask exactly
    assert "map value" in texts
