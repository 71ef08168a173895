"""Any tree of images, one folder per class, with a seeded per-class train/test split (method §4.2).

Paper: "Learn To Pay Attention", Jetley et al., ICLR 2018, https://arxiv.org/abs/1804.02391.

The paper's transfer experiments use Caltech-101, Caltech-256, Event-8 (UIUC sports), Action-40 (Stanford 40
Actions) and Scene-67 (MIT Indoor 67); each ships, or is easily arranged, as ``<root>/<class>/*.jpg``. Their
train/test splits are unknown (method §6.2), so the split is a rule: per class, the sorted files are shuffled
with a generator seeded by ``(seed, class name)`` and the first ``train_per_class`` (or ``train_fraction``) go
to train, the rest (capped at ``test_per_class``) to test. Adding or removing a class does not change the
others' splits. ``label_from="filename"`` reads the class from a ``<class>_<n>.jpg`` name instead, which
is how Stanford 40 Actions ships its ``JPEGImages`` folder.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ltpa.data._base import ImageDataset, data_error
from ltpa.data._decode import IMAGE_EXTENSIONS, read_image
from ltpa.data.augment import resize
from ltpa.errors import LTPAError

__all__ = ["ImageFolderDataset", "build_image_folder", "split_files"]

FOLDER_SOURCE = (
    "the dataset's publisher (Caltech-101/256, UIUC Event-8, Stanford 40 Actions, MIT Indoor 67), unpacked "
    "so that each class is one folder"
)
FOLDER_LAYOUT = "<root>/<class>/*.{jpg,jpeg,png,gif,webp,bmp,tif} (one folder per class)"


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _class_folders(root: Path) -> dict[str, list[Path]]:
    files: dict[str, list[Path]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(p for p in folder.rglob("*") if _is_image(p))
        if images:
            files[folder.name] = images
    return files


def _class_prefixes(root: Path) -> dict[str, list[Path]]:
    files: dict[str, list[Path]] = {}
    for path in sorted(p for p in root.iterdir() if _is_image(p)):
        label = path.stem.rsplit("_", 1)[0] if "_" in path.stem else path.stem
        files.setdefault(label, []).append(path)
    return files


def split_files(
    files: Sequence[Path],
    split: str,
    *,
    key: str,
    seed: int = 0,
    train_fraction: float = 0.8,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
) -> list[Path]:
    """The files of one class that belong to ``split`` under the seeded rule (see the module docstring)."""
    if split == "all":
        return list(files)
    rng = np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])
    order = [files[i] for i in rng.permutation(len(files))]
    n_train = (
        min(len(order), train_per_class)
        if train_per_class is not None
        else round(train_fraction * len(order))
    )
    if split == "train":
        return order[:n_train]
    rest = order[n_train:]
    return rest[:test_per_class] if test_per_class is not None else rest


class ImageFolderDataset(ImageDataset):
    """Images of a class-per-folder tree, decoded on access.

    Attributes:
        paths: image files of this split.
        labels: int64 (N,) class indices.

    Shape:
        - image: (3, img_size, img_size) uint8, or native size when ``img_size`` is None.
    """

    def __init__(
        self,
        paths: list[Path],
        labels: list[int],
        classes: list[str],
        *,
        root: Path,
        split: str,
        img_size: int | None,
    ) -> None:
        self.paths = paths
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.classes = classes
        self.img_size = img_size
        self.name, self.split, self.root = "image-folder", split, root

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        image = read_image(self.paths[index])
        if self.img_size is not None:
            image = resize(image, self.img_size)
        return image, int(self.labels[index])


def _descend(root: Path) -> Path:
    """Follows a lone wrapper folder (``101_ObjectCategories``, ``Images``) down to the class folders."""
    for _ in range(2):
        children = [p for p in root.iterdir() if not p.name.startswith(".")]
        dirs = [p for p in children if p.is_dir()]
        if len(dirs) != 1 or any(_is_image(p) for p in children):
            break
        inner = [p for p in dirs[0].iterdir() if p.is_dir()]
        if not inner:
            break
        root = dirs[0]
    return root


def build_image_folder(
    candidates: list[Path],
    split: str,
    *,
    img_size: int | None = None,
    train_fraction: float = 0.8,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    seed: int = 0,
    exclude: Sequence[str] = (),
    label_from: Literal["folder", "filename"] = "folder",
) -> ImageFolderDataset:
    """A class-per-folder image tree with a seeded, per-class train/test split.

    Args:
        candidates: folders to look in, in order (the first existing one is used).
        split: ``"train"``, ``"test"`` or ``"all"``.
        img_size: side to resize every image to (None: native sizes; ``load_tensors`` can resize).
        train_fraction: share of each class used for training, when ``train_per_class`` is not given.
        train_per_class: fixed number of training images per class (e.g. 30 for Caltech-101).
        test_per_class: at most this many test images per class.
        seed: seed of the split rule.
        exclude: class names to leave out (e.g. ``BACKGROUND_Google``, ``257.clutter``).
        label_from: ``"folder"`` (class = folder name) or ``"filename"`` (``<class>_<n>.jpg`` in one folder).
    """
    root = next((c for c in candidates if c.is_dir()), None)
    if root is None:
        raise data_error("image-folder", "missing folder", candidates[0], FOLDER_LAYOUT, FOLDER_SOURCE)
    if not 0.0 <= train_fraction <= 1.0:
        raise LTPAError(f"image-folder: train_fraction must be in [0, 1], got {train_fraction}")
    if label_from == "folder":
        root = _descend(root)
        files = _class_folders(root)
    elif label_from == "filename":
        files = _class_prefixes(root)
    else:
        raise LTPAError(f"image-folder: label_from must be 'folder' or 'filename', got {label_from!r}")
    for name in exclude:
        files.pop(name, None)
    if not files:
        raise data_error("image-folder", "no class folders with images", root, FOLDER_LAYOUT, FOLDER_SOURCE)
    classes = sorted(files)
    paths: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        chosen = split_files(
            files[name],
            split,
            key=name,
            seed=seed,
            train_fraction=train_fraction,
            train_per_class=train_per_class,
            test_per_class=test_per_class,
        )
        paths.extend(chosen)
        labels.extend([index] * len(chosen))
    return ImageFolderDataset(paths, labels, classes, root=root, split=split, img_size=img_size)
