"""STL-10 binary reader and its mapping onto CIFAR-10 classes (method §4.2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ltpa.data import CIFAR10_CLASSES, STL10_CLASSES, STL10_TO_CIFAR10, build_dataset, load_tensors
from ltpa.errors import LTPAError


def make_stl10(root: Path, n: int = 10) -> tuple[Path, np.ndarray]:
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 3, 96, 96), dtype=np.uint8)  # (N, C, H, W)
    # stored column-major per channel: (N, C, W, H) in C order
    images.transpose(0, 1, 3, 2).tofile(folder / "train_X.bin")
    (np.arange(n) % 10 + 1).astype(np.uint8).tofile(folder / "train_y.bin")
    images[:3].transpose(0, 1, 3, 2).tofile(folder / "test_X.bin")
    np.array([8, 3, 1], np.uint8).tofile(folder / "test_y.bin")
    images[:2].transpose(0, 1, 3, 2).tofile(folder / "unlabeled_X.bin")
    return folder, images


def test_stl10_column_major_images_and_labels(tmp_path: Path) -> None:
    _, images = make_stl10(tmp_path)
    train = build_dataset("stl10", root=tmp_path)
    assert train.images.shape == (10, 3, 96, 96)
    assert torch.equal(train.images, torch.from_numpy(images))
    assert train.labels.tolist() == list(range(10)) and train.classes == STL10_CLASSES
    assert build_dataset("stl10", root=tmp_path, split="test").labels.tolist() == [7, 2, 0]


def test_stl10_mapping_to_cifar10() -> None:
    assert 7 not in STL10_TO_CIFAR10  # monkey
    for stl, cifar in STL10_TO_CIFAR10.items():
        stl_name, cifar_name = STL10_CLASSES[stl], CIFAR10_CLASSES[cifar]
        assert stl_name == cifar_name or (stl_name, cifar_name) == ("car", "automobile")
    assert sorted(STL10_TO_CIFAR10.values()) == [0, 1, 2, 3, 4, 5, 7, 8, 9]  # no frog (6)


def test_stl10_cifar10_labels_drop_monkeys(tmp_path: Path) -> None:
    _, images = make_stl10(tmp_path)
    mapped = build_dataset("stl10", root=tmp_path, cifar10_labels=True)
    assert len(mapped) == 9 and mapped.classes == CIFAR10_CLASSES
    assert mapped.labels.tolist() == [0, 2, 1, 3, 4, 5, 7, 8, 9]
    assert torch.equal(mapped.images[7], torch.from_numpy(images[8]))  # image after the monkey


def test_stl10_unlabeled_is_lazy(tmp_path: Path) -> None:
    _, images = make_stl10(tmp_path)
    unlabeled = build_dataset("stl10", root=tmp_path, split="unlabeled")
    assert not hasattr(unlabeled, "images")
    image, label = unlabeled[1]
    assert label == -1 and torch.equal(image, torch.from_numpy(images[1]))
    batch, labels, masks = load_tensors(unlabeled, progress=False)
    assert batch.shape == (2, 3, 96, 96) and labels.tolist() == [-1, -1] and masks is None


def test_stl10_errors(tmp_path: Path) -> None:
    with pytest.raises(LTPAError, match=r"stl10_binary/train_X.bin.*expected.*stanford"):
        build_dataset("stl10", root=tmp_path)
    folder, _ = make_stl10(tmp_path)
    data = (folder / "train_X.bin").read_bytes()
    (folder / "train_X.bin").write_bytes(data[:-100])
    with pytest.raises(LTPAError, match=r"truncated.*train_X.bin"):
        build_dataset("stl10", root=tmp_path)
    (folder / "train_X.bin").write_bytes(data)
    (folder / "train_y.bin").write_bytes(b"\x01\x02")
    with pytest.raises(LTPAError, match="2 labels for 10 images"):
        build_dataset("stl10", root=tmp_path)
