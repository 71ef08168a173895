"""Attention maps drawn over images: overlays as uint8 arrays and PNG files, and the comparison grid figure.

Paper: "Learn To Pay Attention", Jetley et al., ICLR 2018, https://arxiv.org/abs/1804.02391 (method §4.5,
Fig. 1: layer-10 attention covers the object, layer-13 a discriminative part).

A softmax over 1,024 positions gives values near 1/1024 everywhere, which look empty when drawn as they are
(a reproduction reported exactly that); each map is therefore upsampled bilinearly to the picture and min-max
scaled per image before it is coloured. Any image file is accepted (any size, grey, palette, 16-bit, alpha):
the model sees it resized to its input side, and the maps are drawn over the original picture (shrunk for
display), so a non-square picture shows where the model looked in its own geometry.

    ltpa visualize runs/att2 --images cat.jpg plane.png --cam runs/gap --out runs/visualize
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ltpa.errors import LTPAError
from ltpa.evaluate import (
    attention_maps,
    class_activation_maps,
    eval_mode,
    grad_cam,
    load_checkpoints,
    map_kind,
    model_device,
    normalize_minmax,
    save_figure,
    to_model_input,
    upsample,
    write_json,
)
from ltpa.models import LTPAModel
from ltpa.utils import atomic_write, to_unit_float
from ltpa.utils import log as logger

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "VisualizeConfig",
    "attention_grid_figure",
    "attention_panels",
    "class_names",
    "display_box",
    "display_size",
    "heat_label",
    "load_image",
    "model_label",
    "overlay",
    "overlay_figure",
    "plot_attention_grid",
    "plot_overlay",
    "resize_display",
    "run_visualize",
    "save_png",
]


def load_image(path: str | os.PathLike[str]) -> torch.Tensor:
    """Any image file as RGB uint8: grey, palette and CMYK are converted, 16-bit and float images rescaled to
    8 bits, transparency composited onto white, EXIF rotation applied.

    Raises:
        LTPAError: naming the file when it is missing or not an image.

    Shape:
        - output: (3, H, W) uint8
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    from ltpa.data._decode import open_image

    path = Path(path)
    if not path.is_file():
        raise LTPAError(f"image file not found: {path}")
    # open_image refuses oversized headers and truncated files, and decodes the first frame of animations
    with open_image(path) as opened:
        try:
            image = ImageOps.exif_transpose(opened) or opened
            if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
                array = np.asarray(image, dtype=np.float64)
                lo, hi = float(array.min()), float(array.max())
                scaled = (array - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(array)
                image = Image.fromarray(scaled.round().astype(np.uint8), mode="L")
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                rgba = image.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                image = Image.alpha_composite(white, rgba)
            rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise LTPAError(
                f"cannot read image {path} ({type(err).__name__}: {err}); pass a JPEG, PNG, BMP, ..."
            ) from err
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()


def display_size(height: int, width: int, longest: int = 192) -> tuple[int, int]:
    """(H, W) of a picture scaled so that its longer side is ``longest`` (aspect ratio kept)."""
    scale = longest / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def overlay(image: torch.Tensor, heat: torch.Tensor, *, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """A heat map in [0, 1] coloured with ``cmap`` and blended over an RGB image.

    Args:
        image: uint8, or float in [0, 1], RGB (channels first).
        heat: values in [0, 1] (clipped), same height and width as the image.
        alpha: weight of the heat colours.
        cmap: matplotlib colormap name.

    Returns:
        uint8 (H, W, 3) RGB array.

    Shape:
        - image: (3, H, W); heat: (H, W)
    """
    from matplotlib import colormaps

    if image.shape[-2:] != heat.shape[-2:]:
        raise ValueError(f"image {tuple(image.shape)} and heat map {tuple(heat.shape)} differ in size")
    base = to_unit_float(image)
    rgb = base.permute(1, 2, 0).cpu().numpy()
    colours = colormaps[cmap](heat.detach().float().clamp(0, 1).cpu().numpy())[..., :3]
    blended = (1.0 - alpha) * rgb + alpha * colours
    return (np.clip(blended, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def save_png(array: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Writes a uint8 (H, W, 3) or (H, W) array as a PNG."""
    from PIL import Image

    path = Path(path)
    atomic_write(path, lambda tmp: Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG"))
    return path


def model_label(model: LTPAModel) -> str:
    """``run (model name)`` for a figure's title, or just the run's name when it is the model's name."""
    run, name = str(getattr(model, "run_name", model.model_name)), str(model.model_name)
    return run if run == name else f"{run} ({name})"


def heat_label(panel: str) -> str:
    """What the colours of a panel named ``panel`` (as :func:`attention_panels` names them) stand for, for a
    colour bar."""
    if panel.startswith("Grad-CAM"):
        kind = "Grad-CAM"
    elif panel.startswith("CAM"):
        kind = "class activation"
    else:
        kind = "attention weight"
    return f"{kind}\n(scaled per image: 0 lowest, 1 highest)"


def plot_overlay(
    image: torch.Tensor,
    heat: torch.Tensor,
    path: str | os.PathLike[str],
    *,
    panel: str,
    title: str = "",
    alpha: float = 0.5,
) -> Path:
    """Writes :func:`overlay_figure` as a PNG (atomically)."""
    return save_figure(overlay_figure(image, heat, panel=panel, title=title, alpha=alpha), path)


def overlay_figure(
    image: torch.Tensor, heat: torch.Tensor, *, panel: str, title: str = "", alpha: float = 0.5
) -> Figure:
    """The picture beside one map overlaid on it, with a colour bar saying what the colours mean.

    Args:
        image: the picture at display size, uint8 RGB.
        heat: the map, in [0, 1], at the same size.
        panel: the map's name (a level such as ``conv10``, ``CAM conv13`` or ``Grad-CAM``).
        title: the figure's title (what the model predicted).
        alpha: weight of the heat colours.

    Shape:
        - image: (3, H, W) uint8; heat: (H, W)
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    height, width = int(image.shape[1]), int(image.shape[2])
    aspect = width / height
    fig = Figure(figsize=(2 * 2.6 * min(aspect, 2.0) + 1.6, 3.6), layout="constrained")
    ax_image, ax_map = fig.subplots(1, 2)
    ax_image.imshow(image.permute(1, 2, 0).numpy())
    ax_image.set_title("image", fontsize=9)
    ax_map.imshow(overlay(image, heat, alpha=alpha))
    ax_map.set_title(panel, fontsize=9)
    for ax in (ax_image, ax_map):
        ax.axis("off")
    bar = fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), cmap="jet"), ax=ax_map, fraction=0.05, pad=0.03)
    bar.set_label(heat_label(panel), fontsize=8)
    bar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def resize_display(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A uint8 picture resized (bilinear, antialiased) to ``size`` for display.

    Shape:
        - image: (3, H, W) uint8
        - output: (3, size[0], size[1]) uint8
    """
    x = image[None].float() / 255.0
    x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return (x[0].clamp(0, 1) * 255).round().to(torch.uint8)


def attention_panels(
    model: LTPAModel,
    image: torch.Tensor,
    size: tuple[int, int],
    *,
    cam_model: LTPAModel | None = None,
    gradcam: bool = True,
    gradcam_backend: str = "auto",
    mean: bool = True,
) -> tuple[list[tuple[str, torch.Tensor]], dict[str, Any]]:
    """The maps of one picture, each upsampled to ``size`` and min-max scaled to [0, 1].

    Panels: every attended level (named by ``attn_info``), with ``mean`` their mean for two or more levels,
    the CAM of ``cam_model`` (a ``vgg_gap``) and Grad-CAM of ``model``.

    Returns:
        ``(panels, prediction)``: ``[(title, heat (H, W))]`` and ``{"class": int, "probability": float,
        "probabilities": (K,) tensor}``.

    Shape:
        - image: (3, H0, W0) uint8, any size
    """
    x = to_model_input(image[None], int(model.img_size), model_device(model))
    with torch.no_grad(), eval_mode(model):
        probs = model(x).softmax(dim=1)[0]
        maps = attention_maps(model, x)
    label = "CAM" if map_kind(model) == "cam" else ""
    panels = [
        (f"{label} {level}".strip(), normalize_minmax(upsample(m.float(), size))[0].cpu())
        for level, m in maps.items()
    ]
    if mean and len(panels) >= 2:
        panels.append(("mean", normalize_minmax(torch.stack([p for _, p in panels]).mean(dim=0)[None])[0]))
    if cam_model is not None:
        xc = to_model_input(image[None], int(cam_model.img_size), model_device(cam_model))
        with torch.no_grad(), eval_mode(cam_model):
            cam = class_activation_maps(cam_model, xc)
        name = getattr(cam_model, "run_name", "vgg_gap")
        panels.append((f"CAM ({name})", normalize_minmax(upsample(cam.float(), size))[0].cpu()))
    if gradcam:
        heat = grad_cam(model, x, backend=gradcam_backend)
        panels.append(("Grad-CAM", normalize_minmax(upsample(heat, size))[0].cpu()))
    top = int(probs.argmax())
    return panels, {"class": top, "probability": float(probs[top]), "probabilities": probs.float().cpu()}


def plot_attention_grid(
    originals: Sequence[torch.Tensor],
    panels: Sequence[Sequence[tuple[str, torch.Tensor]]],
    path: str | os.PathLike[str],
    *,
    row_titles: Sequence[str] = (),
    row_ok: Sequence[bool | None] = (),
    boxes: Sequence[Sequence[float] | None] = (),
    alpha: float = 0.5,
    title: str = "",
) -> Path:
    """Writes :func:`attention_grid_figure` as a PNG (atomically)."""
    figure = attention_grid_figure(
        originals, panels, row_titles=row_titles, row_ok=row_ok, boxes=boxes, alpha=alpha, title=title
    )
    return save_figure(figure, path)


def attention_grid_figure(
    originals: Sequence[torch.Tensor],
    panels: Sequence[Sequence[tuple[str, torch.Tensor]]],
    *,
    row_titles: Sequence[str] = (),
    row_ok: Sequence[bool | None] = (),
    boxes: Sequence[Sequence[float] | None] = (),
    alpha: float = 0.5,
    title: str = "",
) -> Figure:
    """One row per picture: the original, then each map overlaid on it, under one colour bar.

    Column headings name the maps once, above the first row; each row is labelled at its left (several lines
    allowed: source, prediction, truth), in green when ``row_ok`` says the prediction is right and red when
    wrong. ``boxes`` draws the object's box (``x0, y0, x1, y1`` in display pixels, ends exclusive) on every
    panel of its row.

    Shape:
        - originals[i]: (3, H_i, W_i) uint8 at display size; panels[i][j][1]: (H_i, W_i) in [0, 1]
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    rows, cols = len(originals), 1 + max((len(p) for p in panels), default=0)
    headings = ["image"] + [name for name, _ in max(panels, key=len, default=[])]
    # the row labels get a column of their own, as wide as their longest line, so that none is cut off
    longest = max((len(line) for t in row_titles for line in t.splitlines()), default=0)
    label_width = 0.2 + 0.062 * longest
    fig = Figure(
        figsize=(label_width + 1.9 * cols + 1.3, 1.9 * rows + (0.5 if title else 0.2) + 0.3),
        layout="constrained",
    )
    grid = fig.subplots(rows, cols + 1, squeeze=False, width_ratios=[label_width / 1.9] + [1.0] * cols)
    for r in range(rows):
        label_ax = grid[r][0]
        label_ax.axis("off")
        ok = row_ok[r] if r < len(row_ok) else None
        colour = "black" if ok is None else ("#1a7f37" if ok else "#cf222e")
        label = row_titles[r] if r < len(row_titles) else ""
        label_ax.text(
            1.0, 0.5, label, fontsize=8, color=colour, ha="right", va="center", transform=label_ax.transAxes
        )
    axes = grid[:, 1:]
    for r, (image, row) in enumerate(zip(originals, panels)):
        pictures = [image.permute(1, 2, 0).numpy()] + [overlay(image, heat, alpha=alpha) for _, heat in row]
        box = boxes[r] if r < len(boxes) else None
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(pictures):
                ax.axis("off")
                continue
            ax.imshow(pictures[c])
            if box is not None:
                x0, y0, x1, y1 = (float(v) for v in box)
                ax.add_patch(
                    Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="white", lw=1.2)
                )
            if r == 0:
                ax.set_title(headings[c], fontsize=9)
    bar = fig.colorbar(
        ScalarMappable(Normalize(0.0, 1.0), cmap="jet"),
        ax=axes[:, 1:] if cols > 1 else axes,
        shrink=min(0.8, 2.4 / max(rows, 1)),  # about two rows high, however many rows there are
    )
    bar.set_label("map value\n(scaled per image: 0 lowest, 1 highest)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


@dataclass
class VisualizeConfig:
    """Settings of ``ltpa visualize``.

    Attributes:
        images: image files (any size and mode); or, when empty, ``count`` images of ``data``.
        data: dataset name used when no image file is given.
        root: its folder.
        split: its split.
        count: how many of its first images.
        data_options: further ``build_dataset`` options.
        cam: a ``vgg_gap`` checkpoint whose CAM is shown beside the attention maps.
        gradcam: show Grad-CAM of the model.
        gradcam_backend: ``auto``, ``package`` or ``own``.
        display: longer side of each picture in the figure.
        alpha: weight of the heat colours.
        device: ``cpu``, ``cuda`` or ``auto``.
        which: ``last`` or ``best`` checkpoint of a run folder.
        out: folder for ``attention.png`` and ``attention.json``.
    """

    images: list[str] = field(default_factory=list)
    data: str | None = None
    root: str | None = None
    split: str = "test"
    count: int = 8
    data_options: dict[str, Any] = field(default_factory=dict)
    cam: str | None = None
    gradcam: bool = True
    gradcam_backend: str = "auto"
    display: int = 192
    alpha: float = 0.5
    device: str = "cpu"
    which: str = "last"
    out: str = "runs/visualize"


@dataclass
class _Pictures:
    """What ``ltpa visualize`` draws: pictures, where each came from, and what is known about them."""

    images: list[torch.Tensor]
    sources: list[str]
    classes: list[str] | None = None
    labels: list[int | None] = field(default_factory=list)
    masks: list[torch.Tensor | None] = field(default_factory=list)


def _pictures(config: VisualizeConfig) -> _Pictures:
    """The pictures from files, or from the dataset with their labels and (where it has them) object masks."""
    if config.images:
        n = len(config.images)
        return _Pictures(
            [load_image(p) for p in config.images],
            [str(p) for p in config.images],
            None,
            [None] * n,
            [None] * n,
        )
    if not config.data:
        raise LTPAError("nothing to show; pass --images FILE... or --data NAME --count N")
    if config.count < 1:
        raise LTPAError(f"--count must be at least 1, got {config.count}")
    from ltpa.data import build_dataset

    dataset = build_dataset(config.data, root=config.root, split=config.split, **config.data_options)
    n = min(config.count, len(dataset))
    if n == 0:
        raise LTPAError(f"{config.data} ({config.split} split) has no images to show")
    items = [dataset[i] for i in range(n)]
    return _Pictures(
        [item[0] for item in items],
        [f"{config.data}[{i}]" for i in range(n)],
        list(dataset.classes),
        [int(item[1]) for item in items],
        [item[2] if len(item) > 2 else None for item in items],
    )


def display_box(mask: torch.Tensor | None, size: tuple[int, int]) -> list[float] | None:
    """The object's box ``(x0, y0, x1, y1)`` (ends exclusive) in the pixels of a picture shown at ``size``,
    from its mask at the picture's own size; None without a mask or for an empty one.

    Shape:
        - mask: (H, W) bool
    """
    from ltpa.data import boxes_from_masks

    if mask is None or not bool(mask.any()):
        return None
    x0, y0, x1, y1 = (float(v) for v in boxes_from_masks(mask.bool()))
    sy, sx = size[0] / mask.shape[-2], size[1] / mask.shape[-1]
    return [x0 * sx, y0 * sy, x1 * sx, y1 * sy]


def class_names(model: LTPAModel, classes: list[str] | None) -> list[str] | None:
    """Names of the model's outputs: from its checkpoint (a ``classes`` list in the sidecar), else the
    dataset's when their number matches, else None (indices are shown)."""
    saved = (getattr(model, "checkpoint", None) or {}).get("classes")
    if isinstance(saved, list) and len(saved) == model.num_classes:
        return [str(c) for c in saved]
    if classes is not None and len(classes) == model.num_classes:
        return classes
    return None


def run_visualize(checkpoint: str | os.PathLike[str], config: VisualizeConfig) -> Path:
    """``ltpa visualize``: one grid figure of the model's maps (and CAM / Grad-CAM) on the pictures.

    Writes ``attention.png`` and ``attention.json`` (per picture: source, size, predicted class and
    probability, true label where known) under ``config.out``.

    Returns:
        The figure's path.
    """
    (model,) = load_checkpoints([checkpoint], which=config.which, device=config.device)
    cam_model = None
    if config.cam:
        (cam_model,) = load_checkpoints([config.cam], which=config.which, device=config.device)
        if map_kind(cam_model) != "cam":
            raise LTPAError(f"--cam needs a vgg_gap checkpoint, got {cam_model.model_name} at {config.cam}")
    shown = _pictures(config)
    classes = shown.classes
    names = class_names(model, classes)
    originals, all_panels, titles, verdicts, boxes, records = [], [], [], [], [], []
    for image, source, label, mask in zip(shown.images, shown.sources, shown.labels, shown.masks):
        size = display_size(int(image.shape[1]), int(image.shape[2]), config.display)
        panels, pred = attention_panels(
            model,
            image,
            size,
            cam_model=cam_model,
            gradcam=config.gradcam,
            gradcam_backend=config.gradcam_backend,
        )
        originals.append(resize_display(image, size))
        all_panels.append(panels)
        boxes.append(display_box(mask, size))
        pred_name = names[pred["class"]] if names else str(pred["class"])
        true_name = None if label is None else (classes[label] if classes else str(label))
        lines = [Path(source).name, f"predicted {pred_name} ({100 * pred['probability']:.0f}%)"]
        if true_name is not None:
            lines.append(f"true {true_name}")
        titles.append("\n".join(lines))
        verdicts.append(None if label is None else pred["class"] == label)
        records.append(
            {
                "source": source,
                "height": int(image.shape[1]),
                "width": int(image.shape[2]),
                "predicted": pred["class"],
                "predicted_name": pred_name,
                "probability": pred["probability"],
                "label": label,
                "label_name": true_name,
                "panels": [name for name, _ in panels],
            }
        )
    where = f" on {config.data} ({config.split} split)" if not config.images else ""
    right = sum(1 for v in verdicts if v)
    score = f", {right} of {len(verdicts)} classified correctly" if not config.images else ""
    title = f"{model_label(model)}{where}: {len(originals)} pictures{score}"
    out = Path(config.out)
    path = plot_attention_grid(
        originals,
        all_panels,
        out / "attention.png",
        row_titles=titles,
        row_ok=verdicts,
        boxes=boxes,
        alpha=config.alpha,
        title=title,
    )
    write_json(out / "attention.json", {"model": model.run_name, "images": records})
    logger.info(f"{model.run_name}: {len(originals)} image(s), panels: {', '.join(records[0]['panels'])}")
    logger.info(f"wrote {path}")
    return path
