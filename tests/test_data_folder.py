"""Image-folder reader: class folders, the seeded split rule, lazy decoding, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.io import write_jpeg, write_png

from ltpa.data import build_dataset, load_tensors
from ltpa.errors import LTPAError


def make_folder(root: Path, counts: dict[str, int]) -> Path:
    for c, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        for i in range(n):
            image = torch.full((3, 10 + i, 12), 30, dtype=torch.uint8)
            image[c % 3] = 220
            if i % 2:
                write_png(image, str(root / name / f"{name}_{i}.png"))
            else:
                write_jpeg(image, str(root / name / f"{name}_{i}.jpg"), quality=95)
    (root / next(iter(counts)) / "notes.txt").write_text("not an image")
    return root


def test_folder_classes_split_and_labels(tmp_path: Path) -> None:
    make_folder(tmp_path, {"red": 10, "green": 5, "blue": 8})
    train = build_dataset("image-folder", root=tmp_path, split="train")
    test = build_dataset("image-folder", root=tmp_path, split="test")
    every = build_dataset("image-folder", root=tmp_path, split="all")
    assert train.classes == ["blue", "green", "red"] and train.num_classes == 3
    assert len(every) == 23 and len(train) == 8 + 4 + 6 and len(test) == 23 - 18
    assert not set(train.paths) & set(test.paths) and set(train.paths) | set(test.paths) == set(every.paths)
    for path, label in zip(train.paths, train.labels.tolist()):
        assert path.parent.name == train.classes[label]
    image, label = train[0]
    assert label == 0 and image.dtype == torch.uint8 and image.shape[0] == 3
    assert (
        image[2].float().mean() > 150 and image[0].float().mean() < 100
    )  # "blue" images have a bright blue channel


def test_folder_split_is_seeded_and_per_class(tmp_path: Path) -> None:
    make_folder(tmp_path / "a", {"x": 10, "y": 10})
    make_folder(tmp_path / "b", {"x": 10, "y": 10, "z": 4})
    first = build_dataset("image-folder", root=tmp_path / "a", seed=3)
    again = build_dataset("image-folder", root=tmp_path / "a", seed=3)
    other = build_dataset("image-folder", root=tmp_path / "a", seed=4)
    more = build_dataset("image-folder", root=tmp_path / "b", seed=3)
    assert first.paths == again.paths and first.paths != other.paths
    # adding a class leaves the other classes' splits alone
    assert [p.name for p in first.paths] == [p.name for p in more.paths if p.parent.name != "z"]
    fixed = build_dataset("image-folder", root=tmp_path / "a", train_per_class=3)
    capped = build_dataset(
        "image-folder", root=tmp_path / "a", split="test", train_per_class=3, test_per_class=2
    )
    assert len(fixed) == 6 and len(capped) == 4
    assert len(build_dataset("image-folder", root=tmp_path / "b", exclude=["z"]).classes) == 2


def test_folder_wrapper_folder_filename_labels_and_resize(tmp_path: Path) -> None:
    make_folder(tmp_path / "101_ObjectCategories", {"cat": 4, "dog": 4})
    wrapped = build_dataset("image-folder", root=tmp_path, split="all", img_size=16)
    assert wrapped.classes == ["cat", "dog"] and wrapped[0][0].shape == (3, 16, 16)
    flat = tmp_path / "JPEGImages"
    flat.mkdir()
    for name in ("applauding_001", "applauding_002", "riding_a_bike_001"):
        write_png(torch.zeros(3, 8, 8, dtype=torch.uint8), str(flat / f"{name}.png"))
    actions = build_dataset("image-folder", root=flat, split="all", label_from="filename")
    assert actions.classes == ["applauding", "riding_a_bike"] and actions.labels.tolist() == [0, 0, 1]


def test_folder_load_tensors_needs_a_size_for_mixed_sizes(tmp_path: Path) -> None:
    make_folder(tmp_path, {"a": 3, "b": 3})
    dataset = build_dataset("image-folder", root=tmp_path, split="all")
    with pytest.raises(LTPAError, match=r"different sizes.*img_size"):
        load_tensors(dataset, progress=False)
    images, labels, masks = load_tensors(dataset, img_size=20, progress=False, num_workers=2)
    assert images.shape == (6, 3, 20, 20) and labels.tolist() == [0, 0, 0, 1, 1, 1] and masks is None


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(LTPAError, match=r"missing folder.*expected <root>/<class>"):
        build_dataset("image-folder", root=tmp_path / "nowhere")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(LTPAError, match="no class folders with images"):
        build_dataset("image-folder", root=tmp_path / "empty")
    make_folder(tmp_path / "bad", {"a": 2})
    (tmp_path / "bad" / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    dataset = build_dataset("image-folder", root=tmp_path / "bad", split="all")
    with pytest.raises(LTPAError, match=r"cannot decode image file .*broken.jpg"):
        load_tensors(dataset, img_size=8, progress=False)


def test_split_folders_keep_the_users_split(tmp_path: Path) -> None:
    # train/ and val/ folders are splits, not two classes named "train" and "val"
    make_folder(tmp_path / "train", {"cat": 4, "dog": 3})
    make_folder(tmp_path / "Val", {"cat": 2, "dog": 1, "eel": 1})  # a class only in val still gets its index
    train = build_dataset("image-folder", root=tmp_path, split="train")
    val = build_dataset("image-folder", root=tmp_path, split="val")
    assert train.classes == val.classes == ["cat", "dog", "eel"]
    assert sorted(p.parent.parent.name for p in train.paths) == ["train"] * 7
    assert train.labels.tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert val.labels.tolist() == [0, 0, 1, 2] and all("Val" in str(p) for p in val.paths)
    assert len(build_dataset("image-folder", root=tmp_path, split="all")) == 11
    with pytest.raises(
        LTPAError, match=r"laid out by split .* no test folder; choose train or val \(ltpa train"
    ):
        build_dataset("image-folder", root=tmp_path, split="test")
    # a seeded-split folder has no val split
    make_folder(tmp_path / "plain", {"a": 3, "b": 3})
    with pytest.raises(LTPAError, match="has no val/ folder"):
        build_dataset("image-folder", root=tmp_path / "plain", split="val")


def test_a_class_named_test_beside_other_classes_is_a_class(tmp_path: Path) -> None:
    make_folder(tmp_path, {"test": 2, "train": 2, "zebra": 2})
    dataset = build_dataset("image-folder", root=tmp_path, split="all")
    assert dataset.classes == ["test", "train", "zebra"]


def test_folder_masks_mirror_the_image_tree(tmp_path: Path) -> None:
    from PIL import Image

    make_folder(tmp_path / "images", {"cat": 2, "dog": 2})
    for image in (tmp_path / "images").rglob("*_*.*"):
        if image.suffix == ".txt":
            continue
        mask = torch.zeros(10 + int(image.stem.rsplit("_", 1)[1]), 12, dtype=torch.uint8)
        mask[2:5, 3:9] = 255
        target = tmp_path / "masks" / image.parent.name / f"{image.stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask.numpy()).save(target)
    dataset = build_dataset(
        "image-folder", root=tmp_path / "images", split="all", masks=str(tmp_path / "masks")
    )
    assert dataset.has_masks
    _, _, masks = load_tensors(dataset, img_size=24, progress=False)
    assert masks is not None and masks.shape == (4, 24, 24) and masks.dtype == torch.bool
    assert 0 < masks[0].float().mean() < 0.5  # the 3x6 box of 10x12, scaled
    (tmp_path / "masks" / "dog" / "dog_1.png").unlink()
    with pytest.raises(LTPAError, match="1 of 4 images have no mask under"):
        build_dataset("image-folder", root=tmp_path / "images", split="all", masks=str(tmp_path / "masks"))


def test_split_file_gives_the_users_own_split(tmp_path: Path) -> None:
    make_folder(tmp_path / "pics", {"cat": 3, "dog": 3})
    split = tmp_path / "split.txt"
    split.write_text(
        "# my split\ncat/cat_0.jpg train\ncat/cat_1.png val\ndog/dog_0.jpg train\ndog/dog_1.png,test\n"
        "dog/dog_2.jpg train  # the last one\n"
    )
    opts = {"split_file": str(split)}
    train = build_dataset("image-folder", root=tmp_path / "pics", split="train", **opts)
    assert sorted(p.name for p in train.paths) == ["cat_0.jpg", "dog_0.jpg", "dog_2.jpg"]
    assert train.labels.tolist() == [0, 1, 1] and train.classes == ["cat", "dog"]
    val = build_dataset("image-folder", root=tmp_path / "pics", split="val", **opts)
    assert [p.name for p in val.paths] == ["cat_1.png"]
    assert (
        len(build_dataset("image-folder", root=tmp_path / "pics", split="all", **opts)) == 5
    )  # cat_2 unlisted
    split.write_text("cat/cat_9.jpg train\n")
    with pytest.raises(LTPAError, match=r"lists 1 images that are not in .* \(first: cat/cat_9.jpg\)"):
        build_dataset("image-folder", root=tmp_path / "pics", split="train", **opts)
    split.write_text("cat/cat_0.jpg training\n")
    with pytest.raises(LTPAError, match=r"line 1 .* is not '<path> <train\|val\|test>'"):
        build_dataset("image-folder", root=tmp_path / "pics", split="train", **opts)
