"""STL-10 in its binary format, and the mapping of its classes onto CIFAR-10's (method §4.2).

Paper: "Learn To Pay Attention", Jetley et al., ICLR 2018, https://arxiv.org/abs/1804.02391.

Layout (https://cs.stanford.edu/~acoates/stl10/, ``stl10_binary.tar.gz``)::

    <root>/stl10_binary/{train_X.bin, train_y.bin, test_X.bin, test_y.bin, unlabeled_X.bin, class_names.txt}

``*_X.bin`` holds 96x96x3 uint8 images, each stored channel by channel in column-major order; ``*_y.bin`` one
byte per image with labels 1..10. The paper tests CIFAR-10 models directly on "STL-train" (5,000) and
"STL-test" (8,000): nine of the ten classes exist in CIFAR-10 (STL's "monkey" does not, CIFAR's "frog" has
no STL counterpart), so ``cifar10_labels=True`` relabels to CIFAR-10 indices and drops the monkeys. The
100,000 unlabelled images are read lazily from a memory map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ltpa.data._base import ImageDataset, TensorImageDataset, data_error, find_data_dir
from ltpa.data._download import Remote, fetch
from ltpa.data.cifar import CIFAR10_CLASSES

__all__ = ["STL10_CLASSES", "STL10_TO_CIFAR10", "STL10UnlabeledDataset", "build_stl10", "probe_stl10"]

STL10_CLASSES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
# STL-10 class index -> CIFAR-10 class index; "monkey" (7) has none.
STL10_TO_CIFAR10: dict[int, int] = {0: 0, 1: 2, 2: 1, 3: 3, 4: 4, 5: 5, 6: 7, 8: 8, 9: 9}

STL10_SOURCE = "https://cs.stanford.edu/~acoates/stl10/ (binary version, stl10_binary.tar.gz), or download=True (ltpa data --download)"
STL10_LAYOUT = (
    "<root>/stl10_binary/{train,test}_X.bin + {train,test}_y.bin (+ unlabeled_X.bin), 96x96x3 uint8"
)
_REMOTE = Remote(
    "stl10_binary.tar.gz",
    (
        "https://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
        "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",  # verified by the MD5 all the same
    ),
    md5="91f7769df0f17e558f3565bffb0c7dfb",
)
_SIDE = 96
_IMAGE_BYTES = 3 * _SIDE * _SIDE


def _error(problem: str, path: Path) -> Exception:
    return data_error("stl10", problem, path, STL10_LAYOUT, STL10_SOURCE)


def _image_count(path: Path) -> int:
    if not path.is_file():
        raise _error("missing file", path)
    size = path.stat().st_size
    if size == 0 or size % _IMAGE_BYTES:
        raise _error(f"truncated: {size} bytes is not a whole number of {_IMAGE_BYTES}-byte images", path)
    return size // _IMAGE_BYTES


def _to_chw(raw: np.ndarray) -> torch.Tensor:
    """(N, 27648) bytes in STL's column-major order -> (N, 3, 96, 96)."""
    return torch.from_numpy(np.ascontiguousarray(raw.reshape(-1, 3, _SIDE, _SIDE).transpose(0, 1, 3, 2)))


def _read_labels(path: Path, count: int) -> torch.Tensor:
    if not path.is_file():
        raise _error("missing file", path)
    labels = np.fromfile(path, dtype=np.uint8).astype(np.int64)
    if labels.shape[0] != count:
        raise _error(f"{labels.shape[0]} labels for {count} images", path)
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise _error("labels outside 1..10", path)
    return torch.from_numpy(labels - 1)


class STL10UnlabeledDataset(ImageDataset):
    """The 100,000 unlabelled STL-10 images, read on demand from a memory map; labels are -1.

    Shape:
        - image: (3, 96, 96) uint8.
    """

    def __init__(self, path: Path) -> None:
        count = _image_count(path)
        self._data = np.memmap(path, dtype=np.uint8, mode="r", shape=(count, _IMAGE_BYTES))
        self.classes = list(STL10_CLASSES)
        self.name, self.split, self.root = "stl10", "unlabeled", path.parent

    def __len__(self) -> int:
        return self._data.shape[0]

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        return _to_chw(np.array(self._data[index : index + 1]))[0], -1


def probe_stl10(candidates: list[Path]) -> Path | None:
    """The ``stl10_binary`` folder among ``candidates``, or None."""
    return find_data_dir(candidates, ("stl10_binary", ""), "train_X.bin")


def build_stl10(
    candidates: list[Path], split: str, *, cifar10_labels: bool = False, download: bool = False
) -> ImageDataset:
    """STL-10: train 5,000 and test 8,000 labelled 96x96 images, or the 100,000 unlabelled ones.

    Args:
        candidates: folders to look in, in order.
        split: ``"train"``, ``"test"`` or ``"unlabeled"``.
        cifar10_labels: relabel with CIFAR-10 class indices (:data:`STL10_TO_CIFAR10`) and drop the monkey
            images, so that a CIFAR-10 classifier is scored directly (train: 4,500, test: 7,200 images).
        download: fetch and unpack the archive into the first candidate when the files are missing.
    """
    images_file = f"{split}_X.bin"
    folder = find_data_dir(candidates, ("stl10_binary", ""), images_file)
    if folder is None and download:
        fetch("stl10", candidates[0], [_REMOTE], extract=True)
        folder = find_data_dir(candidates[:1], ("stl10_binary",), images_file)
    if folder is None:
        raise _error("missing file", candidates[0] / "stl10_binary" / images_file)
    if split == "unlabeled":
        return STL10UnlabeledDataset(folder / images_file)
    count = _image_count(folder / images_file)
    labels = _read_labels(folder / f"{split}_y.bin", count)
    images = _to_chw(np.fromfile(folder / images_file, dtype=np.uint8).reshape(count, _IMAGE_BYTES))
    classes = list(STL10_CLASSES)
    if cifar10_labels:
        lookup = torch.tensor([STL10_TO_CIFAR10.get(i, -1) for i in range(10)])
        mapped = lookup[labels]
        keep = mapped >= 0
        images, labels, classes = images[keep], mapped[keep], list(CIFAR10_CLASSES)
    return TensorImageDataset(images, labels, classes, name="stl10", split=split, root=folder)
