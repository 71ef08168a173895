"""How well attention finds the object: attention mass in the object's box and mask, and the pointing game.

Paper: "Learn To Pay Attention", Jetley et al., ICLR 2018, https://arxiv.org/abs/1804.02391 (method §4.5:
layer-10 attention covers the object, layer-13 a compact discriminative part). Scored on data whose object
footprint is known (``cluttered-digits``, ``cluttered-fashion``, ``object-discovery``).

Each map is bilinearly upsampled to the image and read as a distribution over pixels (a softmax map as it is,
a CAM shifted to be non-negative; see :func:`ltpa.evaluate.as_distribution`):

* ``mass_in_box``: the attention mass inside the object's tight bounding box;
* ``mass_in_mask``: the attention mass on the object's pixels;
* ``pointing_accuracy``: the pointing game (Zhang et al. 2016): is the map's maximum on the object? When the
  maximum is reached at several pixels, the hit counts as the share of them on the object (the expected hit
  of a random tie-break), so the uniform map scores the object's area fraction.

The uniform map scores exactly the box's share of the image (``box_area_fraction``) on ``mass_in_box``: an
attention model is better than chance where it scores above that.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ltpa.errors import LTPAError
from ltpa.evaluate._data import EvalSettings, load_checkpoints, masked_data
from ltpa.evaluate._maps import as_distribution, compute_maps, gaussian_prior, uniform_map
from ltpa.evaluate._results import format_table, save_figure, write_csv, write_json
from ltpa.utils import log as logger

__all__ = [
    "LOCALIZE_COLUMNS",
    "LocalizeConfig",
    "localization_figure",
    "localization_scores",
    "object_boxes",
    "plot_localization",
    "pointing_hits",
    "run_localize",
]

LOCALIZE_COLUMNS: tuple[str, ...] = ("model", "level", "mass_in_box", "mass_in_mask", "pointing_accuracy")
BASELINE = "baseline"


def object_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Bool masks of the objects' tight bounding boxes.

    Shape:
        - masks: (N, H, W) bool
        - output: (N, H, W) bool
    """
    from ltpa.data.boxes import box_masks, boxes_from_masks

    return box_masks(boxes_from_masks(masks), tuple(masks.shape[-2:]))


def pointing_hits(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Pointing game per image: the share of the map's maximal pixels that lie on the object.

    Shape:
        - maps: (N, H, W); masks: (N, H, W) bool
        - output: (N,) in [0, 1] (0 or 1 unless the maximum is tied)
    """
    flat = maps.flatten(1)
    top = flat == flat.max(dim=1, keepdim=True).values
    return (top & masks.flatten(1).bool()).sum(dim=1).float() / top.sum(dim=1).float()


def localization_scores(maps: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image localisation scores of maps against object masks.

    Args:
        maps: maps at the masks' resolution (any scale; read as distributions).
        masks: object footprints; every mask must be non-empty.

    Returns:
        ``{"mass_in_box", "mass_in_mask", "pointing_accuracy"}``, each (N,).

    Shape:
        - maps: (N, H, W); masks: (N, H, W) bool
    """
    if maps.shape != masks.shape:
        raise ValueError(f"maps {tuple(maps.shape)} and masks {tuple(masks.shape)} differ in shape")
    masks = masks.bool()
    dist = as_distribution(maps)
    boxes = object_boxes(masks)
    return {
        "mass_in_box": (dist * boxes).flatten(1).sum(dim=1),
        "mass_in_mask": (dist * masks).flatten(1).sum(dim=1),
        "pointing_accuracy": pointing_hits(maps, masks),
    }


@dataclass
class LocalizeConfig(EvalSettings):
    """Settings of ``ltpa localize``.

    Attributes:
        data: a dataset with ground-truth masks.
        root: its folder.
        split: split scored.
        limit: only the first N images.
        data_options: further ``build_dataset`` options.
        size: side at which maps and masks are compared (default: the largest model input side).
        gradcam: also score Grad-CAM of every model (level ``gradcam``).
        gradcam_backend: ``auto``, ``package`` or ``own``.
        gaussian_sigma: width of the centred Gaussian baseline, as a fraction of the side.
        batch_size: images per batch.
        device: ``cpu``, ``cuda`` or ``auto``.
        which: ``last`` or ``best`` checkpoint of a run folder.
        out: folder for ``localize.csv`` and ``localize.json``.
        progress: progress bars (None: on a terminal).
    """

    size: int | None = None
    gradcam: bool = True
    gradcam_backend: str = "auto"
    gaussian_sigma: float = 0.25
    batch_size: int = 128
    out: str = "runs/localize"


# What each score of localize.csv means, for a figure's legend.
SCORE_LABELS: dict[str, str] = {
    "mass_in_box": "attention mass inside the object's box",
    "mass_in_mask": "attention mass on the object's pixels",
    "pointing_accuracy": "pointing game: maximum on the object (share of images)",
}


def plot_localization(
    rows: Sequence[dict[str, Any]], path: str | os.PathLike[str], *, title: str = ""
) -> Path:
    """Writes :func:`localization_figure` as a PNG (atomically)."""
    return save_figure(localization_figure(rows, title=title), path)


def localization_figure(rows: Sequence[dict[str, Any]], *, title: str = "") -> Any:
    """Bars of the three scores for every (model, level) row, the baselines last, with the uniform map's
    score as the chance level of each; a matplotlib ``Figure``."""
    from matplotlib.figure import Figure

    labels = [f"{r['model']}\n{r['level']}" for r in rows]
    fig = Figure(figsize=(max(6.0, 0.9 * len(rows) + 1.5), 5.4), layout="constrained")
    ax = fig.add_subplot(1, 1, 1)
    width = 0.27
    colours = ("#4c72b0", "#55a868", "#c44e52")
    for j, column in enumerate(LOCALIZE_COLUMNS[2:]):
        xs = [i + (j - 1) * width for i in range(len(rows))]
        ax.bar(xs, [100 * r[column] for r in rows], width=width, label=SCORE_LABELS[column], color=colours[j])
    ax.set_xticks(range(len(rows)), labels=labels, fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=1, fontsize=8, frameon=False)
    fig.suptitle(title or "attention localisation", fontsize=10)
    return fig


def _mean_row(model: str, level: str, scores: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {"model": model, "level": level, **{k: float(v.mean()) for k, v in scores.items()}}


def run_localize(checkpoints: Sequence[str | os.PathLike[str]], config: LocalizeConfig) -> dict[str, Any]:
    """``ltpa localize``: attention localisation scores of each checkpoint's levels and of the baselines.

    Levels are the model's attended levels (named by ``attn_info``), ``mean`` (the average of the level
    distributions, for two or more levels) and with ``gradcam`` Grad-CAM; baselines (model ``baseline``) are
    the ``uniform`` map and a centred ``gaussian``. Writes ``localize.csv``
    (``model,level,mass_in_box,mass_in_mask,pointing_accuracy``), ``localize.png`` and ``localize.json``
    (the rows, the number of images, ``box_area_fraction`` and ``mask_area_fraction``) under ``config.out``
    and prints a table.

    Returns:
        The ``localize.json`` content.
    """
    models = load_checkpoints(checkpoints, which=config.which, device=config.device)
    data, all_masks, size = masked_data(models, config, "localize")
    keep = all_masks.flatten(1).any(dim=1)
    if not bool(keep.any()):
        raise LTPAError(f"every mask of {config.data} is empty; nothing to localise")
    images, masks = data.images[keep], all_masks[keep]
    rows: list[dict[str, Any]] = []
    for model in models:
        maps = compute_maps(
            model,
            images,
            size=size,
            batch_size=config.batch_size,
            gradcam=config.gradcam,
            gradcam_backend=config.gradcam_backend,
            progress=config.progress,
        )
        own = [key for key in maps if key[0] != "gradcam"]
        for kind, level in maps:
            rows.append(
                _mean_row(
                    model.run_name,
                    "gradcam" if kind == "gradcam" else level,
                    localization_scores(maps[(kind, level)], masks),
                )
            )
        if len(own) >= 2:
            mean = torch.stack([as_distribution(maps[k]) for k in own]).mean(dim=0)
            rows.append(_mean_row(model.run_name, "mean", localization_scores(mean, masks)))
    n = int(masks.shape[0])
    rows.append(_mean_row(BASELINE, "uniform", localization_scores(uniform_map(size, n), masks)))
    prior = gaussian_prior(size, n, sigma=config.gaussian_sigma)
    rows.append(_mean_row(BASELINE, "gaussian", localization_scores(prior, masks)))
    report: dict[str, Any] = {
        "dataset": config.data,
        "split": config.split,
        "n": n,
        "size": size,
        "box_area_fraction": float(object_boxes(masks).flatten(1).float().mean(dim=1).mean()),
        "mask_area_fraction": float(masks.flatten(1).float().mean(dim=1).mean()),
        "rows": rows,
    }
    out = Path(config.out)
    write_csv(out / "localize.csv", rows, LOCALIZE_COLUMNS)
    write_json(out / "localize.json", report)
    plot_localization(rows, out / "localize.png", title=f"attention localisation on {config.data} (n={n})")
    logger.info(format_table(rows, LOCALIZE_COLUMNS, percent=LOCALIZE_COLUMNS[2:]))
    logger.info(
        f"n={n}; object box covers {100 * report['box_area_fraction']:.2f}% of the image, mask "
        f"{100 * report['mask_area_fraction']:.2f}% (the uniform map's scores)\n"
        f"wrote {out / 'localize.csv'} and {out / 'localize.png'}"
    )
    return report
