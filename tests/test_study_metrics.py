"""The study's map, robustness and transfer measurements (ltpa.study.metrics), on tiny synthetic inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn

from ltpa import create_model
from ltpa.errors import LTPAError
from ltpa.evaluate.localization import pointing_hits
from ltpa.study.metrics import (
    AREA_GRID,
    area_matched_threshold,
    attack_accuracy,
    features,
    fit_probe,
    fooling_rate,
    gradcam_maps,
    iou_at_area,
    linear_probe,
    map_metrics,
    model_maps,
    pixel_auc_ap,
    pixel_features,
    reference_maps,
    top_area_masks,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def random_masks(n: int, side: int, seed: int = 0) -> torch.Tensor:
    """Random rectangles, neither empty nor the whole image."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, side, side, dtype=torch.bool)
    for i in range(n):
        r0, c0 = (int(v) for v in torch.randint(0, side // 2, (2,), generator=g))
        r1, c1 = (int(v) for v in torch.randint(1, side // 2 + 1, (2,), generator=g))
        masks[i, r0 : r0 + r1, c0 : c0 + c1] = True
    return masks


def sklearn_auc_ap(maps: torch.Tensor, masks: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    y = masks.flatten(1).numpy()
    s = maps.flatten(1).double().numpy()
    auc = np.array([roc_auc_score(y[i], s[i]) for i in range(len(y))])
    ap = np.array([average_precision_score(y[i], s[i]) for i in range(len(y))])
    return auc, ap


# --- AUC / AP -------------------------------------------------------------------------------------------------


def test_auc_ap_of_the_mask_itself_and_of_a_monotone_transform_are_one() -> None:
    masks = random_masks(6, 8)
    for maps in (masks.float(), 5.0 * masks.float() + 2.0):
        auc, ap = pixel_auc_ap(maps, masks)
        assert torch.equal(auc, torch.ones(6, dtype=auc.dtype))
        assert torch.equal(ap, torch.ones(6, dtype=ap.dtype))


def test_inverted_map_scores_auc_zero() -> None:
    masks = random_masks(6, 8)
    auc, ap = pixel_auc_ap(1.0 - masks.float(), masks)
    assert torch.equal(auc, torch.zeros(6, dtype=auc.dtype))
    # recall arrives only at the last threshold, where precision is the mask fraction
    assert torch.allclose(ap, masks.flatten(1).double().mean(dim=1))


def test_constant_map_scores_auc_half_and_ap_mask_fraction_like_sklearn() -> None:
    masks = random_masks(6, 8)
    maps = torch.full((6, 8, 8), 0.3)
    auc, ap = pixel_auc_ap(maps, masks)
    fraction = masks.flatten(1).double().mean(dim=1)
    assert torch.allclose(auc, torch.full_like(auc, 0.5))
    assert torch.allclose(ap, fraction)
    sk_auc, sk_ap = sklearn_auc_ap(maps, masks)  # sklearn treats the tie the same way
    np.testing.assert_allclose(sk_auc, 0.5)
    np.testing.assert_allclose(sk_ap, fraction.numpy())


@pytest.mark.parametrize("levels", [None, 3, 7])
def test_vectorised_auc_ap_match_sklearn_on_random_maps(levels: int | None) -> None:
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(20, 6, 6, generator=g) < 0.3
    masks[:, 0, 0], masks[:, 0, 1] = True, False  # neither empty nor full
    maps = torch.rand(20, 6, 6, generator=g) + 0.4 * masks.float()
    if levels is not None:  # many ties
        maps = (maps * levels).floor()
    auc, ap = pixel_auc_ap(maps, masks)
    sk_auc, sk_ap = sklearn_auc_ap(maps, masks)
    np.testing.assert_allclose(auc.numpy(), sk_auc, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ap.numpy(), sk_ap, rtol=0, atol=1e-12)


def test_auc_ap_are_nan_for_empty_or_full_masks() -> None:
    masks = random_masks(3, 8)
    masks[0] = False
    masks[1] = True
    auc, ap = pixel_auc_ap(torch.rand(3, 8, 8), masks)
    assert math.isnan(auc[0]) and math.isnan(auc[1]) and not math.isnan(auc[2])
    assert math.isnan(ap[0]) and math.isnan(ap[1]) and not math.isnan(ap[2])


def test_auc_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        pixel_auc_ap(torch.rand(2, 8, 8), torch.ones(2, 4, 4, dtype=torch.bool))


# --- IoU at a matched area ------------------------------------------------------------------------------------


@pytest.mark.parametrize("area", [0.0, 0.05, 0.3, 0.37, 1.0])
def test_top_area_masks_keep_exactly_the_requested_pixels_even_on_ties(area: float) -> None:
    maps = torch.cat([torch.rand(3, 10, 10), torch.zeros(2, 10, 10), (torch.rand(2, 10, 10) * 3).floor()])
    kept = top_area_masks(maps, area)
    expected = round(area * 100)
    assert kept.dtype == torch.bool and kept.shape == maps.shape
    assert kept.flatten(1).sum(dim=1).tolist() == [expected] * len(maps)
    # ties are broken by the flat index: a constant map keeps its first pixels
    assert kept[3].flatten()[:expected].all() and not kept[3].flatten()[expected:].any()
    # and what is kept is never below what is dropped
    for m, k in zip(maps.flatten(1), kept.flatten(1)):
        if 0 < expected < 100:
            assert m[k].min() >= m[~k].max()


def test_top_area_masks_round_half_up() -> None:
    assert int(top_area_masks(torch.rand(1, 2, 2), 0.125).sum()) == 1  # 0.5 pixels -> 1
    assert int(top_area_masks(torch.rand(1, 4, 5), 0.175).sum()) == 4  # 3.5 pixels -> 4
    with pytest.raises(LTPAError):
        top_area_masks(torch.rand(1, 4, 4), 1.5)


def test_iou_at_area_is_one_for_the_mask_at_its_own_area() -> None:
    masks = torch.zeros(4, 10, 10, dtype=torch.bool)
    for i in range(4):
        masks[i, i : i + 5, i : i + 6] = True  # 30 pixels
    iou = iou_at_area(masks.float() + 0.01 * torch.rand(4, 10, 10), masks, 0.3)
    assert torch.allclose(iou, torch.ones(4))
    # half the area: the kept pixels are a subset of the mask, IoU 15/30
    assert torch.allclose(iou_at_area(masks.float(), masks, 0.15), torch.full((4,), 0.5))
    # twice the area: the mask is a subset of the kept pixels, IoU 30/60
    assert torch.allclose(iou_at_area(masks.float(), masks, 0.6), torch.full((4,), 0.5))
    # the inverted map at the mask's area misses it completely
    assert torch.equal(iou_at_area(1.0 - masks.float(), masks, 0.3), torch.zeros(4))


def test_iou_at_area_ignores_sharpness() -> None:
    g = torch.Generator().manual_seed(2)
    masks = random_masks(5, 8, seed=2)
    maps = torch.rand(5, 8, 8, generator=g) + masks.float() * 0.5
    sharp = torch.softmax(40.0 * maps.flatten(1), dim=1).view_as(maps)  # same order, peaked values
    for area in (0.1, 0.25, 0.5):
        assert torch.equal(iou_at_area(maps, masks, area), iou_at_area(sharp, masks, area))


def test_area_matched_threshold_finds_the_masks_common_area() -> None:
    g = torch.Generator().manual_seed(3)
    masks = torch.zeros(8, 10, 10, dtype=torch.bool)
    for i in range(8):
        r, c = (int(v) for v in torch.randint(0, 3, (2,), generator=g))
        masks[i, r : r + 5, c : c + 8] = True  # 40 pixels: area 0.4
    assert (masks.flatten(1).sum(dim=1) == 40).all()
    maps = masks.float() + 0.3 * torch.rand(8, 10, 10, generator=g)
    assert 0.4 in AREA_GRID
    assert area_matched_threshold(maps, masks) == 0.4
    assert area_matched_threshold(maps, masks, grid=(0.1, 0.2)) == 0.2
    # IoU 20/40 at area 0.2 ties 40/80 at area 0.8: the smaller area wins, whatever the grid's order
    assert area_matched_threshold(masks.float(), masks, grid=(0.8, 0.2)) == 0.2


# --- reference maps and map_metrics ---------------------------------------------------------------------------


def test_reference_maps_shapes_and_gaussian_peak() -> None:
    images = torch.rand(3, 3, 16, 16)
    for kind in ("uniform", "gaussian", "intensity"):
        assert reference_maps(images, kind, 9).shape == (3, 9, 9)
    odd = reference_maps(images, "gaussian", 9)
    assert int(odd[0].flatten().argmax()) == 4 * 9 + 4
    even = reference_maps(images, "gaussian", 8)[0]
    assert torch.equal(even[3:5, 3:5], torch.full((2, 2), float(even.max())))
    assert float(even.max()) > float(even[0, 0])
    uniform = reference_maps(images, "uniform", 9)
    assert torch.equal(uniform, torch.full_like(uniform, float(uniform[0, 0, 0])))
    with pytest.raises(LTPAError):
        reference_maps(images, "nonsense", 9)


def test_intensity_reference_is_the_mean_over_rgb() -> None:
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    out = reference_maps(images, "intensity", 8)
    assert torch.allclose(out, images.float().mean(dim=1) / 255.0)


def test_map_metrics_per_image_scores_and_upsampling() -> None:
    masks = random_masks(4, 8)
    maps = masks.float() + 0.1 * torch.rand(4, 8, 8)
    out = map_metrics(maps, masks, 0.25)
    assert set(out) == {"pointing", "auc", "ap", "iou"}
    assert all(v.shape == (4,) for v in out.values())
    assert torch.equal(out["pointing"], pointing_hits(maps, masks))
    assert torch.allclose(out["auc"].float(), torch.ones(4))
    assert torch.equal(out["iou"], iou_at_area(maps, masks, 0.25))
    small = map_metrics(torch.rand(4, 4, 4), masks, 0.25)  # upsampled to the masks
    assert all(v.shape == (4,) for v in small.values())


# --- robustness -----------------------------------------------------------------------------------------------


class PixelModel(nn.Module):
    """Class 1 when pixel (channel, 0, 0) is above 0.5, class 0 otherwise; FGSM moves that pixel by eps."""

    def __init__(self, channel: int) -> None:
        super().__init__()
        self.channel = channel
        self.img_size = 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x[:, self.channel, 0, 0] - 0.5
        return torch.stack([-s, s], dim=1) * 20.0


# (pixel read by A, pixel read by B, label); eps 0.1 flips a prediction iff the pixel is within 0.1 of 0.5
CASES = [
    (0.55, 0.90, 1),  # both right; A fragile, B robust
    (0.90, 0.45, 0),  # A wrong, B right (fragile)
    (0.95, 0.80, 1),  # both right, both robust
    (0.20, 0.48, 0),  # both right; A robust, B fragile
    (0.56, 0.10, 1),  # A right (fragile), B wrong
    (0.10, 0.30, 1),  # both wrong
    (0.30, 0.52, 1),  # A wrong, B right (fragile)
]


def pixel_data() -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.full((len(CASES), 3, 4, 4), 0.5)
    for i, (a, b, _) in enumerate(CASES):
        images[i, 0, 0, 0], images[i, 1, 0, 0] = a, b
    return images, torch.tensor([y for *_, y in CASES])


@pytest.mark.parametrize("attack", ["fgsm", "pgd10"])
def test_fooling_rate_counts_only_images_both_models_get_right(attack: str) -> None:
    images, labels = pixel_data()
    a, b = PixelModel(0), PixelModel(1)
    gen = torch.Generator().manual_seed(0)
    rate_a, rate_b, n = fooling_rate(a, b, images, labels, 0.1, attack=attack, batch_size=3, generator=gen)
    # both right: cases 0, 2, 3; A is fooled on case 0 only, B on case 3 only (over A's own right set the rate
    # would be 2/4, over B's 3/5)
    assert n == 3
    assert rate_a == pytest.approx(1 / 3)
    assert rate_b == pytest.approx(1 / 3)
    swapped = fooling_rate(b, a, images, labels, 0.1, attack=attack, generator=gen)
    assert swapped == (pytest.approx(1 / 3), pytest.approx(1 / 3), 3)


def test_fooling_rate_is_zero_at_eps_zero_and_nan_without_common_right_images() -> None:
    images, labels = pixel_data()
    assert fooling_rate(PixelModel(0), PixelModel(1), images, labels, 0.0) == (0.0, 0.0, 3)
    rate_a, rate_b, n = fooling_rate(PixelModel(0), PixelModel(1), images[5:6], labels[5:6], 0.1)
    assert n == 0 and math.isnan(rate_a) and math.isnan(rate_b)
    with pytest.raises(LTPAError):
        fooling_rate(PixelModel(0), PixelModel(1), images, labels, 0.1, attack="cw")


def test_attack_accuracy_of_a_pixel_model() -> None:
    images, labels = pixel_data()
    a = PixelModel(0)
    assert attack_accuracy(a, images, labels, 0.0) == pytest.approx(4 / 7)  # cases 0, 2, 3, 4
    assert attack_accuracy(a, images, labels, 0.1, "fgsm", batch_size=2) == pytest.approx(2 / 7)  # 2, 3
    gen = torch.Generator().manual_seed(0)
    assert attack_accuracy(a, images, labels, 0.1, "pgd10", generator=gen) == pytest.approx(2 / 7)
    assert attack_accuracy(a, images, labels, 0.6, "fgsm") == 0.0


# --- transfer -------------------------------------------------------------------------------------------------


def blobs(n: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    centre = torch.ones(
        dim
    )  # the class shift is shared by every feature: PCA's first component after scaling
    x = torch.randn(n, dim, generator=g) + (2 * y[:, None] - 1) * centre
    return x, y


def test_linear_probe_separates_gaussian_blobs() -> None:
    train_x, train_y = blobs(200, 10, seed=0)
    test_x, test_y = blobs(200, 10, seed=1)
    assert linear_probe(train_x, train_y, test_x, test_y) > 0.95
    assert linear_probe(train_x, train_y, test_x, test_y, dim=3) > 0.95
    # labels unrelated to the features: chance
    assert (
        linear_probe(
            train_x, train_y, test_x, test_y[torch.randperm(200, generator=torch.Generator().manual_seed(0))]
        )
        < 0.75
    )


def test_fit_probe_reduces_to_the_requested_dimension() -> None:
    train_x, train_y = blobs(60, 10, seed=0)
    probe = fit_probe(train_x, train_y, dim=3)
    assert probe.named_steps["pca"].n_components_ == 3
    assert probe.named_steps["logreg"].coef_.shape == (1, 3)
    assert "pca" not in fit_probe(train_x, train_y).named_steps
    with pytest.raises(LTPAError):
        fit_probe(train_x, train_y, dim=11)
    with pytest.raises(LTPAError):
        fit_probe(train_x, torch.zeros(60, dtype=torch.long))


def test_pixel_features_flatten_in_unit_range() -> None:
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    out = pixel_features(images)
    assert out.shape == (2, 48) and out.dtype == torch.float32
    assert torch.allclose(out, images.flatten(1).float() / 255.0)


# --- model maps and features (tiny untrained models) ----------------------------------------------------------


def tiny(name: str) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, width=0.0625, num_classes=5, img_size=16, drop_scale=0.0).eval()


def test_model_maps_attention_model_takes_the_deepest_level() -> None:
    model = tiny("vgg_att2_concat_pc")
    x = torch.rand(5, 3, 16, 16)
    logits, maps = model_maps(model, x, batch_size=2)
    with torch.no_grad():
        out = model.forward_attention(x)
    assert torch.allclose(logits, out.logits, atol=1e-5)
    assert torch.allclose(maps, out.maps[-1], atol=1e-6)
    _, first = model_maps(model, x, level=0, size=16)
    assert first.shape == (5, 16, 16)
    assert not maps.requires_grad and not logits.requires_grad


def test_model_maps_vgg_gap_gives_the_predicted_class_cam() -> None:
    model = tiny("vgg_gap")
    x = torch.rand(4, 3, 16, 16)
    logits, maps = model_maps(model, x)
    with torch.no_grad():
        cam = model.cam(x, model(x).argmax(1))
    assert torch.allclose(maps, cam, atol=1e-5)
    assert logits.shape == (4, 5)


def test_plain_vgg_needs_gradcam() -> None:
    model = tiny("vgg")
    x = torch.rand(3, 3, 16, 16)
    with pytest.raises(LTPAError):
        model_maps(model, x)
    maps = gradcam_maps(model, x, batch_size=2, backend="own")
    assert maps.shape == (3, 16, 16)
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0


def test_features_are_the_pre_logits() -> None:
    model = tiny("vgg_att2_concat_pc")
    x = torch.rand(3, 3, 16, 16)
    out = features(model, x, batch_size=2)
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(x), pre_logits=True)
    assert out.shape == (3, model.num_features)
    assert torch.allclose(out, expected, atol=1e-5)
