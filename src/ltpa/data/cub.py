"""CUB-200-2011 birds from the publisher's text index files, decoded lazily (method §2.3, §3.4, §6.9).

Paper: "Learn To Pay Attention", Jetley et al., ICLR 2018, https://arxiv.org/abs/1804.02391.

Layout (https://www.vision.caltech.edu/datasets/cub_200_2011/, ``CUB_200_2011.tgz``)::

    <root>/CUB_200_2011/images.txt            "<id> <class folder>/<file>.jpg"
    <root>/CUB_200_2011/image_class_labels.txt "<id> <class 1..200>"
    <root>/CUB_200_2011/train_test_split.txt  "<id> <1 = train, 0 = test>"
    <root>/CUB_200_2011/bounding_boxes.txt    "<id> <x> <y> <width> <height>"
    <root>/CUB_200_2011/classes.txt           "<class> <nnn.Name>"
    <root>/CUB_200_2011/images/<class folder>/<file>.jpg

The official split gives 5,994 training and 5,794 test images. The paper's CUB models take 80x80 inputs; whether
images were cropped to the bird's box first is unknown (method §6.9), so ``crop_to_bbox`` is an option (off).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ltpa.data._base import ImageDataset, data_error, find_data_dir
from ltpa.data._decode import read_image
from ltpa.data._download import Remote, fetch
from ltpa.data.augment import resize
from ltpa.errors import LTPAError

__all__ = ["CUBDataset", "build_cub200", "probe_cub200"]

CUB_SOURCE = "https://www.vision.caltech.edu/datasets/cub_200_2011/ (CUB_200_2011.tgz), or download=True (ltpa data --download)"
CUB_LAYOUT = (
    "<root>/CUB_200_2011/{images.txt,image_class_labels.txt,train_test_split.txt,bounding_boxes.txt,"
    "classes.txt,images/<class>/<file>.jpg}"
)
_REMOTE = Remote(
    "CUB_200_2011.tgz",
    ("https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",),
    md5="97eceeb196236b17998738112f37df78",  # MD5 of the archive as published
)


def _read_table(path: Path, columns: int) -> dict[int, list[str]]:
    """``id -> [fields]`` of one index file, checking every line has ``columns`` fields after the id."""
    if not path.is_file():
        raise data_error("cub200", "missing file", path, CUB_LAYOUT, CUB_SOURCE)
    table: dict[int, list[str]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != columns + 1 or not fields[0].isdigit():
            raise data_error(
                "cub200", f"line {number} is not '<id> + {columns} fields'", path, CUB_LAYOUT, CUB_SOURCE
            )
        table[int(fields[0])] = fields[1:]
    if not table:
        raise data_error("cub200", "empty index file", path, CUB_LAYOUT, CUB_SOURCE)
    return table


class CUBDataset(ImageDataset):
    """One split of CUB-200-2011, decoded on access.

    Args:
        folder: the ``CUB_200_2011`` folder.
        split: ``"train"``, ``"test"`` or ``"all"``.
        img_size: side to resize to (None: native size, which varies).
        crop_to_bbox: crop each image to its bounding box before resizing.

    Attributes:
        paths: image files, in index order.
        labels: int64 (N,) class indices 0..199.
        boxes: float (N, 4) bounding boxes ``(x, y, width, height)`` in pixels, as published.

    Shape:
        - image: (3, img_size, img_size) uint8.
    """

    def __init__(
        self, folder: Path, split: str, *, img_size: int | None = 80, crop_to_bbox: bool = False
    ) -> None:
        files = _read_table(folder / "images.txt", 1)
        labels = _read_table(folder / "image_class_labels.txt", 1)
        is_train = _read_table(folder / "train_test_split.txt", 1)
        boxes = _read_table(folder / "bounding_boxes.txt", 4)
        classes = _read_table(folder / "classes.txt", 1)
        indexed = {
            "image_class_labels.txt": labels,
            "train_test_split.txt": is_train,
            "bounding_boxes.txt": boxes,
        }
        for filename, table in indexed.items():
            missing = sorted(set(files) - set(table))
            if missing:
                raise data_error(
                    "cub200", f"no entry for image id {missing[0]}", folder / filename, CUB_LAYOUT, CUB_SOURCE
                )
        ids = sorted(files)
        if split != "all":
            ids = [i for i in ids if (is_train[i][0] == "1") == (split == "train")]
        try:
            self.labels = torch.tensor([int(labels[i][0]) - 1 for i in ids], dtype=torch.long)
            self.boxes = torch.tensor([[float(v) for v in boxes[i]] for i in ids], dtype=torch.float64)
        except ValueError as err:
            raise data_error(
                "cub200", f"non-numeric label or box ({err})", folder, CUB_LAYOUT, CUB_SOURCE
            ) from err
        self.classes = [classes[k][0].split(".", 1)[-1] for k in sorted(classes)]
        if self.labels.numel() and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise data_error(
                "cub200",
                f"labels outside 1..{len(self.classes)}",
                folder / "image_class_labels.txt",
                CUB_LAYOUT,
                CUB_SOURCE,
            )
        self.paths = [folder / "images" / files[i][0] for i in ids]
        self.img_size = img_size
        self.crop_to_bbox = crop_to_bbox
        self.name, self.split, self.root = "cub200", split, folder

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        path = self.paths[index]
        if not path.is_file():
            raise data_error("cub200", "missing image", path, CUB_LAYOUT, CUB_SOURCE)
        image = read_image(path)  # (3, H, W)
        if self.crop_to_bbox:
            x, y, w, h = self.boxes[index].tolist()
            height, width = image.shape[1:]
            x0, y0 = max(0, math.floor(x)), max(0, math.floor(y))
            x1, y1 = min(width, math.ceil(x + w)), min(height, math.ceil(y + h))
            if x1 > x0 and y1 > y0:
                image = image[:, y0:y1, x0:x1]
        if self.img_size is not None:
            image = resize(image, self.img_size)
        return image, int(self.labels[index])


def probe_cub200(candidates: list[Path]) -> Path | None:
    """The ``CUB_200_2011`` folder among ``candidates``, or None."""
    return find_data_dir(candidates, ("CUB_200_2011", ""), "images.txt")


def build_cub200(
    candidates: list[Path],
    split: str,
    *,
    img_size: int | None = 80,
    crop_to_bbox: bool = False,
    download: bool = False,
) -> CUBDataset:
    """CUB-200-2011 with the official split (train 5,994, test 5,794; ``"all"`` for the 11,788).

    Args:
        candidates: folders to look in, in order.
        split: ``"train"``, ``"test"`` or ``"all"``.
        img_size: side to resize to (80 as the paper's CUB models; None keeps native sizes).
        crop_to_bbox: crop to the bird's bounding box first (as REPRO-KERAS does).
        download: fetch and unpack the archive into the first candidate when missing.
    """
    folder = probe_cub200(candidates)
    if folder is None and download:
        fetch("cub200", candidates[0], [_REMOTE], extract=True)
        folder = find_data_dir(candidates[:1], ("CUB_200_2011",), "images.txt")
    if folder is None:
        raise data_error(
            "cub200", "missing file", candidates[0] / "CUB_200_2011" / "images.txt", CUB_LAYOUT, CUB_SOURCE
        )
    if img_size is not None and img_size < 1:
        raise LTPAError(f"cub200: img_size must be positive or None, got {img_size}")
    return CUBDataset(folder, split, img_size=img_size, crop_to_bbox=crop_to_bbox)
