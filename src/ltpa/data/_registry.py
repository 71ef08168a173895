"""The dataset registry: names, metadata, where files are looked for, and ``build_dataset``.

Paper: "Learn To Pay Attention", Jetley et al., ICLR 2018, https://arxiv.org/abs/1804.02391 (datasets: method §3.4,
§4.2, §4.3; default preprocessing per dataset: method §3.4 and §6.8-6.10).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ltpa.data import cifar, cluttered, cub, folder, idx, object_discovery, stl10, svhn
from ltpa.data._base import DatasetInfo, ImageDataset
from ltpa.errors import LTPAError
from ltpa.utils import did_you_mean

__all__ = ["build_dataset", "dataset_info", "dataset_options", "find_dataset", "list_datasets"]

_FASHION_ROOTS = (idx.FASHION_MNIST_SYSTEM_ROOT, "data/fashion-mnist")


@dataclass(frozen=True)
class _Entry:
    info: DatasetInfo
    build: Callable[..., ImageDataset]  # (candidates, split, **options)
    probe: Callable[[list[Path]], Path | None] | None  # None: generated, nothing on disk


def _entry(
    name: str,
    build: Callable[..., ImageDataset],
    probe: Callable[[list[Path]], Path | None] | None,
    *,
    search_roots: tuple[str, ...] | None = None,
    **info: Any,
) -> _Entry:
    roots = search_roots if search_roots is not None else (f"data/{name}",)
    return _Entry(
        DatasetInfo(name=name, default_root=roots[0] if roots else None, search_roots=roots, **info),
        build,
        probe,
    )


_REGISTRY: dict[str, _Entry] = {
    e.info.name: e
    for e in (
        _entry(
            "cifar10",
            cifar.build_cifar10,
            cifar.probe_cifar10,
            num_classes=10,
            img_size=32,
            preprocess="yuv_lcn",
            has_masks=False,
            source=cifar.CIFAR10_SOURCE,
            downloadable=True,
            description="CIFAR-10, 50,000/10,000 32x32 images, 10 classes (method §4.1)",
        ),
        _entry(
            "cifar100",
            cifar.build_cifar100,
            cifar.probe_cifar100,
            num_classes=100,
            img_size=32,
            preprocess="gcn_zca",
            has_masks=False,
            source=cifar.CIFAR100_SOURCE,
            downloadable=True,
            description="CIFAR-100, 50,000/10,000 32x32 images, 100 fine classes (coarse=True: 20) (method §4.1)",
        ),
        _entry(
            "svhn",
            svhn.build_svhn,
            svhn.probe_svhn,
            num_classes=10,
            img_size=32,
            preprocess="meanstd",
            has_masks=False,
            source=svhn.SVHN_SOURCE,
            splits=("train", "test", "extra"),
            downloadable=True,
            description="SVHN digits, 73,257/26,032 32x32 images (+531,131 extra) (method §4.1)",
        ),
        _entry(
            "stl10",
            stl10.build_stl10,
            stl10.probe_stl10,
            num_classes=10,
            img_size=96,
            preprocess="yuv_lcn",
            has_masks=False,
            source=stl10.STL10_SOURCE,
            splits=("train", "test", "unlabeled"),
            downloadable=True,
            description="STL-10, 5,000/8,000 96x96 images; cifar10_labels=True maps onto CIFAR-10 (method §4.2)",
        ),
        _entry(
            "cub200",
            cub.build_cub200,
            cub.probe_cub200,
            num_classes=200,
            img_size=80,
            preprocess="meanstd",
            has_masks=False,
            source=cub.CUB_SOURCE,
            splits=("train", "test", "all"),
            downloadable=True,
            in_memory=False,
            description="CUB-200-2011 birds, 5,994/5,794 images at 80x80 (method §2.3, §4.1)",
        ),
        _entry(
            "mnist",
            partial(idx.build_idx_dataset, "mnist"),
            partial(idx.probe_idx, "mnist"),
            num_classes=10,
            img_size=32,
            preprocess="meanstd",
            has_masks=False,
            source=idx._SOURCES["mnist"],
            downloadable=True,
            description="MNIST digits, 60,000/10,000 28x28 grey images padded to 32x32 RGB",
        ),
        _entry(
            "fashion-mnist",
            partial(idx.build_idx_dataset, "fashion-mnist"),
            partial(idx.probe_idx, "fashion-mnist"),
            search_roots=_FASHION_ROOTS,
            num_classes=10,
            img_size=32,
            preprocess="meanstd",
            has_masks=False,
            source=idx._SOURCES["fashion-mnist"],
            downloadable=True,
            description="Fashion-MNIST, 60,000/10,000 28x28 grey images padded to 32x32 RGB",
        ),
        _entry(
            "image-folder",
            folder.build_image_folder,
            lambda c: next((p for p in c if p.is_dir()), None),
            num_classes=None,
            img_size=32,
            preprocess="meanstd",
            has_masks=False,
            source=folder.FOLDER_SOURCE,
            splits=("train", "val", "test", "all"),
            in_memory=False,
            description="any <root>/<class>/*.jpg tree, seeded split (Caltech-101/256, Event-8, Action-40, "
            "Scene-67: method §4.2), or <root>/{train,val,test}/<class>/ split folders; masks=DIR for localize",
        ),
        _entry(
            "object-discovery",
            object_discovery.build_object_discovery,
            object_discovery.probe_object_discovery,
            num_classes=3,
            img_size=32,
            preprocess="meanstd",
            has_masks=True,
            source=object_discovery.OD_SOURCE,
            splits=("test", "all", "train"),
            downloadable=True,
            in_memory=False,
            description="Object Discovery Airplane100/Car100/Horse100 with masks (method §4.3)",
        ),
        _entry(
            "cluttered-digits",
            partial(cluttered.build_cluttered, "digits"),
            None,
            search_roots=(),
            num_classes=10,
            img_size=32,
            preprocess="meanstd",
            has_masks=True,
            splits=("train", "test", "val"),
            source="generated from scikit-learn's handwritten digits (installed with ltpa); nothing to download",
            description="one sklearn digit among clutter on a 32x32 canvas, with its mask (generated)",
        ),
        _entry(
            "cluttered-fashion",
            partial(cluttered.build_cluttered, "fashion"),
            partial(idx.probe_idx, "fashion-mnist"),
            search_roots=_FASHION_ROOTS,
            num_classes=10,
            img_size=32,
            preprocess="meanstd",
            has_masks=True,
            splits=("train", "test", "val"),
            source="generated from Fashion-MNIST items; "
            + idx._SOURCES["fashion-mnist"].replace(", or download=True (ltpa data --download)", ""),
            description="one Fashion-MNIST item among clutter on a 32x32 canvas, with its mask (generated)",
        ),
    )
}


def list_datasets() -> list[str]:
    """Names accepted by :func:`build_dataset`, sorted."""
    return sorted(_REGISTRY)


def _lookup(name: str) -> _Entry:
    key = name.strip().lower().replace("_", "-")
    if key in _REGISTRY:
        return _REGISTRY[key]
    close = did_you_mean(key, _REGISTRY, n=3)
    hint = f"{close} " if close else ""
    raise LTPAError(f"unknown dataset {name!r}; {hint}choose one of {', '.join(list_datasets())}")


def dataset_info(name: str) -> DatasetInfo:
    """What ``ltpa`` knows about dataset ``name`` before reading it.

    Raises:
        LTPAError: for an unknown name, listing close matches.
    """
    return _lookup(name).info


def dataset_options(name: str) -> dict[str, Any]:
    """The keyword options ``build_dataset(name, ...)`` accepts, with their defaults."""
    entry = _lookup(name)
    params = list(inspect.signature(entry.build).parameters.values())
    return {p.name: p.default for p in params if p.kind == inspect.Parameter.KEYWORD_ONLY}


def _candidates(info: DatasetInfo, root: str | os.PathLike[str] | None) -> list[Path]:
    if root is not None:
        return [Path(root).expanduser()]
    return [Path(r).expanduser() for r in info.search_roots]


def find_dataset(name: str, root: str | os.PathLike[str] | None = None) -> tuple[Path | None, list[Path]]:
    """Where the files of ``name`` are, without reading them.

    Returns:
        ``(found, looked)``: the folder found (None when missing, or for generated data that needs no files)
        and the folders looked in.
    """
    entry = _lookup(name)
    looked = _candidates(entry.info, root)
    if entry.probe is None:
        return None, looked
    return entry.probe(looked) if looked else None, looked


def build_dataset(
    name: str, root: str | os.PathLike[str] | None = None, split: str = "train", **options: Any
) -> ImageDataset:
    """The dataset ``name`` read from ``root`` (default: ``dataset_info(name).search_roots``, in order).

    Items are ``(image, label)`` with ``image`` uint8 (3, H, W), or ``(image, label, mask)`` with a bool (H, W)
    mask for datasets with ground truth. Nothing is downloaded unless ``download=True`` is passed.

    Args:
        name: one of :func:`list_datasets`.
        root: folder holding the files (or their publisher's parent folder).
        split: one of ``dataset_info(name).splits``.
        **options: dataset-specific options, see :func:`dataset_options`.

    Raises:
        LTPAError: unknown name, split or option; missing or malformed files (naming the file, the layout
            expected and where to get the data).
    """
    entry = _lookup(name)
    info = entry.info
    if split not in info.splits:
        raise LTPAError(f"{info.name}: unknown split {split!r}; choose one of {', '.join(info.splits)}")
    valid = dataset_options(info.name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        listed = ", ".join(f"{k}={v!r}" for k, v in valid.items()) or "none"
        raise LTPAError(f"{info.name}: unknown option(s) {', '.join(unknown)}; valid options: {listed}")
    candidates = _candidates(info, root)
    return entry.build(candidates, split, **options)
