"""Cluttered object benchmarks generated offline, with the object's true footprint as ground truth.

Paper: "Learn To Pay Attention", Jetley et al., ICLR 2018, https://arxiv.org/abs/1804.02391.

The paper's claims (attention finds the object, binarised maps segment it, attention helps under clutter and
adversarial noise: method §4.3-4.5) need images whose object position is known. ``cluttered-digits`` (objects:
scikit-learn's 1,797 handwritten 8x8 digits, always installed) and ``cluttered-fashion`` (objects: Fashion-MNIST
items) give that without any download. Each image holds one object at a random position and scale on a dark
noisy canvas, drawn over clutter: fragments cut from objects of *other* classes, rendered at object scale so
they look like object parts but never carry the label. Items are ``(image, label, mask)`` with the object's
footprint as mask; :func:`ltpa.data.boxes_from_masks` gives its box.

Generation is one batched ``grid_sample`` per layer (object, fragments), rendered at twice the resolution and
average-pooled (antialiasing), deterministic for a seed, and fast (thousands of images per second on a CPU).
The source objects of train and test are disjoint: a fixed per-class split of the digits, and Fashion-MNIST's
own train and test files; fragments come from the same split's pool as the objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ltpa.data._base import TensorImageDataset
from ltpa.data.boxes import boxes_from_masks
from ltpa.data.idx import FASHION_MNIST_CLASSES, read_idx_split
from ltpa.errors import LTPAError

__all__ = ["ClutteredDataset", "ClutteredImages", "build_cluttered", "digit_objects", "generate_cluttered"]

_CHUNK = 512  # images rendered at once; fixed so that the output depends on the seed only
_SUPERSAMPLE = 2
_INK = 0.15  # alpha above which a source pixel counts as part of the object (tight boxes, fragment centres)
_DIGIT_SPLIT_SEED = 20180402  # fixes which sklearn digits are train objects and which are test objects
_DIGIT_TEST_FRACTION = 0.25
_SPLIT_CODES = {"train": 0, "test": 1, "val": 2}
_SOLID = 0.7  # fraction of an object's peak intensity above which it is drawn fully opaque


class ClutteredImages(NamedTuple):
    """What :func:`generate_cluttered` returns.

    Attributes:
        images: uint8 (N, 3, S, S).
        labels: int64 (N,), the class of the object.
        masks: bool (N, S, S), the object's footprint.
        object_ids: int64 (N,), index of the source object in the pool.
        fragment_ids: int64 (N, K), indices of the sources the fragments were cut from.
    """

    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor
    object_ids: torch.Tensor
    fragment_ids: torch.Tensor


def _uniform(low: float, high: float, shape: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(*shape, generator=generator)


def _tight_boxes(objects: torch.Tensor) -> torch.Tensor:
    """(M, 4) float boxes ``(x0, y0, x1, y1)`` in source pixels (edges) around the ink of each (M, h, w) object."""
    _, h, w = objects.shape
    ink = objects > _INK
    rows, cols = ink.any(dim=2), ink.any(dim=1)  # (M, h), (M, w)
    y0, y1 = rows.int().argmax(1), h - rows.flip(1).int().argmax(1)
    x0, x1 = cols.int().argmax(1), w - cols.flip(1).int().argmax(1)
    boxes = torch.stack([x0, y0, x1, y1], dim=1).float()
    empty = ~rows.any(dim=1)
    boxes[empty] = torch.tensor([0.0, 0.0, float(w), float(h)])
    return boxes


def _affine(
    src_box: torch.Tensor, canvas_box: torch.Tensor, src_size: Sequence[int], canvas: int
) -> torch.Tensor:
    """Per-axis scale and offset mapping canvas boxes onto source boxes, in grid_sample's normalised coordinates.

    Boxes are (n, 4) ``(x0, y0, x1, y1)`` in pixels; returns (n, 4) ``(ax, bx, ay, by)`` with
    ``source = a * canvas + b``.
    """
    h, w = src_size
    sx0, sx1 = 2 * src_box[:, 0] / w - 1, 2 * src_box[:, 2] / w - 1
    sy0, sy1 = 2 * src_box[:, 1] / h - 1, 2 * src_box[:, 3] / h - 1
    cx0, cx1 = 2 * canvas_box[:, 0] / canvas - 1, 2 * canvas_box[:, 2] / canvas - 1
    cy0, cy1 = 2 * canvas_box[:, 1] / canvas - 1, 2 * canvas_box[:, 3] / canvas - 1
    ax, ay = (sx1 - sx0) / (cx1 - cx0), (sy1 - sy0) / (cy1 - cy0)
    return torch.stack([ax, sx0 - ax * cx0, ay, sy0 - ay * cy0], dim=1)


def _render(objects: torch.Tensor, affine: torch.Tensor, res: int) -> torch.Tensor:
    """(n, 1, res, res) alpha of the sources scaled and shifted by ``affine``; zero outside the source.

    The maps are axis-aligned, so the sampling grid is an outer sum, much cheaper than ``F.affine_grid``.
    """
    n = affine.shape[0]
    u = (2 * (torch.arange(res, dtype=torch.float32) + 0.5) / res - 1).view(1, res)  # pixel centres
    gx = (affine[:, 0:1] * u + affine[:, 1:2]).view(n, 1, res).expand(n, res, res)
    gy = (affine[:, 2:3] * u + affine[:, 3:4]).view(n, res, 1).expand(n, res, res)
    grid = torch.stack([gx, gy], dim=-1)  # (n, res, res, 2)
    return F.grid_sample(
        objects.unsqueeze(1), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )


def _colours(n: int, colour: bool, generator: torch.Generator, low: float, high: float) -> torch.Tensor:
    """(n, 3, 1, 1) colours whose brightest channel lies in [low, high]."""
    level = _uniform(low, high, (n, 1), generator)
    if not colour:
        return level.expand(n, 3).reshape(n, 3, 1, 1).clone()
    hue = torch.rand(n, 3, generator=generator)
    # every channel keeps 30% of the level, so that no colour is too dark to see (e.g. pure blue)
    return (level * (0.3 + 0.7 * hue / hue.amax(dim=1, keepdim=True).clamp_min(1e-6))).view(n, 3, 1, 1)


class _Pool(NamedTuple):
    """The source objects with what the fragment draw needs: tight boxes, and per class a padded table of
    member indices with the member counts (for a vectorised "random object of class c")."""

    objects: torch.Tensor  # (M, h, w) alpha
    boxes: torch.Tensor  # (M, 4)
    table: torch.Tensor  # (classes, max members)
    counts: torch.Tensor  # (classes,)
    class_list: torch.Tensor  # the classes present, sorted


def _make_pool(
    objects: torch.Tensor, labels: torch.Tensor, classes: torch.Tensor, per_class_counts: torch.Tensor
) -> _Pool:
    """The :class:`_Pool` of ``objects``: class -> padded table of member indices, for a vectorised "random
    object of class c"."""
    num_classes = int(labels.max()) + 1
    counts = torch.zeros(num_classes, dtype=torch.long)
    counts[classes] = per_class_counts
    table = torch.zeros(num_classes, int(counts.max()), dtype=torch.long)
    for c in classes.tolist():
        members = (labels == c).nonzero().flatten()
        table[c, : members.numel()] = members
    return _Pool(objects, _tight_boxes(objects), table, counts, classes)


def _render_fragments(
    pool: _Pool,
    labels: torch.Tensor,
    draws: tuple[torch.Tensor, ...],
    s: int,
    centres: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(b, k, 1, R, R) alpha of k fragments per image and the (b*k,) ids of their sources.

    Each fragment is a square window (``window_frac`` of its source's longer side) around an ink pixel drawn by
    alpha (``ink_draw``, an inverse-CDF multinomial) of an object of another class (``shift`` classes on, member
    ``pick``), drawn at object scale (``frag_side``) at (``frag_x``, ``frag_y``), and cut to its window.
    """
    shift, pick, window_frac, frag_side, frag_x, frag_y, ink_draw = draws
    b, k = shift.shape
    res = centres.numel()
    src_h, src_w = pool.objects.shape[1:]
    position = (torch.searchsorted(pool.class_list, labels).view(b, 1) + shift) % pool.class_list.numel()
    frag_labels = pool.class_list[position]  # (b, k)
    frag_ids = pool.table[frag_labels, (pick * pool.counts[frag_labels]).long()].flatten()  # (b*k,)
    cdf = (pool.objects[frag_ids].flatten(1) + 1e-6).cumsum(dim=1)  # (b*k, h*w)
    flat = (
        torch.searchsorted(cdf, (ink_draw * cdf[:, -1]).unsqueeze(1)).squeeze(1).clamp(max=cdf.shape[1] - 1)
    )
    fy, fx = (flat // src_w).float() + 0.5, (flat % src_w).float() + 0.5
    fbox = pool.boxes[frag_ids]
    longer = torch.maximum(fbox[:, 2] - fbox[:, 0], fbox[:, 3] - fbox[:, 1])
    window = window_frac * longer  # source px
    src_win = torch.stack([fx - window / 2, fy - window / 2, fx + window / 2, fy + window / 2], dim=1)
    cwin = window * s * frag_side / longer
    fcx, fcy = frag_x * s - cwin / 2, frag_y * s - cwin / 2
    can_win = torch.stack([fcx, fcy, fcx + cwin, fcy + cwin], dim=1)
    frag_alpha = _render(pool.objects[frag_ids], _affine(src_win, can_win, (src_h, src_w), s), res)
    inside_x = (centres.view(1, -1) >= fcx.view(-1, 1)) & (centres.view(1, -1) < (fcx + cwin).view(-1, 1))
    inside_y = (centres.view(1, -1) >= fcy.view(-1, 1)) & (centres.view(1, -1) < (fcy + cwin).view(-1, 1))
    frag_alpha = frag_alpha * (inside_y[:, :, None] & inside_x[:, None, :]).unsqueeze(1)
    return frag_alpha.view(b, k, 1, res, res), frag_ids


def _composite(
    background: torch.Tensor,
    layers: list[tuple[torch.Tensor, torch.Tensor]],
    pixel_noise: torch.Tensor,
    mask_threshold: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (b, 3, S, S) images and bool (b, S, S) masks: the background, then each ``(colour, alpha)``
    layer in order (the last is the object), averaged down from the supersampled canvas, plus noise."""
    b, res = background.shape[0], layers[-1][1].shape[-1]
    canvas = background.expand(b, 3, res, res).contiguous()  # (b, 3, R, R)
    for colour, alpha in layers:
        canvas.lerp_(colour.expand(b, 3, res, res), alpha)
    canvas = F.avg_pool2d(canvas, _SUPERSAMPLE) + pixel_noise  # (b, 3, S, S)
    object_alpha = F.avg_pool2d(layers[-1][1], _SUPERSAMPLE)[:, 0]  # (b, S, S)
    threshold = torch.clamp(object_alpha.amax(dim=(1, 2)) * 0.5, max=mask_threshold).view(b, 1, 1)
    return (canvas.clamp(0, 1) * 255).round().to(torch.uint8), object_alpha > threshold


def generate_cluttered(
    objects: torch.Tensor,
    object_labels: torch.Tensor,
    num: int,
    *,
    img_size: int = 32,
    seed: int = 0,
    object_scale: tuple[float, float] = (0.38, 0.55),
    num_fragments: int = 4,
    fragment_size: tuple[float, float] = (0.3, 0.5),
    noise: float = 0.06,
    colour: bool = True,
    mask_threshold: float = 0.3,
) -> ClutteredImages:
    """Renders ``num`` cluttered images, each with one object from ``objects``.

    Per image: a dark background colour; ``num_fragments`` fragments, each a square window (``fragment_size``
    times the source object's longer side) around a random ink pixel of an object of another class, drawn at
    object scale at a random place (possibly partly outside); then the object, whose tight box's longer side is
    ``object_scale`` times the canvas side, at a random place fully inside the canvas; finally Gaussian pixel
    noise. Object and fragment colours come from the same distribution, so colour tells nothing.

    Args:
        objects: grey objects as alpha in [0, 1], dark background.
        object_labels: class of each object; at least two classes.
        num: images to render.
        img_size: canvas side S.
        seed: seed of every random choice; equal seeds give equal images.
        object_scale: range of the object's longer side, as a fraction of S.
        num_fragments: clutter fragments per image.
        fragment_size: range of a fragment's side, as a fraction of its source object's longer side.
        noise: standard deviation of the Gaussian pixel noise (pixels in [0, 1]).
        colour: random colours (else grey levels).
        mask_threshold: object alpha above which a pixel belongs to the mask (lowered for faint objects so that
            no mask is empty).

    Returns:
        A :class:`ClutteredImages` tuple.

    Shape:
        - objects: (M, h, w) float.
        - object_labels: (M,) int64.
        - images: (num, 3, S, S) uint8; masks: (num, S, S) bool.
    """
    if objects.dim() != 3 or object_labels.shape != (objects.shape[0],):
        raise ValueError(
            f"objects (M, h, w) and labels (M,) expected, got {tuple(objects.shape)}, "
            f"{tuple(object_labels.shape)}"
        )
    if not 0 < object_scale[0] <= object_scale[1] <= 1:
        raise LTPAError(f"cluttered: object_scale must satisfy 0 < low <= high <= 1, got {object_scale}")
    if not 0 < fragment_size[0] <= fragment_size[1]:
        raise LTPAError(f"cluttered: fragment_size must satisfy 0 < low <= high, got {fragment_size}")
    if num_fragments < 0 or noise < 0 or img_size < 4 or num < 0:
        raise LTPAError("cluttered: num, num_fragments and noise must be >= 0 and img_size >= 4")
    objects = objects.float().cpu()
    # faint sources (light pen strokes, dark garments) would vanish into the background: scale each object so
    # that everything above 70% of its peak is fully opaque
    peak = objects.amax(dim=(1, 2), keepdim=True).clamp_min(1e-6)
    objects = (objects / (_SOLID * peak)).clamp(max=1.0)
    object_labels = object_labels.long().cpu()
    classes, per_class_counts = torch.unique(object_labels, return_counts=True)
    if num_fragments and classes.numel() < 2:
        raise LTPAError("cluttered: fragments come from other classes, so at least two classes are needed")
    pool = _make_pool(objects, object_labels, classes, per_class_counts)
    boxes, class_list = pool.boxes, pool.class_list
    src_h, src_w = objects.shape[1:]
    s, k, res = img_size, num_fragments, img_size * _SUPERSAMPLE
    generator = torch.Generator().manual_seed(seed)
    centres = (torch.arange(res, dtype=torch.float32) + 0.5) / _SUPERSAMPLE  # canvas pixel units

    out_images, out_labels, out_masks, out_ids, out_frag = [], [], [], [], []
    for start in range(0, num, _CHUNK):
        b = min(_CHUNK, num - start)
        # Every chunk draws its random numbers for a full chunk, in a fixed order, and uses the first b: the
        # first images are then the same whatever ``num`` is.
        n = _CHUNK
        ids = torch.randint(0, objects.shape[0], (n,), generator=generator)[:b]
        object_side = _uniform(*object_scale, (n,), generator)[:b]
        object_x, object_y = _uniform(0, 1, (2, n), generator)[:, :b]
        if k:
            shift = torch.randint(1, class_list.numel(), (n, k), generator=generator)[:b]
            pick = torch.rand(n, k, generator=generator)[:b]
            window_frac = _uniform(*fragment_size, (n, k), generator)[:b].flatten()
            frag_side = _uniform(*object_scale, (n, k), generator)[:b].flatten()
            frag_x, frag_y = _uniform(0, 1, (2, n, k), generator)[:, :b].flatten(1)
            ink_draw = torch.rand(n, k, generator=generator)[:b].flatten()
            frag_colours = _colours(n * k, colour, generator, 0.65, 1.0)[: b * k].view(b, k, 3, 1, 1)
        background = _colours(n, colour, generator, 0.0, 0.3)[:b]
        obj_colour = _colours(n, colour, generator, 0.65, 1.0)[:b]
        pixel_noise = torch.randn(n, 1 if not colour else 3, s, s, generator=generator)[:b]

        # the object: its tight box scaled to the drawn side, placed fully inside the canvas
        labels = object_labels[ids]
        box = boxes[ids]
        bw, bh = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
        side = s * object_side / torch.maximum(bw, bh)  # canvas px per source px
        cw, ch = bw * side, bh * side
        cx0, cy0 = object_x * (s - cw), object_y * (s - ch)
        canvas_box = torch.stack([cx0, cy0, cx0 + cw, cy0 + ch], dim=1)
        alpha = _render(objects[ids], _affine(box, canvas_box, (src_h, src_w), s), res)  # (b, 1, R, R)

        # fragments: random sources of other classes, a window around one of their ink pixels
        if k:
            frag_draws = (shift, pick, window_frac, frag_side, frag_x, frag_y, ink_draw)
            frag_alpha, frag_ids = _render_fragments(pool, labels, frag_draws, s, centres)
        else:
            frag_ids = torch.zeros(0, dtype=torch.long)

        # composite: background, fragments, object; then antialias and noise
        layers = [(frag_colours[:, j], frag_alpha[:, j]) for j in range(k)] + [(obj_colour, alpha)]
        images, masks = _composite(background, layers, pixel_noise * noise, mask_threshold)
        out_images.append(images)
        out_masks.append(masks)
        out_labels.append(labels)
        out_ids.append(ids)
        out_frag.append(frag_ids.view(b, k))
    if not out_images:
        empty = torch.zeros(0, dtype=torch.long)
        return ClutteredImages(
            torch.zeros(0, 3, s, s, dtype=torch.uint8),
            empty,
            torch.zeros(0, s, s, dtype=torch.bool),
            empty,
            torch.zeros(0, k, dtype=torch.long),
        )
    return ClutteredImages(
        torch.cat(out_images),
        torch.cat(out_labels),
        torch.cat(out_masks),
        torch.cat(out_ids),
        torch.cat(out_frag),
    )


def digit_objects(split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """scikit-learn's handwritten digits of one side of the fixed train/test object split.

    Per class, a fixed shuffle puts 75% of the 1,797 digits in ``"train"`` and the rest in ``"test"``.

    Returns:
        ``(objects, labels, ids)``: float (M, 8, 8) alpha in [0, 1], int64 (M,), and the digits' indices in
        ``sklearn.datasets.load_digits()``.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0)
    labels = torch.from_numpy(digits.target.astype(np.int64))
    rng = np.random.default_rng(_DIGIT_SPLIT_SEED)
    chosen = []
    for c in range(10):
        members = np.flatnonzero(digits.target == c)
        members = members[rng.permutation(members.size)]
        n_test = round(_DIGIT_TEST_FRACTION * members.size)
        chosen.append(members[:n_test] if split == "test" else members[n_test:])
    ids = torch.from_numpy(np.sort(np.concatenate(chosen)))
    return images[ids], labels[ids], ids


class ClutteredDataset(TensorImageDataset):
    """A generated cluttered split held in memory; items ``(image, label, mask)``.

    Attributes:
        object_ids: (N,) ids of the source objects (sklearn digit index, or Fashion-MNIST index with test items
            offset by the train-file size), so that train and test can be checked for disjointness.
        fragment_ids: (N, K) ids of the fragments' sources, same numbering.

    Shape:
        - images: (N, 3, S, S) uint8; labels: (N,); masks: (N, S, S) bool.
    """

    object_ids: torch.Tensor
    fragment_ids: torch.Tensor

    @property
    def boxes(self) -> torch.Tensor:
        """(N, 4) int64 object boxes ``(x0, y0, x1, y1)``, ends exclusive."""
        if self.masks is None:
            return torch.zeros(len(self), 4, dtype=torch.long)
        return boxes_from_masks(self.masks)


def _pair(value: Sequence[float], name: str) -> tuple[float, float]:
    """A (low, high) option given as any 2-sequence (the CLI passes lists)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise LTPAError(f"cluttered: {name} must be a (low, high) pair, got {value!r}")
    return float(value[0]), float(value[1])


def build_cluttered(
    kind: str,
    candidates: list[Path],
    split: str,
    *,
    img_size: int = 32,
    num_train: int = 10000,
    num_test: int = 2000,
    num_val: int = 2000,
    holdout: int = 0,
    seed: int = 0,
    object_scale: tuple[float, float] = (0.38, 0.55),
    num_fragments: int = 4,
    fragment_size: tuple[float, float] = (0.3, 0.5),
    noise: float = 0.06,
    colour: bool = True,
) -> ClutteredDataset:
    """``cluttered-digits`` or ``cluttered-fashion``, generated in memory.

    Args:
        kind: ``"digits"`` or ``"fashion"``.
        candidates: folders with the Fashion-MNIST IDX files (``"fashion"`` only).
        split: ``"train"``, ``"test"`` or ``"val"`` (``"val"`` needs ``holdout``).
        img_size: canvas side.
        num_train: images in the train split.
        num_test: images in the test split.
        num_val: images in the validation split.
        holdout: objects at the end of the training pool (Fashion-MNIST's training file, or the digits' train
            side) kept out of the train split; the ``"val"`` split is rendered from them only, so validation
            objects are unseen in training and test objects stay untouched for the final measurement.
        seed: generation seed (train and test derive distinct streams from it).
        object_scale: range of the object's longer side as a fraction of the canvas.
        num_fragments: clutter fragments per image.
        fragment_size: range of a fragment's side as a fraction of its source object's longer side.
        noise: Gaussian pixel noise standard deviation.
        colour: random colours (else grey).
    """
    if split not in _SPLIT_CODES:
        raise LTPAError(f"cluttered-{kind}: unknown split {split!r}; choose train, test or val")
    if isinstance(holdout, bool) or not isinstance(holdout, int) or holdout < 0:
        raise LTPAError(f"cluttered-{kind}: holdout must be a whole number >= 0, got {holdout!r}")
    if split == "val" and holdout == 0:
        raise LTPAError(
            f"cluttered-{kind}: the val split is rendered from held-out training objects; "
            "set the data option holdout=N (e.g. holdout=10000)"
        )
    pool = "test" if split == "test" else "train"
    if kind == "digits":
        objects, labels, ids = digit_objects(pool)
        classes = [str(d) for d in range(10)]
        root = None
    else:
        grey, labels, root = read_idx_split("fashion-mnist", candidates, pool)
        objects = grey.float() / 255.0
        offset = 60000 if split == "test" else 0
        ids = torch.arange(grey.shape[0]) + offset
        classes = list(FASHION_MNIST_CLASSES)
    if pool == "train" and holdout:
        if holdout >= objects.shape[0]:
            raise LTPAError(
                f"cluttered-{kind}: holdout={holdout} leaves no training objects (the pool has "
                f"{objects.shape[0]}); choose a smaller holdout"
            )
        keep = slice(objects.shape[0] - holdout, None) if split == "val" else slice(0, -holdout)
        objects, labels, ids = objects[keep], labels[keep], ids[keep]
    stream = int(np.random.SeedSequence([seed, _SPLIT_CODES[split]]).generate_state(1)[0])
    out = generate_cluttered(
        objects,
        labels,
        {"train": num_train, "test": num_test, "val": num_val}[split],
        img_size=img_size,
        seed=stream,
        object_scale=_pair(object_scale, "object_scale"),
        num_fragments=num_fragments,
        fragment_size=_pair(fragment_size, "fragment_size"),
        noise=noise,
        colour=colour,
    )
    dataset = ClutteredDataset(
        out.images, out.labels, classes, masks=out.masks, name=f"cluttered-{kind}", split=split, root=root
    )
    dataset.object_ids = ids[out.object_ids]
    dataset.fragment_ids = ids[out.fragment_ids]
    return dataset
