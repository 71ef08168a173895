"""Object Discovery (Rubinstein et al., CVPR 2013): Airplane100, Car100, Horse100 with ground-truth masks (method §4.3).

Paper: "Learn To Pay Attention", Jetley et al., ICLR 2018, https://arxiv.org/abs/1804.02391.

Layout (https://people.csail.mit.edu/mrub/ObjectDiscovery/, ``ObjectDiscovery-data.zip``)::

    <root>/Data/{Airplane100,Car100,Horse100}/<name>.jpg
    <root>/Data/{Airplane100,Car100,Horse100}/GroundTruth/<name>.png   (white object on black)

The paper binarises attention maps of CIFAR models on these 300 images and scores them by Jaccard index against
the masks. Some images show no instance of the class (their mask is empty) or have no usable mask file; they
cannot be scored, so they are left out, listed in ``skipped`` and reported in the log. Items are
``(image, label, mask)`` with labels 0 = airplane, 1 = car, 2 = horse, in that order (as the official file).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ltpa.data._base import ImageDataset, data_error, find_data_dir
from ltpa.data._decode import read_image, read_mask
from ltpa.data._download import Remote, fetch
from ltpa.data.augment import resize
from ltpa.errors import LTPAError

__all__ = [
    "OBJECT_DISCOVERY_CLASSES",
    "ObjectDiscoveryDataset",
    "build_object_discovery",
    "probe_object_discovery",
]

OBJECT_DISCOVERY_CLASSES = ["airplane", "car", "horse"]
OD_SOURCE = "https://people.csail.mit.edu/mrub/ObjectDiscovery/ (ObjectDiscovery-data.zip), or download=True (ltpa data --download)"
OD_LAYOUT = "<root>/Data/{Airplane100,Car100,Horse100}/<name>.jpg + .../GroundTruth/<name>.png"
# no published checksum: the zip is only fetched over HTTPS, and unpacked with every member checked
_REMOTE = Remote(
    "ObjectDiscovery-data.zip",
    ("https://people.csail.mit.edu/mrub/ObjectDiscovery/ObjectDiscovery-data.zip",),
)
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
_SUBDIRS = ("Data", "ObjectDiscovery-data/Data", "")

_log = logging.getLogger(__name__)


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            width, height = image.size
    except (OSError, UnidentifiedImageError) as err:
        raise data_error(
            "object-discovery", f"cannot read image header ({err})", path, OD_LAYOUT, OD_SOURCE
        ) from err
    return height, width


def _mask_problem(image: Path, mask_path: Path) -> tuple[str | None, torch.Tensor | None]:
    if not mask_path.is_file():
        return "no ground-truth file", None
    mask = read_mask(mask_path)
    if tuple(mask.shape) != _image_size(image):
        return f"mask {tuple(mask.shape)} and image {_image_size(image)} differ in size", None
    if not bool(mask.any()):
        return "empty mask (no object)", None
    return None, mask


class ObjectDiscoveryDataset(ImageDataset):
    """The Object Discovery images with a usable mask, decoded on access.

    Attributes:
        paths: image files kept.
        mask_paths: their ground-truth files.
        labels: int64 (N,): 0 airplane, 1 car, 2 horse.
        skipped: ``(image file, reason)`` for every image left out.

    Shape:
        - image: (3, H, W) uint8 (native size, or img_size x img_size).
        - mask: (H, W) bool.
    """

    has_masks = True

    def __init__(
        self,
        folder: Path,
        *,
        categories: Sequence[str] = tuple(OBJECT_DISCOVERY_CLASSES),
        full: bool = False,
        img_size: int | None = None,
        split: str = "test",
    ) -> None:
        self.classes = list(OBJECT_DISCOVERY_CLASSES)
        self.paths: list[Path] = []
        self.mask_paths: list[Path] = []
        labels: list[int] = []
        self.skipped: list[tuple[Path, str]] = []
        for category in categories:
            if category not in self.classes:
                raise LTPAError(
                    f"object-discovery: unknown category {category!r}; choose from {self.classes}"
                )
            sub = folder / (category.capitalize() + ("" if full else "100"))
            if not sub.is_dir():
                raise data_error("object-discovery", "missing folder", sub, OD_LAYOUT, OD_SOURCE)
            images = sorted(p for p in sub.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)
            if not images:
                raise data_error("object-discovery", "no images in folder", sub, OD_LAYOUT, OD_SOURCE)
            for image in images:
                mask_path = sub / "GroundTruth" / f"{image.stem}.png"
                problem, _ = _mask_problem(image, mask_path)
                if problem is not None:
                    self.skipped.append((image, problem))
                    continue
                self.paths.append(image)
                self.mask_paths.append(mask_path)
                labels.append(self.classes.index(category))
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.img_size = img_size
        self.name, self.split, self.root = "object-discovery", split, folder
        if self.skipped:
            listed = "; ".join(f"{p.parent.name}/{p.name} ({why})" for p, why in self.skipped[:5])
            more = f"; and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
            _log.warning(
                "object-discovery: %d of %d images have no usable mask and are skipped for scoring: %s%s",
                len(self.skipped),
                len(self.skipped) + len(self.paths),
                listed,
                more,
            )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        image = read_image(self.paths[index])  # (3, H, W)
        mask = read_mask(self.mask_paths[index])  # (H, W)
        if self.img_size is not None:
            image, mask = resize(image, self.img_size), resize(mask, self.img_size)
        return image, int(self.labels[index]), mask


def probe_object_discovery(candidates: list[Path]) -> Path | None:
    """The ``Data`` folder holding ``Airplane100`` among ``candidates``, or None."""
    return find_data_dir(candidates, _SUBDIRS, "Airplane100")


def build_object_discovery(
    candidates: list[Path],
    split: str,
    *,
    categories: Sequence[str] = tuple(OBJECT_DISCOVERY_CLASSES),
    full: bool = False,
    img_size: int | None = None,
    download: bool = False,
) -> ObjectDiscoveryDataset:
    """The Object Discovery 100-image subsets (or the full sets) with their masks.

    There is one split; ``"test"``, ``"all"`` and ``"train"`` all give the same images.

    Args:
        candidates: folders to look in, in order.
        split: recorded on the dataset; every split name gives the same images (there is one split).
        categories: which of ``airplane``, ``car``, ``horse`` to read, in this order.
        full: read ``Airplane``/``Car``/``Horse`` (the full Internet sets) instead of the 100-image subsets.
        img_size: side to resize images (bilinear) and masks (nearest) to; None keeps native sizes.
        download: fetch and unpack the zip into the first candidate when missing.
    """
    marker = (categories[0].capitalize() if categories else "Airplane") + ("" if full else "100")
    subdirs = _SUBDIRS
    folder = find_data_dir(candidates, subdirs, marker)
    if folder is None and download:
        fetch("object-discovery", candidates[0], [_REMOTE], extract=True)
        folder = find_data_dir(candidates[:1], subdirs, marker)
    if folder is None:
        raise data_error(
            "object-discovery", "missing folder", candidates[0] / "Data" / marker, OD_LAYOUT, OD_SOURCE
        )
    return ObjectDiscoveryDataset(folder, categories=categories, full=full, img_size=img_size, split=split)
