"""Weakly supervised segmentation from attention maps, scored by the Jaccard index (method §4.3).

Paper: "Learn To Pay Attention", Jetley et al., ICLR 2018, https://arxiv.org/abs/1804.02391. The paper
binarises attention maps of a CIFAR-trained (VGG-att2)-concat-pc on the Object Discovery subsets (Airplane100,
Car100, Horse100) and reports the Jaccard index against the ground truth; its binarisation rule is unknown
(method §6.3), so every rule is a parameter here and each is reported:

* each level's map, and the mean of the levels, is bilinearly upsampled to the image and min-max scaled per
  image (a constant map becomes all ones, i.e. the whole image);
* binarised with ``map >= t`` by a fixed ``t`` (default 0.5), by Otsu's threshold per image, and by the best
  threshold per class ("oracle": it looks at the ground truth, so it is an upper bound, reported separately;
  its threshold grid contains the fixed one, so it never scores below it);
* the Jaccard index ``|P ∩ G| / |P ∪ G|`` (1 when both are empty) is computed per image and averaged per
  class; the ``mean`` class is the mean over classes.

Baselines in the same table: CAM (a ``vgg_gap`` checkpoint), Grad-CAM of every model, a centred Gaussian and
the uniform map (which binarises to the whole image: its Jaccard is the object's area fraction).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ltpa.errors import LTPAError
from ltpa.evaluate._data import MASK_DATASETS, EvalData, EvalSettings, load_checkpoints, masked_data
from ltpa.evaluate._maps import compute_maps, gaussian_prior, normalize_minmax, uniform_map
from ltpa.evaluate._results import format_table, save_figure, write_csv
from ltpa.models import LTPAModel
from ltpa.utils import log as logger
from ltpa.utils import safe_filename

__all__ = [
    "MASK_DATASETS",
    "SEGMENT_COLUMNS",
    "THRESHOLD_RULES",
    "SegmentConfig",
    "binarize",
    "jaccard",
    "otsu_threshold",
    "plot_segmentation",
    "run_segment",
    "score_segmentation",
    "segmentation_figure",
    "segmentation_maps",
    "threshold_grid",
]

SEGMENT_COLUMNS: tuple[str, ...] = ("model", "map", "level", "threshold_rule", "class", "jaccard")
IMAGE_COLUMNS: tuple[str, ...] = (
    "model",
    "map",
    "level",
    "threshold_rule",
    "index",
    "class",
    "threshold",
    "jaccard",
)
THRESHOLD_RULES: tuple[str, ...] = ("fixed", "otsu", "oracle")
BASELINE = "baseline"  # the model column of the model-free baselines


def jaccard(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Jaccard index (intersection over union) per image; 1 where both masks are empty.

    Shape:
        - pred, target: (N, H, W) bool
        - output: (N,) float
    """
    pred, target = pred.flatten(1).bool(), target.flatten(1).bool()
    inter = (pred & target).sum(dim=1).float()
    union = (pred | target).sum(dim=1).float()
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(union))


def binarize(maps: torch.Tensor, threshold: float | torch.Tensor) -> torch.Tensor:
    """``maps >= threshold``, with one threshold for all or one per image.

    Shape:
        - maps: (N, H, W); threshold: float or (N,)
        - output: (N, H, W) bool
    """
    if isinstance(threshold, torch.Tensor) and threshold.dim() == 1:
        threshold = threshold.to(maps.device).view(-1, *([1] * (maps.dim() - 1)))
    return maps >= threshold


def otsu_threshold(maps: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """Otsu's threshold per image for maps in [0, 1]: the bin edge that maximises the between-class variance
    of a ``bins``-bin histogram (Otsu 1979). Foreground is ``map >= threshold``; a map whose values fill a
    single bin gets threshold 0 (all foreground).

    Shape:
        - maps: (N, H, W) in [0, 1]
        - output: (N,)
    """
    flat = maps.flatten(1).float().clamp(0.0, 1.0)
    index = (flat * bins).long().clamp_(max=bins - 1)  # bin j holds [j / bins, (j + 1) / bins)
    hist = torch.zeros(flat.shape[0], bins, device=flat.device).scatter_add_(1, index, torch.ones_like(flat))
    p = hist / hist.sum(dim=1, keepdim=True)
    centers = (torch.arange(bins, device=flat.device, dtype=torch.float32) + 0.5) / bins
    omega = p.cumsum(dim=1)  # weight of the background class (bins 0..k)
    mu = (p * centers).cumsum(dim=1)
    mu_total = mu[:, -1:]
    denom = omega * (1.0 - omega)
    valid = denom > 1e-12
    between = torch.where(
        valid, (mu_total * omega - mu) ** 2 / denom.clamp_min(1e-12), torch.full_like(denom, -1.0)
    )
    best = between.argmax(dim=1)
    threshold = (best + 1).float() / bins
    return torch.where(valid.any(dim=1), threshold, torch.zeros_like(threshold))


def threshold_grid(fixed: float = 0.5, steps: int = 101) -> torch.Tensor:
    """The oracle's candidate thresholds: ``steps`` values evenly spread over [0, 1], plus ``fixed``."""
    grid = torch.cat(
        [torch.linspace(0.0, 1.0, steps, dtype=torch.float64), torch.tensor([float(fixed)]).double()]
    )
    return torch.unique(grid)


def score_segmentation(
    maps: torch.Tensor,
    masks: torch.Tensor,
    labels: torch.Tensor,
    *,
    fixed: float = 0.5,
    grid: torch.Tensor | None = None,
    bins: int = 256,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Jaccard index per image under each threshold rule.

    Args:
        maps: maps in [0, 1] at the masks' resolution (see :func:`segmentation_maps`).
        masks: ground truth.
        labels: class of each image (the oracle picks one threshold per class).
        fixed: the fixed threshold.
        grid: the oracle's candidates (default :func:`threshold_grid`); ``fixed`` is always added.
        bins: histogram bins of Otsu's method.

    Returns:
        ``{rule: (jaccard (N,), threshold (N,))}`` for ``fixed``, ``otsu`` and ``oracle``.

    Shape:
        - maps: (N, H, W); masks: (N, H, W) bool; labels: (N,)
    """
    if maps.shape != masks.shape:
        raise ValueError(f"maps {tuple(maps.shape)} and masks {tuple(masks.shape)} differ in shape")
    n = maps.shape[0]
    masks = masks.bool()
    grid = (
        threshold_grid(fixed)
        if grid is None
        else torch.unique(torch.cat([grid.double(), torch.tensor([fixed]).double()]))
    )
    scores: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    scores["fixed"] = (jaccard(binarize(maps, fixed), masks), torch.full((n,), float(fixed)))
    otsu = otsu_threshold(maps, bins)
    scores["otsu"] = (jaccard(binarize(maps, otsu), masks), otsu)
    sweep = torch.stack([jaccard(binarize(maps, float(t)), masks) for t in grid], dim=1)  # (N, T)
    oracle_j = torch.empty(n)
    oracle_t = torch.empty(n)
    for c in labels.unique():
        members = labels == c
        best = sweep[members].mean(dim=0).argmax()
        oracle_j[members] = sweep[members, best]
        oracle_t[members] = grid[best]
    scores["oracle"] = (oracle_j, oracle_t)
    return scores


def segmentation_maps(
    model: LTPAModel,
    images: torch.Tensor,
    *,
    size: int | None = None,
    gradcam: bool = True,
    gradcam_backend: str = "auto",
    batch_size: int = 128,
    progress: bool | None = None,
) -> dict[tuple[str, str], torch.Tensor]:
    """The model's maps for segmentation: each level, their mean (for two or more levels) and Grad-CAM,
    upsampled to ``size`` and min-max scaled per image.

    Shape:
        - images: (N, 3, S, S) uint8 or float [0, 1]
        - each map: (N, size, size) in [0, 1]
    """
    raw = compute_maps(
        model,
        images,
        size=size,
        batch_size=batch_size,
        gradcam=gradcam,
        gradcam_backend=gradcam_backend,
        progress=progress,
    )
    maps = {key: normalize_minmax(m) for key, m in raw.items()}
    own = [key for key in maps if key[0] != "gradcam"]
    if len(own) >= 2:
        maps[(own[0][0], "mean")] = normalize_minmax(torch.stack([maps[k] for k in own]).mean(dim=0))
    return dict(sorted(maps.items(), key=lambda kv: (kv[0][0] == "gradcam", kv[0][1] == "mean")))


def plot_segmentation(
    images: torch.Tensor,
    maps: torch.Tensor,
    masks: torch.Tensor,
    *,
    threshold: float,
    path: str | os.PathLike[str],
    titles: Sequence[str] = (),
    suptitle: str = "",
    map_name: str = "map",
) -> Path:
    """Writes :func:`segmentation_figure` as a PNG (atomically)."""
    figure = segmentation_figure(
        images, maps, masks, threshold=threshold, titles=titles, suptitle=suptitle, map_name=map_name
    )
    return save_figure(figure, path)


def segmentation_figure(
    images: torch.Tensor,
    maps: torch.Tensor,
    masks: torch.Tensor,
    *,
    threshold: float,
    titles: Sequence[str] = (),
    suptitle: str = "",
    map_name: str = "map",
) -> Any:
    """Example figure: one row per image (labelled at its left) with the image, the map (with a colour bar),
    its binary mask with its Jaccard index, and the ground truth; a matplotlib ``Figure``.

    Shape:
        - images: (R, 3, S, S) uint8; maps: (R, S, S) in [0, 1]; masks: (R, S, S) bool
    """
    from matplotlib.figure import Figure

    rows = images.shape[0]
    longest = max((len(line) for t in titles for line in t.splitlines()), default=0)
    label_width = 0.2 + 0.062 * longest
    fig = Figure(figsize=(label_width + 8.6, 2.0 * rows + 0.7), layout="constrained")
    grid = fig.subplots(rows, 5, squeeze=False, width_ratios=[label_width / 2.0, 1, 1, 1, 1])
    pred = binarize(maps, threshold)
    scores = jaccard(pred, masks)
    headings = ["image", f"{map_name} (scaled to [0, 1])", f"{map_name} >= {threshold:g}", "ground truth"]
    shown = None
    for r in range(rows):
        grid[r][0].axis("off")
        label = titles[r] if r < len(titles) else ""
        grid[r][0].text(1.0, 0.5, label, fontsize=8, ha="right", va="center", transform=grid[r][0].transAxes)
        panels = [
            (images[r].permute(1, 2, 0).numpy(), None),
            (maps[r].numpy(), "jet"),
            (pred[r].numpy(), "gray"),
            (masks[r].numpy(), "gray"),
        ]
        for c, (ax, (array, cmap)) in enumerate(zip(grid[r][1:], panels)):
            image = ax.imshow(
                array, cmap=cmap, vmin=0 if cmap else None, vmax=1 if cmap else None, interpolation="nearest"
            )
            if c == 1:
                shown = image
            if r == 0:
                ax.set_title(headings[c], fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        grid[r][3].set_xlabel(f"Jaccard {scores[r]:.2f}", fontsize=8)
    if shown is not None:
        bar = fig.colorbar(shown, ax=grid[:, 2], shrink=min(0.8, 2.4 / max(rows, 1)), location="right")
        bar.set_label("map value", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return fig


@dataclass
class SegmentConfig(EvalSettings):
    """Settings of ``ltpa segment``.

    Attributes:
        data: a dataset with ground-truth masks (``object-discovery``, ``cluttered-digits``,
            ``cluttered-fashion``).
        root: its folder.
        split: split scored.
        limit: only the first N images.
        data_options: further ``build_dataset`` options.
        size: side at which maps and masks are compared (default: the largest model input side).
        threshold: the fixed threshold on min-max scaled maps.
        gradcam: add Grad-CAM of every model.
        gradcam_backend: ``auto``, ``package`` or ``own``.
        gaussian_sigma: width of the centred Gaussian baseline, as a fraction of the side.
        examples: images in each example figure.
        batch_size: images per batch.
        device: ``cpu``, ``cuda`` or ``auto``.
        which: ``last`` or ``best`` checkpoint of a run folder.
        out: folder for ``segment.csv``, ``segment_images.csv`` and the figures.
        progress: progress bars (None: on a terminal).
    """

    data: str = "object-discovery"
    size: int | None = None
    threshold: float = 0.5
    gradcam: bool = True
    gradcam_backend: str = "auto"
    gaussian_sigma: float = 0.25
    examples: int = 6
    batch_size: int = 128
    out: str = "runs/segment"


def _example_indices(labels: torch.Tensor, count: int) -> torch.Tensor:
    """Up to ``count`` image indices, taking the classes in turn (first images of each)."""
    per_class = [torch.nonzero(labels == c).flatten().tolist() for c in labels.unique()]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < count and any(depth < len(m) for m in per_class):
        chosen.extend(m[depth] for m in per_class if depth < len(m))
        depth += 1
    return torch.tensor(sorted(chosen[:count]), dtype=torch.long)


def _rows_for(
    model: str,
    kind: str,
    level: str,
    maps: torch.Tensor,
    data: EvalData,
    masks: torch.Tensor,
    threshold: float,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    scores = score_segmentation(maps, masks, data.labels, fixed=threshold)
    class_rows, image_rows = [], []
    present = [int(c) for c in data.labels.unique()]
    for rule in THRESHOLD_RULES:
        values, thresholds = scores[rule]
        base = {"model": model, "map": kind, "level": level, "threshold_rule": rule}
        means = [float(values[data.labels == c].mean()) for c in present]
        class_rows += [{**base, "class": data.classes[c], "jaccard": m} for c, m in zip(present, means)]
        class_rows.append({**base, "class": "mean", "jaccard": sum(means) / len(means)})
        image_rows += [
            {
                **base,
                "index": i,
                "class": data.classes[int(label)],
                "threshold": float(t),
                "jaccard": float(j),
            }
            for i, (label, t, j) in enumerate(zip(data.labels, thresholds, values))
        ]
    return class_rows, image_rows


def run_segment(checkpoints: Sequence[str | os.PathLike[str]], config: SegmentConfig) -> list[dict[str, Any]]:
    """``ltpa segment``: Jaccard index of binarised maps of each checkpoint and of the baselines.

    Writes ``segment.csv`` (``model,map,level,threshold_rule,class,jaccard``: per-class means and their
    ``mean``), ``segment_images.csv`` (per image, with the threshold used) and ``segment_<run>.png`` /
    ``segment_baseline.png`` example figures under ``config.out``, and prints the ``mean`` rows.
    """
    models = load_checkpoints(checkpoints, which=config.which, device=config.device)
    if not 0.0 <= config.threshold <= 1.0:
        raise LTPAError(f"the fixed threshold applies to maps scaled to [0, 1]; got {config.threshold}")
    data, masks, size = masked_data(models, config, "segment")
    out = Path(config.out)
    rows: list[dict[str, Any]] = []
    image_rows: list[dict[str, Any]] = []
    examples = _example_indices(data.labels, config.examples)
    titles = [f"{config.split} image {int(i)}\nclass {data.classes[int(data.labels[i])]}" for i in examples]

    def add(model: str, kind: str, level: str, maps: torch.Tensor) -> None:
        class_rows, per_image = _rows_for(model, kind, level, maps, data, masks, config.threshold)
        rows.extend(class_rows)
        image_rows.extend(per_image)

    where = f"{config.data} ({config.split} split)"

    def figure(name: str, maps: torch.Tensor, title: str, map_name: str) -> None:
        if len(examples):
            plot_segmentation(
                data.images[examples], maps[examples], masks[examples], threshold=config.threshold,
                path=out / f"segment_{safe_filename(name)}.png", titles=titles, map_name=map_name,
                suptitle=f"{title} on {where}: {len(examples)} of n={len(data)} images",
            )  # fmt: skip

    for model in models:
        maps = segmentation_maps(
            model,
            data.images,
            size=size,
            gradcam=config.gradcam,
            gradcam_backend=config.gradcam_backend,
            batch_size=config.batch_size,
            progress=config.progress,
        )
        if not maps:
            continue
        for (kind, level), m in maps.items():
            add(model.run_name, kind, level, m)
        (kind, level), shown = _primary(maps)
        figure(model.run_name, shown, f"{model.run_name}: {kind} {level}", f"{kind} {level}")
    n = len(data)
    prior = normalize_minmax(gaussian_prior(size, n, sigma=config.gaussian_sigma))
    add(BASELINE, "gaussian", "-", prior)
    add(BASELINE, "uniform", "-", normalize_minmax(uniform_map(size, n)))
    figure(BASELINE, prior, "centred Gaussian prior", "Gaussian prior")
    write_csv(out / "segment.csv", rows, SEGMENT_COLUMNS)
    write_csv(out / "segment_images.csv", image_rows, IMAGE_COLUMNS)
    summary = [r for r in rows if r["class"] == "mean"]
    logger.info(format_table(summary, ["model", "map", "level", "threshold_rule", "jaccard"]))
    logger.info(
        f"(oracle = best threshold per class, an upper bound)\nwrote {out / 'segment.csv'} and segment_*.png"
    )
    return rows


def _primary(maps: dict[tuple[str, str], torch.Tensor]) -> tuple[tuple[str, str], torch.Tensor]:
    """The map of the example figure: the mean of the levels, else the deepest own level, else Grad-CAM."""
    own = [key for key in maps if key[0] != "gradcam"]
    means = [key for key in own if key[1] == "mean"]
    key = means[0] if means else (own[-1] if own else next(iter(maps)))
    return key, maps[key]
