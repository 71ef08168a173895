"""SVHN reader on small ``*_32x32.mat`` fakes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from ltpa.data import build_dataset
from ltpa.errors import LTPAError


def make_svhn(root: Path, sizes: dict[str, int]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i, (split, n) in enumerate(sizes.items()):
        rng = np.random.default_rng(i)
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(n, 1)  # 1..10, 10 = digit 0
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})


def test_svhn_layout_and_label_10_is_zero(tmp_path: Path) -> None:
    make_svhn(tmp_path, {"train": 12, "test": 5})
    train = build_dataset("svhn", root=tmp_path)
    assert train.images.shape == (12, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.tolist()[:10] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]
    x = scipy.io.loadmat(tmp_path / "train_32x32.mat")["X"]
    # X[h, w, c, n] -> image n, channel c, row h, column w
    assert int(train.images[3, 2, 7, 11]) == int(x[7, 11, 2, 3])
    assert len(build_dataset("svhn", root=tmp_path, split="test")) == 5


def test_svhn_extra_split_and_option(tmp_path: Path) -> None:
    make_svhn(tmp_path, {"train": 4, "test": 2, "extra": 6})
    assert len(build_dataset("svhn", root=tmp_path, split="extra")) == 6
    both = build_dataset("svhn", root=tmp_path, include_extra=True)
    assert len(both) == 10 and both.images.shape[0] == both.labels.shape[0]


def test_svhn_errors(tmp_path: Path) -> None:
    with pytest.raises(LTPAError, match=r"train_32x32.mat.*expected.*ufldl"):
        build_dataset("svhn", root=tmp_path)
    make_svhn(tmp_path, {"train": 50})
    data = (tmp_path / "train_32x32.mat").read_bytes()
    (tmp_path / "train_32x32.mat").write_bytes(data[: len(data) // 2])
    with pytest.raises(LTPAError, match=r"train_32x32.mat"):
        build_dataset("svhn", root=tmp_path)
    scipy.io.savemat(
        tmp_path / "train_32x32.mat", {"X": np.zeros((28, 28, 1, 2), np.uint8), "y": np.ones((2, 1))}
    )
    with pytest.raises(LTPAError, match="wrong contents"):
        build_dataset("svhn", root=tmp_path)
