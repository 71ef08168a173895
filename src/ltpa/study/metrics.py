"""Map, robustness and transfer measurements of the study, chosen so that map sharpness earns nothing.

Paper: "Learn To Pay Attention", Jetley et al., ICLR 2018, https://arxiv.org/abs/1804.02391 (method §4.3-§4.5).

Attention maps differ in how peaked they are: a softmax over conv13 is sharp, a CAM or a Grad-CAM is broad.
Scores that read a map as a distribution (attention mass in the mask) or binarise it at a fixed value reward
that sharpness rather than where the map points. The map scores here only use the *order* of a map's pixels:

* :func:`pixel_auc_ap`: per-image ROC-AUC and average precision of the map's values as a score for "this pixel
  is on the object" (invariant to any increasing transform of the map);
* :func:`iou_at_area`: IoU with the mask after keeping each map's top ``area_fraction`` of pixels, the same
  pixel area for every map; :func:`area_matched_threshold` chooses that area on validation maps;
* the pointing game (:func:`ltpa.evaluate.localization.pointing_hits`).

:func:`reference_maps` gives the maps without learning (uniform, a centred Gaussian, image brightness),
:func:`model_maps` and :func:`gradcam_maps` a model's maps, :func:`fooling_rate` and :func:`attack_accuracy`
robustness to FGSM / PGD-10, and :func:`linear_probe` with :func:`features` / :func:`pixel_features` transfer
at an equal feature dimension.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ltpa.errors import LTPAError
from ltpa.evaluate import (
    batch_slices,
    eval_mode,
    gaussian_prior,
    grad_cam,
    model_device,
    to_model_input,
    uniform_map,
    upsample,
)
from ltpa.evaluate.localization import pointing_hits
from ltpa.evaluate.robustness import fgsm, pgd
from ltpa.evaluate.transfer import extract_features
from ltpa.models import LTPAModel
from ltpa.utils import to_unit_float

__all__ = [
    "AREA_GRID",
    "ATTACKS",
    "REFERENCE_KINDS",
    "area_matched_threshold",
    "attack_accuracy",
    "attacked_predictions",
    "features",
    "fit_probe",
    "fooling_rate",
    "gradcam_maps",
    "iou_at_area",
    "level_maps",
    "linear_probe",
    "map_metrics",
    "model_maps",
    "pixel_auc_ap",
    "pixel_features",
    "reference_maps",
    "top_area_masks",
]

# Area fractions area_matched_threshold chooses from: 0.05, 0.10, ..., 0.60.
AREA_GRID: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 13))
REFERENCE_KINDS: tuple[str, ...] = ("uniform", "gaussian", "intensity")
ATTACKS: tuple[str, ...] = ("fgsm", "pgd10")


def _check_pair(maps: torch.Tensor, masks: torch.Tensor) -> None:
    if maps.dim() != 3 or maps.shape != masks.shape:
        raise ValueError(
            f"maps {tuple(maps.shape)} and masks {tuple(masks.shape)} must both be (N, H, W) of one shape"
        )


def _tie_groups(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For rows sorted along dim 1: the first and last index of each position's run of equal values.

    Shape:
        - values: (N, P) sorted per row
        - output: two (N, P) int64 tensors
    """
    n, p = values.shape
    idx = torch.arange(p, device=values.device).expand(n, p)
    new_run = torch.ones_like(values, dtype=torch.bool)
    new_run[:, 1:] = values[:, 1:] != values[:, :-1]
    end_run = torch.ones_like(values, dtype=torch.bool)
    end_run[:, :-1] = new_run[:, 1:]
    first = torch.where(new_run, idx, torch.zeros_like(idx)).cummax(dim=1).values
    last_rev = torch.where(end_run, idx, torch.full_like(idx, p)).flip(1).cummin(dim=1).values
    return first, last_rev.flip(1)


def pixel_auc_ap(maps: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image ROC-AUC and average precision of the map's values as a score for "pixel on the object".

    Vectorised, and equal to ``sklearn.metrics.roc_auc_score`` / ``average_precision_score`` on each image
    (tests check this): ties count half in the AUC (average ranks, Mann-Whitney U), and the AP steps through
    the distinct map values only (a tie group enters the precision-recall curve at once). So a constant map
    scores AUC 0.5 and AP equal to the mask's area fraction, a map equal to the mask 1 and 1, and the inverted
    mask AUC 0. Both depend only on the order of the map's values, never on its sharpness.

    Args:
        maps: maps already at the masks' resolution (any scale).
        masks: object footprints.

    Returns:
        ``(auc, ap)``, NaN for images whose mask is empty or covers the whole image.

    Shape:
        - maps: (N, H, W); masks: (N, H, W) bool
        - output: two (N,) float64 tensors
    """
    _check_pair(maps, masks)
    scores = maps.detach().flatten(1).double()
    labels = masks.flatten(1).bool()
    n_pos = labels.sum(dim=1).double()
    n_neg = labels.shape[1] - n_pos
    defined = (n_pos > 0) & (n_neg > 0)
    nan = torch.full_like(n_pos, math.nan)

    # AUC: rank-sum of the positives with average ranks over ties.
    asc, order = scores.sort(dim=1, stable=True)
    pos = labels.gather(1, order)
    first, last = _tie_groups(asc)
    ranks = (first + last).double() / 2.0 + 1.0
    rank_sum = (ranks * pos).sum(dim=1)
    auc = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg).clamp_min(1.0)

    # AP: sum over positives of the precision at the end of their tie group (in descending order).
    desc, order = scores.sort(dim=1, descending=True, stable=True)
    pos = labels.gather(1, order)
    _, last = _tie_groups(desc)
    tp = pos.double().cumsum(dim=1)
    precision_at_end = tp.gather(1, last) / (last + 1).double()
    ap = (precision_at_end * pos).sum(dim=1) / n_pos.clamp_min(1.0)
    return torch.where(defined, auc, nan), torch.where(defined, ap, nan)


def _keep_count(area_fraction: float, pixels: int) -> int:
    if not (math.isfinite(area_fraction) and 0.0 <= area_fraction <= 1.0):
        raise LTPAError(f"the area fraction must be in [0, 1], got {area_fraction!r}")
    return math.floor(area_fraction * pixels + 0.5)


def top_area_masks(maps: torch.Tensor, area_fraction: float) -> torch.Tensor:
    """Each map binarised to its ``round(area_fraction * H * W)`` highest pixels (half rounds up).

    Ties are broken by a stable sort (the lower flat index first), so exactly that many pixels are kept in
    every image, whatever the map's values.

    Shape:
        - maps: (N, H, W)
        - output: (N, H, W) bool
    """
    flat = maps.detach().flatten(1)
    k = _keep_count(area_fraction, flat.shape[1])
    order = flat.sort(dim=1, descending=True, stable=True).indices[:, :k]
    kept = torch.zeros_like(flat, dtype=torch.bool)
    kept.scatter_(1, order, True)
    return kept.view(maps.shape)


def iou_at_area(maps: torch.Tensor, masks: torch.Tensor, area_fraction: float) -> torch.Tensor:
    """Per-image IoU of the map's top ``area_fraction`` of pixels (:func:`top_area_masks`) with the mask.

    Every map keeps the same pixel area, so a sharp map and a broad one are compared on where they point, not
    on how much they cover. NaN where both the kept area and the mask are empty.

    Shape:
        - maps: (N, H, W); masks: (N, H, W) bool
        - output: (N,) float
    """
    _check_pair(maps, masks)
    kept = top_area_masks(maps, area_fraction).flatten(1)
    truth = masks.flatten(1).bool()
    inter = (kept & truth).sum(dim=1).float()
    union = (kept | truth).sum(dim=1).float()
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.full_like(union, math.nan))


def area_matched_threshold(
    maps: torch.Tensor, masks: torch.Tensor, *, grid: Sequence[float] = AREA_GRID
) -> float:
    """The area fraction from ``grid`` with the highest mean :func:`iou_at_area` on these (validation) maps.

    Choose it on validation maps and score test maps at it. Because every map is binarised to the same pixel
    area, map sharpness stays out of the comparison (a fixed value threshold would let a peaked map keep a few
    pixels and a flat one most of the image). Ties go to the smallest area.

    Shape:
        - maps: (N, H, W); masks: (N, H, W) bool
    """
    if not grid:
        raise LTPAError("the area grid is empty")
    best, best_iou = float(grid[0]), -math.inf
    for area in sorted(grid):
        mean = float(torch.nanmean(iou_at_area(maps, masks, float(area))))
        if mean > best_iou:
            best, best_iou = float(area), mean
    return best


def _as_float_images(images: torch.Tensor) -> torch.Tensor:
    return to_unit_float(images)


def reference_maps(images: torch.Tensor, kind: str, size: int, *, sigma: float = 0.25) -> torch.Tensor:
    """Maps without learning, at side ``size``.

    * ``"uniform"``: every position equal (:func:`ltpa.evaluate.uniform_map`);
    * ``"gaussian"``: a centred Gaussian of width ``sigma`` times the side (:func:`ltpa.evaluate.gaussian_prior`);
    * ``"intensity"``: the image's brightness, the mean over RGB (on cluttered-fashion the object is brighter
      than the background, but so are the clutter fragments), bilinearly resized.

    Shape:
        - images: (B, 3, H, W) uint8 or float [0, 1]
        - output: (B, size, size) float
    """
    batch = int(images.shape[0])
    if kind == "uniform":
        return uniform_map(size, batch)
    if kind == "gaussian":
        return gaussian_prior(size, batch, sigma=sigma)
    if kind == "intensity":
        return upsample(_as_float_images(images).mean(dim=1), size)
    raise LTPAError(f"unknown reference map {kind!r}; choose one of {', '.join(REFERENCE_KINDS)}")


def map_metrics(maps: torch.Tensor, masks: torch.Tensor, area_fraction: float) -> dict[str, torch.Tensor]:
    """Per-image map scores that do not reward sharpness: ``pointing``, ``auc``, ``ap`` and ``iou`` (at
    ``area_fraction``, see :func:`area_matched_threshold`).

    Maps at another resolution than the masks are bilinearly upsampled to it first.

    Shape:
        - maps: (N, h, w); masks: (N, H, W) bool
        - each output: (N,)
    """
    if maps.dim() == 3 and masks.dim() == 3 and maps.shape[-2:] != masks.shape[-2:]:
        maps = upsample(maps.float(), (int(masks.shape[-2]), int(masks.shape[-1])))
    _check_pair(maps, masks)
    masks = masks.bool()
    auc, ap = pixel_auc_ap(maps, masks)
    return {
        "pointing": pointing_hits(maps, masks),
        "auc": auc,
        "ap": ap,
        "iou": iou_at_area(maps, masks, area_fraction),
    }


def _input_size(model: nn.Module, images: torch.Tensor) -> int:
    return int(getattr(model, "img_size", images.shape[-1]))


def model_maps(
    model: LTPAModel, images: torch.Tensor, *, batch_size: int = 500, level: int = -1, size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and one map per image from ``model.forward_attention`` (eval mode, no gradients).

    For attention models the map is attended level ``level`` (default the last, deepest one); for VGG-GAP it
    is the class activation map of the predicted class (its only map). Models without maps (the plain VGG)
    need :func:`gradcam_maps`.

    Args:
        model: an ``LTPAModel`` taking [0, 1] images.
        images: fed at the model's input side.
        batch_size: images per forward pass.
        level: index into ``forward_attention(x).maps``.
        size: side to upsample the maps to (None: the level's own resolution).

    Shape:
        - images: (N, 3, H, W) uint8 or float [0, 1]
        - output: logits (N, K) and maps (N, h, w) (or (N, size, size)), on the CPU
    """
    logits, levels = level_maps(model, images, batch_size=batch_size, size=size)
    return logits, levels[level]


def level_maps(
    model: LTPAModel, images: torch.Tensor, *, batch_size: int = 500, size: int | None = None
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and every map of ``forward_attention`` (all attended levels, or VGG-GAP's CAM) in one pass.

    Shape:
        - images: (N, 3, H, W) uint8 or float [0, 1]
        - output: logits (N, K) and one (N, h_s, w_s) map per level (or (N, size, size)), on the CPU
    """
    device = model_device(model)
    side = _input_size(model, images)
    logits: list[torch.Tensor] = []
    maps: list[list[torch.Tensor]] = []
    with torch.no_grad(), eval_mode(model):
        for sl in batch_slices(len(images), batch_size):
            out = model.forward_attention(to_model_input(images[sl], side, device))
            if not out.maps:
                name = getattr(model, "model_name", type(model).__name__)
                raise LTPAError(f"{name} has no attention maps; use gradcam_maps for it")
            logits.append(out.logits.float().cpu())
            maps.append(
                [(upsample(m.float(), size) if size is not None else m.float()).cpu() for m in out.maps]
            )
    if not logits:
        raise LTPAError("no images to compute maps on")
    return torch.cat(logits), [torch.cat(level) for level in zip(*maps)]


def gradcam_maps(
    model: nn.Module,
    images: torch.Tensor,
    *,
    batch_size: int = 500,
    size: int | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Grad-CAM of the predicted class (:func:`ltpa.evaluate.grad_cam`), for models without their own maps.

    Shape:
        - images: (N, 3, H, W) uint8 or float [0, 1]
        - output: (N, S, S) in [0, 1] at the model's input side S (or ``size``), on the CPU
    """
    device = model_device(model)
    side = _input_size(model, images)
    maps = []
    for sl in batch_slices(len(images), batch_size):
        cam = grad_cam(model, to_model_input(images[sl], side, device), backend=backend)
        maps.append((upsample(cam, size) if size is not None else cam).cpu())
    if not maps:
        raise LTPAError("no images to compute maps on")
    return torch.cat(maps)


def _predict(model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    device = model_device(model)
    side = _input_size(model, images)
    preds = []
    with torch.no_grad(), eval_mode(model):
        for sl in batch_slices(len(images), batch_size):
            preds.append(model(to_model_input(images[sl], side, device)).argmax(dim=1).cpu())
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def attacked_predictions(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    attack: str,
    batch_size: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Predictions on the model's own adversarial images (``"fgsm"``, or ``"pgd10"``: PGD with 10 steps and a
    random start drawn from ``generator``), ``eps`` in [0, 1] pixel units.

    Shape:
        - images: (N, 3, H, W) uint8 or float [0, 1]; labels: (N,); output: (N,) on the CPU
    """
    if attack not in ATTACKS:
        raise LTPAError(f"unknown attack {attack!r}; choose one of {', '.join(ATTACKS)}")
    device = model_device(model)
    side = _input_size(model, images)
    preds = []
    for sl in batch_slices(len(images), batch_size):
        x = to_model_input(images[sl], side, device)
        y = labels[sl].to(device)
        if attack == "fgsm":
            adv = fgsm(model, x, y, eps)
        else:
            adv = pgd(model, x, y, eps, steps=10, generator=generator)
        with torch.no_grad(), eval_mode(model):
            preds.append(model(adv).argmax(dim=1).cpu())
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def attack_accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    attack: str = "fgsm",
    *,
    batch_size: int = 500,
    generator: torch.Generator | None = None,
) -> float:
    """Accuracy on the model's own adversarial images (``attack`` ``"fgsm"`` or ``"pgd10"``, ``eps`` in [0, 1]
    pixel units; at eps 0 the clean accuracy).

    Shape:
        - images: (N, 3, H, W) uint8 or float [0, 1]; labels: (N,)
    """
    if len(images) == 0:
        return math.nan
    preds = attacked_predictions(model, images, labels, eps, attack, batch_size, generator)
    return float((preds == labels.cpu()).float().mean())


def fooling_rate(
    model_a: nn.Module,
    model_b: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    eps: float,
    *,
    attack: str = "fgsm",
    batch_size: int = 500,
    generator: torch.Generator | None = None,
) -> tuple[float, float, int]:
    """Paired fooling rates: among the images that *both* models classify correctly on clean input, the share
    each model misclassifies after its own attack (``"fgsm"`` or ``"pgd10"``).

    Restricting both rates to the same images keeps a more accurate model from being charged for images the
    other never got right.

    Returns:
        ``(rate_a, rate_b, n_both_correct)``; the rates are NaN when no image is right for both.

    Shape:
        - images: (N, 3, H, W) uint8 or float [0, 1]; labels: (N,)
    """
    labels = labels.cpu().long()
    both = (_predict(model_a, images, batch_size) == labels) & (
        _predict(model_b, images, batch_size) == labels
    )
    n = int(both.sum())
    if n == 0:
        return math.nan, math.nan, 0
    idx = both.nonzero().flatten()
    sub_images, sub_labels = images[idx], labels[idx]
    rates = []
    for model in (model_a, model_b):
        preds = attacked_predictions(model, sub_images, sub_labels, eps, attack, batch_size, generator)
        rates.append(float((preds != sub_labels).float().mean()))
    return rates[0], rates[1], n


def features(model: LTPAModel, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Frozen pre-logits features ``model.forward_head(model.forward_features(x), pre_logits=True)`` (eval
    mode, no gradients; :func:`ltpa.evaluate.transfer.extract_features`).

    Shape:
        - images: (N, 3, H, W) uint8 or float [0, 1]
        - output: (N, model.num_features) float32 on the CPU
    """
    return extract_features(model, images, batch_size=batch_size, progress=False)


def pixel_features(images: torch.Tensor) -> torch.Tensor:
    """Raw pixels in [0, 1], flattened: the transfer reference without any model.

    Shape:
        - images: (N, C, H, W) uint8 or float [0, 1]
        - output: (N, C * H * W) float32
    """
    return _as_float_images(images).flatten(1)


def fit_probe(train_x: torch.Tensor, train_y: torch.Tensor, *, dim: int | None = None, seed: int = 0) -> Any:
    """The fitted sklearn pipeline of :func:`linear_probe`: ``StandardScaler``, then ``PCA(dim)`` (fit on these
    train features) when ``dim`` is given, then ``LogisticRegression`` (lbfgs, ``C=1``, 1000 iterations).

    Raises:
        LTPAError: when ``dim`` is below 1 or above ``min(n_train, n_features)``, or the labels have one class.

    Shape:
        - train_x: (N, F); train_y: (N,)
    """
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    x = train_x.detach().double().cpu().numpy()
    y = train_y.detach().cpu().numpy()
    if np.unique(y).size < 2:
        raise LTPAError("the probe's training labels have a single class; a classifier needs at least two")
    steps: list[tuple[str, Any]] = [("scale", StandardScaler())]
    if dim is not None:
        if not 1 <= dim <= min(x.shape):
            raise LTPAError(
                f"PCA dimension must be in 1..{min(x.shape)} (min of samples, features), got {dim}"
            )
        steps.append(("pca", PCA(n_components=dim, random_state=seed)))
    steps.append(("logreg", LogisticRegression(C=1.0, solver="lbfgs", max_iter=1000, random_state=seed)))
    return Pipeline(steps).fit(x, y)


def linear_probe(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    *,
    dim: int | None = None,
    seed: int = 0,
) -> float:
    """Test accuracy of a logistic-regression probe on frozen features (:func:`fit_probe`).

    Pass as ``dim`` the smallest feature width among the compared models (and the pixel reference), so that
    every arm is probed at the same dimension after PCA.

    Shape:
        - train_x: (N, F); train_y: (N,); test_x: (M, F); test_y: (M,)
    """
    if len(test_y) == 0:
        return math.nan
    probe = fit_probe(train_x, train_y, dim=dim, seed=seed)
    preds = probe.predict(test_x.detach().double().cpu().numpy())
    return float((preds == test_y.detach().cpu().numpy()).mean())
