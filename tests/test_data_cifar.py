"""CIFAR-10/100 readers on small fakes in the publisher's pickle format."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ltpa.data import build_dataset
from ltpa.data._download import Remote
from ltpa.errors import LTPAError


def _batch(n: int, seed: int, **labels: list[int]) -> dict[bytes, object]:
    rng = np.random.default_rng(seed)
    out: dict[bytes, object] = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8)}
    out.update({k.encode(): v for k, v in labels.items()})
    return out


def _dump(path: Path, obj: object) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def make_cifar10(root: Path, n: int = 4) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        _dump(folder / f"data_batch_{i}", _batch(n, i, labels=[(i + j) % 10 for j in range(n)]))
    _dump(folder / "test_batch", _batch(n, 9, labels=list(range(n))))
    names = [
        b"airplane",
        b"automobile",
        b"bird",
        b"cat",
        b"deer",
        b"dog",
        b"frog",
        b"horse",
        b"ship",
        b"truck",
    ]
    _dump(folder / "batches.meta", {b"label_names": names, b"num_vis": 3072})
    return folder


def make_cifar100(root: Path, n: int = 6) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, seed in (("train", 1), ("test", 2)):
        fine = [(seed * 7 + 13 * j) % 100 for j in range(n)]
        _dump(folder / split, _batch(n, seed, fine_labels=fine, coarse_labels=[f // 5 for f in fine]))
    _dump(
        folder / "meta",
        {
            b"fine_label_names": [f"f{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"c{i}".encode() for i in range(20)],
        },
    )
    return folder


def test_cifar10_reads_batches_in_channel_plane_order(tmp_path: Path) -> None:
    folder = make_cifar10(tmp_path)
    train = build_dataset("cifar10", root=tmp_path, split="train")
    test = build_dataset("cifar10", root=tmp_path, split="test")
    assert len(train) == 20 and len(test) == 4
    assert train.images.shape == (20, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.classes[1] == "automobile" and train.num_classes == 10 and not train.has_masks
    raw = pickle.loads((folder / "data_batch_2").read_bytes())
    # row layout: 1024 red, then green, then blue values, each 32x32 row-major
    expected = torch.from_numpy(raw[b"data"][1].reshape(3, 32, 32))
    assert torch.equal(train.images[5], expected)
    image, label = train[5]
    assert label == (2 + 1) % 10 and torch.equal(image, expected)
    assert test.labels.tolist() == [0, 1, 2, 3]


def test_cifar10_root_may_be_the_batches_folder(tmp_path: Path) -> None:
    folder = make_cifar10(tmp_path)
    assert len(build_dataset("cifar10", root=folder, split="test")) == 4


def test_cifar100_fine_and_coarse(tmp_path: Path) -> None:
    make_cifar100(tmp_path)
    fine = build_dataset("cifar100", root=tmp_path, split="train")
    coarse = build_dataset("cifar100", root=tmp_path, split="train", coarse=True)
    assert fine.num_classes == 100 and coarse.num_classes == 20
    assert torch.equal(coarse.labels, fine.labels // 5)
    assert fine.classes[3] == "f3" and coarse.classes[2] == "c2"


def test_cifar_missing_file_names_file_layout_and_source(tmp_path: Path) -> None:
    with pytest.raises(LTPAError, match=r"batches.meta.*expected .*cifar-10-batches-py.*toronto"):
        build_dataset("cifar10", root=tmp_path)
    folder = make_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(LTPAError, match=r"missing file: .*data_batch_3"):
        build_dataset("cifar10", root=tmp_path)


def test_cifar_truncated_and_malformed_batches(tmp_path: Path) -> None:
    folder = make_cifar10(tmp_path)
    data = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(data[: len(data) // 2])
    with pytest.raises(LTPAError, match="test_batch") as info:
        build_dataset("cifar10", root=tmp_path, split="test")
    assert "\n" not in str(info.value)
    _dump(folder / "test_batch", {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]})
    with pytest.raises(LTPAError, match="wrong contents"):
        build_dataset("cifar10", root=tmp_path, split="test")


def test_cifar_pickles_cannot_run_code(tmp_path: Path) -> None:
    folder = make_cifar10(tmp_path)

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("owned",))

    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(LTPAError, match="refusing to load"):
        build_dataset("cifar10", root=tmp_path, split="test")


def test_download_is_opt_in_and_fetches_into_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, Path, list[str]]] = []

    def fake_fetch(name: str, root: Path, remotes: list[Remote], *, extract: bool) -> None:
        calls.append((name, root, [url for remote in remotes for url in remote.urls]))
        make_cifar10(root)  # what unpacking the publisher's archive leaves behind

    monkeypatch.setattr("ltpa.data.cifar.fetch", fake_fetch)
    with pytest.raises(LTPAError, match="missing file"):
        build_dataset("cifar10", root=tmp_path, split="test")
    assert calls == []
    dataset = build_dataset("cifar10", root=tmp_path, split="test", download=True)
    assert len(dataset) == 4
    assert calls == [("cifar10", tmp_path, ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"])]
    build_dataset("cifar10", root=tmp_path, split="test", download=True)  # present: no second download
    assert len(calls) == 1
