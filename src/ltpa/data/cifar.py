"""CIFAR-10 and CIFAR-100 from the publisher's python pickle batches (method §3.4, §4.1).

Paper: "Learn To Pay Attention", Jetley et al., ICLR 2018, https://arxiv.org/abs/1804.02391.

Layout (https://www.cs.toronto.edu/~kriz/cifar.html, "python version")::

    <root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    <root>/cifar-100-python/{train, test, meta}

Each batch is a pickled dict with ``data`` (N, 3072) uint8 rows (1024 red, 1024 green, 1024 blue values,
row-major 32x32) and ``labels`` (CIFAR-10) or ``fine_labels``/``coarse_labels`` (CIFAR-100). The pickles are
read with an unpickler that only admits numpy arrays, lists and strings, so a file cannot run code; before
that, every opcode is scanned so that a declared length larger than the file (a forged 2^62-byte string) is
refused instead of being allocated, and files over :data:`MAX_PICKLE_BYTES` are refused outright.
"""

from __future__ import annotations

import importlib
import io
import pickle
import pickletools
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ltpa.data._base import TensorImageDataset, data_error, find_data_dir, require_file
from ltpa.data._download import Remote, fetch

__all__ = [
    "CIFAR10_CLASSES",
    "build_cifar10",
    "build_cifar100",
    "probe_cifar10",
    "probe_cifar100",
    "read_cifar_batch",
]

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

CIFAR10_SOURCE = "https://www.cs.toronto.edu/~kriz/cifar.html (CIFAR-10 python version), or download=True (ltpa data --download)"
CIFAR100_SOURCE = "https://www.cs.toronto.edu/~kriz/cifar.html (CIFAR-100 python version), or download=True (ltpa data --download)"
CIFAR10_LAYOUT = "<root>/cifar-10-batches-py/{data_batch_1..data_batch_5,test_batch,batches.meta}"
CIFAR100_LAYOUT = "<root>/cifar-100-python/{train,test,meta}"
# MD5 sums as published on the CIFAR page
_CIFAR10_REMOTE = Remote(
    "cifar-10-python.tar.gz",
    ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
    md5="c58f30108f718f92721af3b95e74349a",
)
_CIFAR100_REMOTE = Remote(
    "cifar-100-python.tar.gz",
    ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
    md5="eb9058c3a382ffc7106e4002c42a8d85",
)

# The largest publisher file (cifar-100-python/train) is 155 MB.
MAX_PICKLE_BYTES = 1 << 30

# numpy moved its pickle helpers from numpy.core to numpy._core in 2.0; batches written by either refer to one.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy."):
            return getattr(_numpy_multiarray(), name)
        if module == "numpy":
            return getattr(np, name)
        return super().find_class(module, name)


def _numpy_multiarray() -> Any:
    try:
        return importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy < 2
        return importlib.import_module("numpy.core.multiarray")


def _key(batch: dict[Any, Any], key: str) -> Any:
    for candidate in (key, key.encode()):
        if candidate in batch:
            return batch[candidate]
    raise KeyError(key)


def _text(value: Any) -> str:
    return value.decode("latin1") if isinstance(value, bytes) else str(value)


def _pickle_problem(raw: bytes) -> str | None:
    """Why ``raw`` is not a well-formed pickle whose lengths fit in the file, or None.

    ``pickletools.genops`` reads every argument from an in-memory stream, so a declared length beyond the end
    of the data is reported rather than allocated; frame lengths, which it does not read, are checked here.
    """
    stream = io.BytesIO(raw)
    try:
        for opcode, arg, position in pickletools.genops(stream):
            if opcode.name == "FRAME" and isinstance(arg, int) and arg > len(raw) - stream.tell():
                return f"frame of {arg} bytes at offset {position} runs past the end of the file"
    except ValueError as err:  # genops' report of a truncated argument or an unknown opcode
        return str(err).splitlines()[0] if str(err) else "malformed pickle"
    return None


def read_cifar_batch(path: Path, *, name: str, layout: str, source: str) -> dict[Any, Any]:
    """One pickled batch or meta file as a dict (keys as stored: bytes for the publisher's files).

    Raises:
        LTPAError: naming the file when it is missing, too large, truncated, declares sizes beyond its end,
            or is not a pickled dict of arrays, lists and strings.
    """
    if not path.is_file():
        raise data_error(name, "missing file", path, layout, source)
    size = path.stat().st_size
    if size > MAX_PICKLE_BYTES:
        raise data_error(
            name, f"{size} bytes, more than any CIFAR file ({MAX_PICKLE_BYTES} at most)", path, layout, source
        )
    raw = path.read_bytes()
    problem = _pickle_problem(raw)
    if problem is not None:
        raise data_error(name, f"truncated or not a CIFAR pickle ({problem})", path, layout, source)
    try:
        batch = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        OverflowError,
    ) as err:
        raise data_error(name, f"truncated or not a CIFAR pickle ({err})", path, layout, source) from err
    if not isinstance(batch, dict):
        raise data_error(name, "not a pickled dict", path, layout, source)
    return batch


def _images_labels(
    path: Path, label_key: str, *, name: str, layout: str, source: str, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    batch = read_cifar_batch(path, name=name, layout=layout, source=source)
    try:
        data = np.asarray(_key(batch, "data"))
        labels = np.asarray(_key(batch, label_key), dtype=np.int64)
    except KeyError as err:
        raise data_error(name, f"batch has no {err.args[0]!r} entry", path, layout, source) from err
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
        raise data_error(
            name,
            f"wrong contents (data {data.dtype} {data.shape}, {labels.shape[0]} labels; need uint8 (N, 3072), N labels)",
            path,
            layout,
            source,
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise data_error(name, f"labels outside 0..{num_classes - 1}", path, layout, source)
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())  # (N, 3, 32, 32): R, G, B planes
    return images, torch.from_numpy(labels)


def probe_cifar10(candidates: list[Path]) -> Path | None:
    """The CIFAR-10 batches folder among ``candidates``, or None."""
    return find_data_dir(candidates, ("cifar-10-batches-py", ""), "batches.meta")


def probe_cifar100(candidates: list[Path]) -> Path | None:
    """The CIFAR-100 folder among ``candidates``, or None."""
    return find_data_dir(candidates, ("cifar-100-python", ""), "meta")


def _locate(
    candidates: list[Path], folder: str, marker: str, remote: Remote, download: bool, name: str
) -> Path:
    found = find_data_dir(candidates, (folder, ""), marker)
    if found is None and download:
        fetch(name, candidates[0], [remote], extract=True)
        found = find_data_dir(candidates[:1], (folder,), marker)
    if found is None:
        layout = CIFAR10_LAYOUT if name == "cifar10" else CIFAR100_LAYOUT
        source = CIFAR10_SOURCE if name == "cifar10" else CIFAR100_SOURCE
        raise data_error(name, "missing file", candidates[0] / folder / marker, layout, source)
    return found


def build_cifar10(candidates: list[Path], split: str, *, download: bool = False) -> TensorImageDataset:
    """CIFAR-10: 50,000 train / 10,000 test 32x32 images, 10 classes.

    Args:
        candidates: folders to look in, in order.
        split: ``"train"`` (data_batch_1..5) or ``"test"`` (test_batch).
        download: fetch the archive into the first candidate when the files are missing.
    """
    name, layout, source = "cifar10", CIFAR10_LAYOUT, CIFAR10_SOURCE
    folder = _locate(candidates, "cifar-10-batches-py", "batches.meta", _CIFAR10_REMOTE, download, name)
    files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    parts = [
        _images_labels(folder / f, "labels", name=name, layout=layout, source=source, num_classes=10)
        for f in files
    ]
    meta = read_cifar_batch(
        require_file(folder, ["batches.meta"], name=name, layout=layout, source=source),
        name=name,
        layout=layout,
        source=source,
    )
    try:
        classes = [_text(c) for c in _key(meta, "label_names")]
    except KeyError:
        classes = list(CIFAR10_CLASSES)
    if len(classes) != 10:
        raise data_error(
            name, f"{len(classes)} label names instead of 10", folder / "batches.meta", layout, source
        )
    images = torch.cat([p[0] for p in parts])
    labels = torch.cat([p[1] for p in parts])
    return TensorImageDataset(images, labels, classes, name=name, split=split, root=folder)


def build_cifar100(
    candidates: list[Path], split: str, *, coarse: bool = False, download: bool = False
) -> TensorImageDataset:
    """CIFAR-100: 50,000 train / 10,000 test 32x32 images, 100 fine classes (or 20 coarse ones).

    Args:
        candidates: folders to look in, in order.
        split: ``"train"`` or ``"test"``.
        coarse: label with the 20 superclasses instead of the 100 fine classes.
        download: fetch the archive into the first candidate when the files are missing.
    """
    name, layout, source = "cifar100", CIFAR100_LAYOUT, CIFAR100_SOURCE
    folder = _locate(candidates, "cifar-100-python", "meta", _CIFAR100_REMOTE, download, name)
    label_key, names_key, k = (
        ("coarse_labels", "coarse_label_names", 20) if coarse else ("fine_labels", "fine_label_names", 100)
    )
    images, labels = _images_labels(
        folder / split, label_key, name=name, layout=layout, source=source, num_classes=k
    )
    meta = read_cifar_batch(folder / "meta", name=name, layout=layout, source=source)
    try:
        classes = [_text(c) for c in _key(meta, names_key)]
    except KeyError as err:
        raise data_error(name, f"meta has no {names_key!r} entry", folder / "meta", layout, source) from err
    if len(classes) != k:
        raise data_error(name, f"{len(classes)} {names_key} instead of {k}", folder / "meta", layout, source)
    return TensorImageDataset(images, labels, classes, name=name, split=split, root=folder)
