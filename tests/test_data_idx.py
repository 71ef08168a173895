"""MNIST / Fashion-MNIST IDX reader: fakes gzipped or not, and the real Fashion-MNIST where installed."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from ltpa.data import build_dataset, dataset_info
from ltpa.errors import LTPAError

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _idx(array: np.ndarray) -> bytes:
    return (
        struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
        + struct.pack(f">{array.ndim}i", *array.shape)
        + array.tobytes()
    )


def make_idx(folder: Path, n: int = 7, *, gz: bool = True, seed: int = 0) -> np.ndarray:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    for prefix, count in (("train", n), ("t10k", n - 2)):
        for kind, array in (
            ("images-idx3", images[:count]),
            ("labels-idx1", (np.arange(count) % 10).astype(np.uint8)),
        ):
            data = _idx(array)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return images


@pytest.mark.parametrize("gz", [True, False])
def test_idx_padded_grey_to_rgb(tmp_path: Path, gz: bool) -> None:
    images = make_idx(tmp_path, gz=gz)
    train = build_dataset("mnist", root=tmp_path)
    assert train.images.shape == (7, 3, 32, 32) and train.images.dtype == torch.uint8
    assert torch.equal(train.images[3, 1, 2:30, 2:30], torch.from_numpy(images[3]))
    assert torch.equal(train.images[:, 0], train.images[:, 2])
    assert int(train.images[:, :, :2].max()) == 0 and int(train.images[:, :, :, 30:].max()) == 0
    assert train.labels.tolist() == list(range(7))
    assert len(build_dataset("mnist", root=tmp_path, split="test")) == 5
    native = build_dataset("mnist", root=tmp_path, pad_to=None)
    assert native.images.shape == (7, 3, 28, 28)


def test_idx_torchvision_layout_and_fashion_classes(tmp_path: Path) -> None:
    make_idx(tmp_path / "FashionMNIST" / "raw")
    fashion = build_dataset("fashion-mnist", root=tmp_path)
    assert fashion.classes[0] == "T-shirt/top" and fashion.num_classes == 10


def test_idx_errors(tmp_path: Path) -> None:
    with pytest.raises(LTPAError, match=r"train-images-idx3-ubyte.gz.*expected.*IDX.*lecun"):
        build_dataset("mnist", root=tmp_path)
    make_idx(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[:-50]))
    with pytest.raises(LTPAError, match=r"truncated.*train-images"):
        build_dataset("mnist", root=tmp_path)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(LTPAError, match="truncated or not gzip"):
        build_dataset("mnist", root=tmp_path)
    path.write_bytes(gzip.compress(b"\x01\x02\x03\x04" + data[4:]))
    with pytest.raises(LTPAError, match="bad magic"):
        build_dataset("mnist", root=tmp_path)
    path.write_bytes(gzip.compress(data))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(np.zeros(3, np.uint8))))
    with pytest.raises(LTPAError, match="labels for 7 images"):
        build_dataset("mnist", root=tmp_path)
    with pytest.raises(LTPAError, match="pad_to=20"):
        make_idx(tmp_path / "ok")
        build_dataset("mnist", root=tmp_path / "ok", pad_to=20)


def test_fashion_default_root_is_the_debian_package() -> None:
    info = dataset_info("fashion-mnist")
    assert info.default_root == str(FASHION) and "data/fashion-mnist" in info.search_roots


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist() -> None:
    train = build_dataset("fashion-mnist", split="train")
    test = build_dataset("fashion-mnist", split="test")
    assert train.images.shape == (60000, 3, 32, 32) and test.images.shape == (10000, 3, 32, 32)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert 0.20 < train.images[:2000].float().mean().item() / 255 < 0.24  # known mean 0.286, times (28/32)^2
