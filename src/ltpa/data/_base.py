"""What every ``ltpa`` dataset shares: metadata, the in-memory dataset, root look-up, errors, ``load_tensors``.

Paper: "Learn To Pay Attention", Jetley et al., ICLR 2018, https://arxiv.org/abs/1804.02391 (method §3.4 for the
datasets and their preprocessing).

Items are ``(image, label)`` with ``image`` a uint8 (3, H, W) tensor, or ``(image, label, mask)`` with a bool
(H, W) mask for datasets with segmentation ground truth. Datasets that fit in memory hold one uint8 tensor;
the others decode lazily. :func:`load_tensors` turns either kind into tensors for training and evaluation.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset
from tqdm import tqdm

from ltpa.data.augment import resize
from ltpa.errors import LTPAError

__all__ = [
    "DatasetInfo",
    "ImageDataset",
    "TensorImageDataset",
    "data_error",
    "find_data_dir",
    "load_tensors",
    "require_file",
]


@dataclass(frozen=True)
class DatasetInfo:
    """What ``ltpa`` knows about a dataset before reading it.

    Attributes:
        name: registry name (lower-case, kebab).
        num_classes: number of classes; None where it depends on the files (``image-folder``).
        img_size: native side, or the side models take by default (32 for CIFAR-like inputs).
        preprocess: default preset of :mod:`ltpa.preprocess` (method §3.4 and §6.10).
        has_masks: items carry a bool (H, W) ground-truth mask.
        default_root: where the files are looked for when no root is given (None: nothing on disk).
        source: where to get the data.
        splits: split names accepted by ``build_dataset``.
        description: one line for listings.
        search_roots: every folder looked in, in order, when no root is given.
        downloadable: ``download=True`` can fetch the files.
        in_memory: decoded once into one tensor (else decoded lazily per item).
    """

    name: str
    num_classes: int | None
    img_size: int
    preprocess: str
    has_masks: bool
    default_root: str | None
    source: str
    splits: tuple[str, ...] = ("train", "test")
    description: str = ""
    search_roots: tuple[str, ...] = field(default=())
    downloadable: bool = False
    in_memory: bool = True


def data_error(name: str, problem: str, path: Path | str, layout: str, source: str) -> LTPAError:
    """One-line error naming the file, the layout expected and where to get the data."""
    return LTPAError(f"{name}: {problem}: {path}; expected {layout}; get it from {source}")


def find_data_dir(candidates: Sequence[Path], subdirs: Sequence[str], marker: str) -> Path | None:
    """The first ``candidate / subdir`` holding ``marker`` (a file or folder), or None.

    ``subdirs`` lists the nestings a user might have (``""`` for the candidate itself), so that a root may be
    the folder of the files, or its parent as the publisher's archive unpacks.
    """
    for candidate in candidates:
        for sub in subdirs:
            folder = candidate / sub if sub else candidate
            if (folder / marker).exists():
                return folder
    return None


def require_file(folder: Path, names: Iterable[str], *, name: str, layout: str, source: str) -> Path:
    """The first of ``names`` present in ``folder``; raises naming the first when none is."""
    names = list(names)
    for candidate in names:
        path = folder / candidate
        if path.is_file():
            return path
    raise data_error(name, "missing file", folder / names[0], layout, source)


class ImageDataset(Dataset):
    """Base of every ``ltpa`` dataset: a ``torch.utils.data.Dataset`` with class names and a mask flag.

    Attributes:
        name: registry name of the dataset.
        split: split name.
        root: folder the files were read from (None for generated data).
        classes: class names, index = label.
        has_masks: items are ``(image, label, mask)``.
    """

    name: str = ""
    split: str = ""
    root: Path | None = None
    classes: list[str]
    has_masks: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        raise NotImplementedError

    def __repr__(self) -> str:
        where = f", root={str(self.root)!r}" if self.root is not None else ""
        return f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, n={len(self)}{where})"


class TensorImageDataset(ImageDataset):
    """A dataset decoded once into tensors.

    Args:
        images: uint8 (N, 3, H, W).
        labels: int64 (N,); -1 for unlabelled items.
        classes: class names.
        masks: bool (N, H, W) ground truth, or None.
        name: registry name.
        split: split name.
        root: where the files were read from.

    Shape:
        - images: (N, 3, H, W) uint8.
        - labels: (N,) int64.
        - masks: (N, H, W) bool.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        classes: Sequence[str],
        *,
        masks: torch.Tensor | None = None,
        name: str = "",
        split: str = "",
        root: Path | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must be ({images.shape[0]},), got {tuple(labels.shape)}")
        if masks is not None and (
            masks.dtype != torch.bool or masks.shape != (images.shape[0], *images.shape[2:])
        ):
            raise ValueError(
                f"masks must be bool (N, H, W) matching images, got {masks.dtype} {tuple(masks.shape)}"
            )
        self.images = images
        self.labels = labels.long()
        self.masks = masks
        self.classes = list(classes)
        self.has_masks = masks is not None
        self.name = name
        self.split = split
        self.root = root

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        if self.masks is not None:
            return self.images[index], int(self.labels[index]), self.masks[index]
        return self.images[index], int(self.labels[index])


def _square(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _resize_batch(
    images: torch.Tensor, masks: torch.Tensor | None, size: tuple[int, int] | None, chunk: int = 1024
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if size is None or tuple(images.shape[-2:]) == size:
        return images, masks
    out = torch.cat([resize(images[i : i + chunk], size) for i in range(0, images.shape[0], chunk)])
    if masks is not None:
        masks = torch.cat([resize(masks[i : i + chunk], size) for i in range(0, masks.shape[0], chunk)])
    return out, masks


def _in_memory_parts(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None:
    """(images, labels, masks) of an in-memory dataset or of a Subset of one, without copying where possible."""
    if isinstance(dataset, TensorImageDataset):
        return dataset.images, dataset.labels, dataset.masks
    if isinstance(dataset, Subset):
        parts = _in_memory_parts(dataset.dataset)
        if parts is None:
            return None
        index = torch.as_tensor(list(dataset.indices), dtype=torch.long)
        images, labels, masks = parts
        return images[index], labels[index], None if masks is None else masks[index]
    return None


def load_tensors(
    dataset: Dataset,
    img_size: int | Sequence[int] | None = None,
    limit: int | None = None,
    progress: bool = True,
    *,
    num_workers: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """All of ``dataset`` (or its first ``limit`` items) as tensors, resized to ``img_size`` where given.

    In-memory datasets are returned as they are (no copy) when the size matches; lazy datasets are decoded item
    by item (in ``num_workers`` threads), with a progress bar on a terminal. Images are resized bilinearly with
    antialiasing, masks by nearest neighbour.

    Args:
        dataset: an ``ltpa`` dataset, a ``Subset`` of one, or any dataset of ``(image, label[, mask])`` items.
        img_size: output side (or (H, W)); None keeps the native size, which must then be the same everywhere.
        limit: keep only the first ``limit`` items.
        progress: show a tqdm bar (only when stderr is a terminal).
        num_workers: threads decoding lazy items (0: in this thread).

    Returns:
        ``(images, labels, masks)``; ``masks`` is None for datasets without masks.

    Shape:
        - images: (N, 3, S, S) uint8.
        - labels: (N,) int64.
        - masks: (N, S, S) bool.
    """
    size = _square(img_size) if img_size is not None else None
    parts = _in_memory_parts(dataset)
    if parts is not None:
        images, labels, masks = parts
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
            masks = None if masks is None else masks[:limit]
        images, masks = _resize_batch(images, masks, size)
        return images, labels, masks

    n = len(dataset)  # type: ignore[arg-type]
    if limit is not None:
        n = min(n, limit)
    show = progress and sys.stderr.isatty()
    name = getattr(dataset, "name", "") or type(dataset).__name__

    def fetch(i: int) -> tuple[torch.Tensor, int, torch.Tensor | None]:
        item = dataset[i]
        image = item[0]
        mask = item[2] if len(item) > 2 else None
        if size is not None and tuple(image.shape[-2:]) != size:
            image = resize(image, size)
            mask = None if mask is None else resize(mask, size)
        return image, int(item[1]), mask

    items: Iterable[tuple[torch.Tensor, int, torch.Tensor | None]]
    executor = ThreadPoolExecutor(num_workers) if num_workers > 0 else None
    try:
        mapper: Callable[..., Iterable[Any]] = executor.map if executor is not None else map
        items = tqdm(mapper(fetch, range(n)), total=n, desc=f"decoding {name}", disable=not show, unit="img")
        collected = list(items)
    finally:
        if executor is not None:
            executor.shutdown()
    if not collected:
        side = size if size is not None else (0, 0)
        return torch.empty(0, 3, *side, dtype=torch.uint8), torch.empty(0, dtype=torch.long), None
    shapes = {tuple(image.shape) for image, _, _ in collected}
    if len(shapes) > 1:
        raise LTPAError(
            f"{name}: images have different sizes ({len(shapes)} distinct, e.g. {sorted(shapes)[:2]}); "
            "pass img_size to load_tensors to resize them"
        )
    images = torch.stack([image for image, _, _ in collected])
    labels = torch.tensor([label for _, label, _ in collected], dtype=torch.long)
    has_masks = collected[0][2] is not None
    masks = torch.stack([m for _, _, m in collected if m is not None]) if has_masks else None
    return images, labels, masks
