"""Datasets of "Learn To Pay Attention" in their publishers' formats, and offline cluttered benchmarks.

Paper: "Learn To Pay Attention", Jetley et al., ICLR 2018, https://arxiv.org/abs/1804.02391.

    from ltpa.data import build_dataset, load_tensors
    train = build_dataset("cluttered-digits", split="train")     # generated, no files needed
    images, labels, masks = load_tensors(train)                   # uint8 (N,3,32,32), int64 (N,), bool (N,32,32)
    cifar = build_dataset("cifar10", root="data/cifar10", split="test")

Every dataset is a ``torch.utils.data.Dataset`` of ``(image, label)`` or ``(image, label, mask)`` items with
``classes``, ``num_classes`` and ``has_masks``; :func:`dataset_info` gives metadata (default preprocessing,
input size, where files are looked for and where to get them) without reading anything. Batched augmentation
lives in :mod:`ltpa.data.augment`.
"""

from __future__ import annotations

from ltpa.data import augment
from ltpa.data._base import DatasetInfo, ImageDataset, TensorImageDataset, load_tensors
from ltpa.data._registry import build_dataset, dataset_info, dataset_options, find_dataset, list_datasets
from ltpa.data.boxes import box_masks, boxes_from_masks
from ltpa.data.cifar import CIFAR10_CLASSES
from ltpa.data.cluttered import ClutteredDataset, ClutteredImages, generate_cluttered
from ltpa.data.object_discovery import OBJECT_DISCOVERY_CLASSES
from ltpa.data.stl10 import STL10_CLASSES, STL10_TO_CIFAR10

__all__ = [
    "CIFAR10_CLASSES",
    "OBJECT_DISCOVERY_CLASSES",
    "STL10_CLASSES",
    "STL10_TO_CIFAR10",
    "ClutteredDataset",
    "ClutteredImages",
    "DatasetInfo",
    "ImageDataset",
    "TensorImageDataset",
    "augment",
    "box_masks",
    "boxes_from_masks",
    "build_dataset",
    "dataset_info",
    "dataset_options",
    "find_dataset",
    "generate_cluttered",
    "list_datasets",
    "load_tensors",
]
