"""The dataset registry, ``load_tensors`` and the ``ltpa data`` command."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.utils.data import Subset
from torchvision.io import decode_png, read_file

from ltpa.cli import main
from ltpa.data import (
    DatasetInfo,
    TensorImageDataset,
    build_dataset,
    dataset_info,
    dataset_options,
    find_dataset,
    list_datasets,
    load_tensors,
)
from ltpa.errors import LTPAError
from ltpa.preprocess import list_preprocess

NAMES = [
    "cifar10",
    "cifar100",
    "cluttered-digits",
    "cluttered-fashion",
    "cub200",
    "fashion-mnist",
    "image-folder",
    "mnist",
    "object-discovery",
    "stl10",
    "svhn",
]
SMALL = {"num_train": 40, "num_test": 10}


def test_list_and_info() -> None:
    assert list_datasets() == NAMES
    for name in NAMES:
        info = dataset_info(name)
        assert isinstance(info, DatasetInfo) and info.name == name and info.preprocess in list_preprocess()
        assert info.source and info.splits
    assert (
        dataset_info("cifar10").preprocess == "yuv_lcn" and dataset_info("cifar100").preprocess == "gcn_zca"
    )
    assert dataset_info("svhn").preprocess == "meanstd" and dataset_info("cub200").preprocess == "meanstd"
    assert dataset_info("stl10").img_size == 96 and dataset_info("cub200").img_size == 80
    assert dataset_info("image-folder").num_classes is None and dataset_info("object-discovery").has_masks
    assert dataset_info("cifar10").default_root == "data/cifar10"
    assert dataset_info("cluttered-digits").default_root is None
    with pytest.raises(Exception, match=r"frozen|cannot assign"):
        dataset_info("cifar10").name = "x"  # type: ignore[misc]
    assert "download" in dataset_options("cifar10") and "download" not in dataset_options("cluttered-digits")


def test_unknown_name_split_option() -> None:
    with pytest.raises(LTPAError, match="did you mean cifar10"):
        dataset_info("cifr10")
    with pytest.raises(LTPAError, match=r"unknown split 'extra'.*train, test, val"):
        build_dataset("cluttered-digits", split="extra")
    with pytest.raises(LTPAError, match=r"unknown option.*num_imgs.*num_train=10000"):
        build_dataset("cluttered-digits", num_imgs=5)
    assert dataset_info("Cluttered_Digits").name == "cluttered-digits"


def test_find_dataset(tmp_path: Path) -> None:
    assert find_dataset("cifar10", tmp_path) == (None, [tmp_path])
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "batches.meta").write_bytes(b"")
    assert find_dataset("cifar10", tmp_path)[0] == tmp_path / "cifar-10-batches-py"


def test_load_tensors_in_memory_is_zero_copy_and_resizes() -> None:
    dataset = build_dataset("cluttered-digits", split="test", **SMALL)
    assert isinstance(dataset, TensorImageDataset)
    images, labels, masks = load_tensors(dataset)
    assert images is dataset.images and labels is dataset.labels and masks is dataset.masks
    images, labels, masks = load_tensors(dataset, img_size=16, limit=4)
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.uint8 and labels.shape == (4,)
    assert masks is not None and masks.shape == (4, 16, 16) and masks.dtype == torch.bool
    sub_images, sub_labels, _ = load_tensors(Subset(dataset, [3, 1]))
    assert (
        torch.equal(sub_images, dataset.images[[3, 1]])
        and sub_labels.tolist() == dataset.labels[[3, 1]].tolist()
    )


def test_load_tensors_of_a_generic_dataset_matches() -> None:
    dataset = build_dataset("cluttered-digits", split="test", **SMALL)
    items = [dataset[i] for i in range(len(dataset))]
    images, labels, masks = load_tensors(items, progress=True)  # a list is a map-style dataset too
    assert torch.equal(images, dataset.images) and torch.equal(labels, dataset.labels)
    assert masks is not None and torch.equal(masks, dataset.masks)


def test_cli_lists_datasets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data"]) == 0
    out = capsys.readouterr().out
    for name in NAMES:
        assert name in out
    assert "generated" in out and "looked in" in out


def test_cli_counts_and_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = tmp_path / "grid.png"
    argv = ["data", "cluttered-digits", "--split", "test", "--grid", str(grid), "--grid-count", "9"]
    assert main([*argv, "--data-option", "num_test=30", "--option", "noise=0.1"]) == 0
    out = capsys.readouterr().out
    assert "30 images, 10 classes, masks: True" in out and str(grid) in out
    image = decode_png(read_file(str(grid)))
    assert image.shape[0] in (3, 4) and image.shape[1] > 3 * 32 and image.shape[2] > 3 * 32


def test_grid_names_each_image_by_its_class_and_boxes_the_object() -> None:
    from _figures import assert_readable

    from ltpa.commands.data import sample_grid_figure
    from ltpa.data import build_dataset

    dataset = build_dataset("cluttered-digits", split="test", num_test=30)
    fig = sample_grid_figure(dataset, [0, 5, 7], 32, "cluttered-digits, test split: 3 random images of 30")
    texts = assert_readable(fig)
    assert texts[:3] == [dataset.classes[int(dataset[i][1])] for i in (0, 5, 7)]
    assert sum(len(ax.patches) for ax in fig.axes) == 3


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "cifar10", "--root", str(tmp_path), "--no-grid"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "batches.meta" in err and "toronto" in err
    assert main(["data", "cluttered-digits", "--download"]) == 2
    assert "nothing to download" in capsys.readouterr().err
    assert main(["data", "cluttered-digits", "--option", "oops"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err
