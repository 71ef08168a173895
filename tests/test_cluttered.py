"""Cluttered benchmarks: determinism, ground truth, disjoint train/test objects, speed; boxes from masks."""

from __future__ import annotations

import gzip
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ltpa.data import box_masks, boxes_from_masks, build_dataset, generate_cluttered
from ltpa.data.cluttered import digit_objects
from ltpa.errors import LTPAError

SMALL = {"num_train": 300, "num_test": 100}


def test_items_shapes_and_determinism() -> None:
    a = build_dataset("cluttered-digits", split="train", **SMALL)
    b = build_dataset("cluttered-digits", split="train", **SMALL)
    c = build_dataset("cluttered-digits", split="train", seed=1, **SMALL)
    assert a.images.shape == (300, 3, 32, 32) and a.images.dtype == torch.uint8
    assert a.masks is not None and a.masks.shape == (300, 32, 32) and a.masks.dtype == torch.bool
    assert a.has_masks and a.num_classes == 10 and a.classes[3] == "3"
    assert (
        torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks) and torch.equal(a.labels, b.labels)
    )
    assert not torch.equal(a.images, c.images)
    image, label, mask = a[7]
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32) and label == int(a.labels[7])
    assert set(torch.bincount(a.labels, minlength=10).tolist()) != {0}
    assert int(torch.bincount(a.labels, minlength=10).min()) > 10  # every class present
    # the first images do not depend on how many are generated
    more = build_dataset("cluttered-digits", split="train", num_train=700)
    assert torch.equal(more.images[:300], a.images)


def test_masks_are_the_object_and_boxes_are_moderate() -> None:
    ds = build_dataset("cluttered-digits", split="train", **SMALL)
    assert ds.masks is not None and bool(ds.masks.flatten(1).any(1).all())  # no empty mask
    boxes = ds.boxes.float()
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / 32**2
    assert 0.08 < float(area.mean()) < 0.3 and float(area.max()) < 0.5
    assert bool((boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 32).all())
    # the object is brighter than the background around it
    lum = ds.images.float().mean(dim=1)  # (N, S, S)
    inside = (lum * ds.masks).sum(dim=(1, 2)) / ds.masks.sum(dim=(1, 2))
    outside_box = ~box_masks(ds.boxes, 32)
    outside = (lum * outside_box).sum(dim=(1, 2)) / outside_box.sum(dim=(1, 2))
    assert float((inside > outside + 40).float().mean()) > 0.95
    # clutter: images without any fragment are darker outside the object box
    plain = build_dataset("cluttered-digits", split="train", num_fragments=0, noise=0.0, **SMALL)
    # the same objects at the same places: only the clutter differs
    assert torch.equal(plain.labels, ds.labels) and torch.equal(plain.object_ids, ds.object_ids)
    assert torch.equal(plain.masks, ds.masks)
    bright = lambda d: float((d.images.float().mean(dim=1) * outside_box).amax(dim=(1, 2)).mean())  # noqa: E731
    assert bright(ds) > bright(plain) + 50


def test_train_and_test_use_disjoint_objects() -> None:
    train = build_dataset("cluttered-digits", split="train", **SMALL)
    test = build_dataset("cluttered-digits", split="test", **SMALL)
    train_ids = set(train.object_ids.tolist()) | set(train.fragment_ids.flatten().tolist())
    test_ids = set(test.object_ids.tolist()) | set(test.fragment_ids.flatten().tolist())
    assert train_ids and test_ids and not train_ids & test_ids
    _, train_labels, train_pool = digit_objects("train")
    _, _, test_pool = digit_objects("test")
    assert len(train_pool) + len(test_pool) == 1797 and not set(train_pool.tolist()) & set(test_pool.tolist())
    assert 0.2 < len(test_pool) / 1797 < 0.3 and len(torch.unique(train_labels)) == 10


def test_fragments_come_from_other_classes() -> None:
    objects, labels, _ = digit_objects("train")
    out = generate_cluttered(objects, labels, 200, seed=5, num_fragments=6)
    assert out.fragment_ids.shape == (200, 6)
    assert bool((labels[out.fragment_ids] != out.labels[:, None]).all())
    assert torch.equal(labels[out.object_ids], out.labels)


def test_options_and_errors() -> None:
    big = build_dataset("cluttered-digits", split="test", img_size=48, num_test=20, colour=False)
    assert big.images.shape == (20, 3, 48, 48)
    assert torch.equal(big.images[:, 0], big.images[:, 1])  # grey
    with pytest.raises(LTPAError, match="object_scale"):
        build_dataset("cluttered-digits", object_scale=(0.6, 0.3))
    objects, labels, _ = digit_objects("test")
    with pytest.raises(LTPAError, match="two classes"):
        generate_cluttered(objects[labels == 1], labels[labels == 1], 4)


def test_generation_is_fast() -> None:
    objects, labels, _ = digit_objects("train")
    generate_cluttered(objects, labels, 64)  # warm-up
    # CPU time, not wall time, so that other processes on a shared machine do not make this flaky
    start = time.process_time()
    generate_cluttered(objects, labels, 2048)
    cpu = time.process_time() - start
    assert cpu < 6.0, f"2048 images took {cpu:.2f} s of CPU"  # ~1 s of CPU (0.5 s on 2 cores) when measured


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    path.write_bytes(gzip.compress(header + array.tobytes()))


def test_cluttered_fashion_from_idx_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        items = np.zeros((n, 28, 28), np.uint8)
        items[:, 6:22, 8:20] = rng.integers(120, 256, (n, 16, 12), dtype=np.uint8)
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", items)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    train = build_dataset("cluttered-fashion", root=tmp_path, split="train", num_train=50)
    test = build_dataset("cluttered-fashion", root=tmp_path, split="test", num_test=30)
    assert train.images.shape == (50, 3, 32, 32) and train.classes[0] == "T-shirt/top"
    assert bool(train.object_ids.max() < 40) and bool(test.object_ids.min() >= 60000)
    assert train.masks is not None and bool(train.masks.flatten(1).any(1).all())
    with pytest.raises(LTPAError, match="train-images-idx3-ubyte"):
        build_dataset("cluttered-fashion", root=tmp_path / "none")


def test_boxes_from_masks_and_back() -> None:
    masks = torch.zeros(3, 10, 12, dtype=torch.bool)
    masks[0, 2:5, 3:9] = True
    masks[1, 9, 11] = True
    boxes = boxes_from_masks(masks)
    assert boxes.tolist() == [[3, 2, 9, 5], [11, 9, 12, 10], [0, 0, 0, 0]]
    assert torch.equal(box_masks(boxes, (10, 12)), masks)
    assert boxes_from_masks(masks[0]).tolist() == [3, 2, 9, 5]
    ring = torch.zeros(8, 8, dtype=torch.bool)
    ring[1, 1:7] = ring[6, 1:7] = ring[1:7, 1] = ring[1:7, 6] = True
    assert box_masks(boxes_from_masks(ring), 8).sum() == 36
