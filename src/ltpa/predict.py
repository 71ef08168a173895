"""``ltpa predict``: a trained model's top classes for image files, with its maps drawn over each picture.

Paper: "Learn To Pay Attention", Jetley et al., ICLR 2018, https://arxiv.org/abs/1804.02391 (method §4.5: the
maps are bilinearly upsampled to the picture and min-max scaled per image before they are coloured).

For every picture: the ``top_k`` classes with their softmax probabilities, and one figure per attended level
(the picture beside the map overlaid on it, with a colour bar). A model without maps of its own (the plain
VGG, an unattached backbone) gets its Grad-CAM instead. Any image file is accepted (any size and mode; see
:func:`ltpa.visualize.load_image`); every file is read before anything is written, so a bad one stops the
command with its name and leaves the output folder as it was.

    ltpa predict runs/att2 cat.jpg plane.png --top-k 3 --out runs/predict
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ltpa.errors import LTPAError
from ltpa.evaluate import load_checkpoints, write_json
from ltpa.utils import log as logger
from ltpa.utils import safe_filename
from ltpa.visualize import (
    attention_panels,
    class_names,
    display_size,
    load_image,
    plot_overlay,
    resize_display,
)

__all__ = ["PredictConfig", "run_predict", "top_classes"]


@dataclass
class PredictConfig:
    """Settings of ``ltpa predict``.

    Attributes:
        top_k: how many classes to report per picture (at most the model's number of classes).
        gradcam_backend: ``auto``, ``package`` or ``own`` (for models without maps of their own).
        display: longer side of each picture in the figures, in pixels.
        alpha: weight of the heat colours.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        which: ``last`` or ``best`` checkpoint of a run folder.
        out: folder for the figures and ``predictions.json``.
    """

    top_k: int = 5
    gradcam_backend: str = "auto"
    display: int = 256
    alpha: float = 0.5
    device: str = "auto"
    which: str = "last"
    out: str = "runs/predict"


def top_classes(
    probabilities: torch.Tensor, k: int, names: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """The ``k`` most probable classes, most probable first.

    Args:
        probabilities: softmax output of one picture.
        k: how many (capped at the number of classes).
        names: class names (index = class); None names them by index.

    Returns:
        ``[{"class": int, "name": str, "probability": float}]``.

    Shape:
        - probabilities: (K,)
    """
    values, indices = probabilities.float().topk(min(k, int(probabilities.numel())))
    return [
        {"class": int(i), "name": names[int(i)] if names else str(int(i)), "probability": float(v)}
        for v, i in zip(values, indices)
    ]


def _stems(paths: Sequence[Path]) -> list[str]:
    """A distinct file-name stem per picture (``cat``, ``cat-2`` when two folders both hold a ``cat.jpg``)."""
    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        stem = safe_filename(path.stem) or "image"
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return stems


def run_predict(
    checkpoint: str | os.PathLike[str], images: Sequence[str | os.PathLike[str]], config: PredictConfig
) -> list[dict[str, Any]]:
    """``ltpa predict``: top classes and map figures of ``checkpoint`` on image files.

    Writes ``<image>_<level>.png`` per picture and map (levels named by the model's ``attn_info``;
    ``Grad-CAM`` for a model without maps) and ``predictions.json`` under ``config.out``.

    Returns:
        Per picture: ``{"image", "height", "width", "top": [...], "maps": {level: figure path}}``.

    Raises:
        LTPAError: no image, ``top_k`` < 1, a missing or unreadable image (named), or no checkpoint there.
    """
    if not images:
        raise LTPAError("no image given; pass one or more image files after the run folder")
    if isinstance(config.top_k, bool) or not isinstance(config.top_k, int) or config.top_k < 1:
        raise LTPAError(f"--top-k must be a whole number of at least 1, got {config.top_k!r}")
    if config.display < 16:
        raise LTPAError(f"--display must be at least 16 pixels, got {config.display}")
    paths = [Path(p) for p in images]
    for path in paths:
        if path.is_dir():
            raise LTPAError(f"{path} is a folder; pass image files (e.g. {path}/*.jpg)")
    (model,) = load_checkpoints([checkpoint], which=config.which, device=config.device)
    pictures = [load_image(p) for p in paths]  # every file is checked before anything is written
    names = class_names(model, None)
    has_maps = bool(model.attn_info)
    out = Path(config.out)
    records: list[dict[str, Any]] = []
    for path, picture, stem in zip(paths, pictures, _stems(paths)):
        size = display_size(int(picture.shape[1]), int(picture.shape[2]), config.display)
        panels, prediction = attention_panels(
            model, picture, size, gradcam=not has_maps, gradcam_backend=config.gradcam_backend, mean=False
        )
        top = top_classes(prediction["probabilities"], config.top_k, names)
        shown = resize_display(picture, size)
        title = (
            f"{path.name}: {model.run_name} predicts {top[0]['name']} ({100 * top[0]['probability']:.1f}%)"
        )
        maps = {}
        for panel, heat in panels:
            figure = out / f"{stem}_{safe_filename(panel)}.png"
            plot_overlay(shown, heat, figure, panel=panel, title=title, alpha=config.alpha)
            maps[panel] = str(figure)
        records.append(
            {
                "image": str(path),
                "height": int(picture.shape[1]),
                "width": int(picture.shape[2]),
                "top": top,
                "maps": maps,
            }
        )
    write_json(
        out / "predictions.json",
        {
            "model": model.run_name,
            "model_name": model.model_name,
            "checkpoint": str(checkpoint),
            "images": records,
        },
    )
    logger.debug(f"wrote {len(records)} prediction(s) and their maps under {out}")
    return records
