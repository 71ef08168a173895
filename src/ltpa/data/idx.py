"""MNIST and Fashion-MNIST from IDX files, gzipped or not.

Paper: "Learn To Pay Attention", Jetley et al., ICLR 2018, https://arxiv.org/abs/1804.02391. The paper does not
use these sets; ``ltpa`` uses them (and their objects in ``cluttered-fashion``) as small offline test beds.

Layout (as published, and as Debian's ``dataset-fashion-mnist`` installs it in
``/usr/share/datasets/fashion-mnist``)::

    <root>/{train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte}[.gz]

torchvision's ``<root>/FashionMNIST/raw`` and ``<root>/MNIST/raw`` folders are found too. An IDX file is a
big-endian header (two zero bytes, a type code, the number of dimensions, then one int32 per dimension)
followed by the values. The 28x28 grey images are zero-padded to 32x32 by default and repeated to 3 channels.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ltpa.data._base import TensorImageDataset, data_error, find_data_dir
from ltpa.data._download import Remote, fetch
from ltpa.errors import LTPAError

__all__ = [
    "FASHION_MNIST_CLASSES",
    "MNIST_CLASSES",
    "build_idx_dataset",
    "probe_idx",
    "read_idx",
    "read_idx_split",
]

MNIST_CLASSES = [str(d) for d in range(10)]
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]

FASHION_MNIST_SYSTEM_ROOT = "/usr/share/datasets/fashion-mnist"
_SOURCES = {
    "mnist": "http://yann.lecun.com/exdb/mnist/ (or any mirror of its four IDX files), or download=True (ltpa data --download)",
    "fashion-mnist": "https://github.com/zalandoresearch/fashion-mnist (data/fashion), the Debian package "
    "dataset-fashion-mnist, or download=True (ltpa data --download)",
}
_MIRRORS = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    "fashion-mnist": (
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ),
}
# the publishers' MD5 sums of the four .gz files
_MD5 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}
_LAYOUT = "<root>/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] (IDX format)"
_PREFIX = {"train": "train", "test": "t10k"}
_SUBDIRS = {
    "mnist": ("", "raw", "MNIST/raw", "mnist"),
    "fashion-mnist": ("", "raw", "FashionMNIST/raw", "fashion-mnist", "fashion"),
}
_IDX_TYPES: dict[int, Any] = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def read_idx(path: Path, *, name: str = "idx", source: str = "") -> np.ndarray:
    """The array stored in an IDX file (``.gz`` decompressed on the fly).

    Raises:
        LTPAError: naming the file when it is missing, truncated, or not IDX.
    """
    if not path.is_file():
        raise data_error(name, "missing file", path, _LAYOUT, source)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise data_error(name, f"truncated or not gzip ({err})", path, _LAYOUT, source) from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise data_error(name, "not an IDX file (bad magic number)", path, _LAYOUT, source)
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise data_error(name, "truncated IDX header", path, _LAYOUT, source)
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    if any(d < 0 for d in shape):
        raise data_error(name, f"negative dimension in IDX shape {shape}", path, _LAYOUT, source)
    expected = math.prod(shape) * dtype.itemsize  # exact: Python integers do not overflow
    if len(raw) - header != expected:
        raise data_error(
            name,
            f"truncated: {len(raw) - header} data bytes for shape {shape} ({expected} expected)",
            path,
            _LAYOUT,
            source,
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def probe_idx(name: str, candidates: list[Path]) -> Path | None:
    """The folder holding the ``train`` IDX images of ``mnist`` or ``fashion-mnist``, or None."""
    stem = "train-images-idx3-ubyte"
    return find_data_dir(candidates, _SUBDIRS[name], stem) or find_data_dir(
        candidates, _SUBDIRS[name], f"{stem}.gz"
    )


def _idx_file(folder: Path, stem: str) -> Path:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return folder / f"{stem}.gz"


def _locate(name: str, candidates: list[Path], split: str, download: bool) -> Path:
    if split not in _PREFIX:
        raise LTPAError(f"{name}: unknown split {split!r}; choose train or test")
    stem = f"{_PREFIX[split]}-images-idx3-ubyte"
    folder = None
    for marker in (stem, f"{stem}.gz"):
        folder = find_data_dir(candidates, _SUBDIRS[name], marker)
        if folder is not None:
            break
    if folder is None and download:
        files = [f"{p}-{k}-ubyte.gz" for p in ("train", "t10k") for k in ("images-idx3", "labels-idx1")]
        remotes = [Remote(f, tuple(m + f for m in _MIRRORS[name]), md5=_MD5[name][f]) for f in files]
        fetch(name, candidates[0], remotes, extract=False)
        folder = candidates[0]
    if folder is None:
        raise data_error(name, "missing file", candidates[0] / f"{stem}.gz", _LAYOUT, _SOURCES[name])
    return folder


def read_idx_split(
    name: str, candidates: list[Path], split: str, *, download: bool = False
) -> tuple[torch.Tensor, torch.Tensor, Path]:
    """The raw grey images and labels of one split of ``mnist`` or ``fashion-mnist``.

    Returns:
        ``(images, labels, folder)``: uint8 (N, 28, 28), int64 (N,), and the folder read.
    """
    folder = _locate(name, candidates, split, download)
    source = _SOURCES[name]
    images_path = _idx_file(folder, f"{_PREFIX[split]}-images-idx3-ubyte")
    labels_path = _idx_file(folder, f"{_PREFIX[split]}-labels-idx1-ubyte")
    images = read_idx(images_path, name=name, source=source)
    labels = read_idx(labels_path, name=name, source=source)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise data_error(
            name,
            f"images must be uint8 (N, H, W), got {images.dtype} {images.shape}",
            images_path,
            _LAYOUT,
            source,
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise data_error(
            name, f"{labels.shape} labels for {images.shape[0]} images", labels_path, _LAYOUT, source
        )
    if labels.dtype.kind not in "iu":
        raise data_error(name, f"labels must be integers, got {labels.dtype}", labels_path, _LAYOUT, source)
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) > 9):
        found = f"{int(labels.min())}..{int(labels.max())}"
        raise data_error(name, f"labels outside 0..9 (found {found})", labels_path, _LAYOUT, source)
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)), folder


def build_idx_dataset(
    name: str, candidates: list[Path], split: str, *, pad_to: int | None = 32, download: bool = False
) -> TensorImageDataset:
    """MNIST or Fashion-MNIST (60,000 train / 10,000 test), grey repeated to RGB.

    Args:
        name: ``"mnist"`` or ``"fashion-mnist"``.
        candidates: folders to look in, in order.
        split: ``"train"`` or ``"test"``.
        pad_to: zero-pad the 28x28 images symmetrically to this side (None keeps 28).
        download: fetch the four ``.gz`` files into the first candidate when missing.
    """
    grey, labels, folder = read_idx_split(name, candidates, split, download=download)
    h, w = grey.shape[1:]
    if pad_to is not None:
        if pad_to < max(h, w):
            raise LTPAError(
                f"{name}: pad_to={pad_to} is smaller than the {h}x{w} images; use >= {max(h, w)} or None"
            )
        top, left = (pad_to - h) // 2, (pad_to - w) // 2
        grey = F.pad(grey, (left, pad_to - w - left, top, pad_to - h - top))
    images = grey.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()  # (N, 3, S, S)
    classes = FASHION_MNIST_CLASSES if name == "fashion-mnist" else MNIST_CLASSES
    return TensorImageDataset(images, labels, classes, name=name, split=split, root=folder)
