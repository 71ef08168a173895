"""CUB-200-2011 reader on a small fake with the publisher's index files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.io import write_png

from ltpa.data import build_dataset, load_tensors
from ltpa.errors import LTPAError

# id, class (1-based), train?, box (x, y, w, h), image size (h, w)
_ROWS = [
    (1, 1, 1, (10, 5, 20, 12), (30, 40)),
    (2, 1, 0, (0, 0, 8, 8), (20, 20)),
    (3, 2, 1, (4, 6, 10, 10), (24, 36)),
    (4, 3, 0, (2, 2, 5, 9), (16, 16)),
    (5, 3, 1, (1, 1, 6, 6), (12, 12)),
]


def make_cub(root: Path) -> Path:
    folder = root / "CUB_200_2011"
    classes = {1: "001.Black_footed_Albatross", 2: "002.Laysan_Albatross", 3: "003.Sooty_Albatross"}
    images, labels, split, boxes = [], [], [], []
    for i, c, train, (x, y, w, h), (height, width) in _ROWS:
        rel = f"{classes[c]}/{classes[c].split('.')[1]}_{i:04d}.png"
        path = folder / "images" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        image = torch.full((3, height, width), 40, dtype=torch.uint8)
        image[:, y : y + h, x : x + w] = torch.tensor([200, 20 * c, 10 * i], dtype=torch.uint8).view(3, 1, 1)
        write_png(image, str(path))
        images.append(f"{i} {rel}")
        labels.append(f"{i} {c}")
        split.append(f"{i} {train}")
        boxes.append(f"{i} {float(x)} {float(y)} {float(w)} {float(h)}")
    (folder / "images.txt").write_text("\n".join(images) + "\n")
    (folder / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (folder / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (folder / "bounding_boxes.txt").write_text("\n".join(boxes) + "\n")
    (folder / "classes.txt").write_text("\n".join(f"{k} {v}" for k, v in classes.items()) + "\n")
    return folder


def test_cub_official_split_labels_and_size(tmp_path: Path) -> None:
    make_cub(tmp_path)
    train = build_dataset("cub200", root=tmp_path, split="train")
    test = build_dataset("cub200", root=tmp_path, split="test")
    assert (
        len(train) == 3 and len(test) == 2 and len(build_dataset("cub200", root=tmp_path, split="all")) == 5
    )
    assert train.labels.tolist() == [0, 1, 2] and test.labels.tolist() == [0, 2]
    assert train.classes == ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross"]
    image, label = train[1]
    assert image.shape == (3, 80, 80) and image.dtype == torch.uint8 and label == 1
    native = build_dataset("cub200", root=tmp_path, split="train", img_size=None)
    assert native[0][0].shape == (3, 30, 40)


def test_cub_crop_to_bbox_keeps_only_the_bird(tmp_path: Path) -> None:
    make_cub(tmp_path)
    cropped = build_dataset("cub200", root=tmp_path, split="train", crop_to_bbox=True, img_size=None)
    image, _ = cropped[0]
    assert image.shape == (3, 12, 20)
    assert bool((image[0] == 200).all())  # the box content only, no background
    resized, _, _ = load_tensors(
        build_dataset("cub200", root=tmp_path, split="train", crop_to_bbox=True), progress=False
    )
    assert resized.shape == (3, 3, 80, 80) and bool((resized[:, 0] == 200).all())


def test_cub_errors(tmp_path: Path) -> None:
    with pytest.raises(LTPAError, match=r"CUB_200_2011/images.txt.*expected.*caltech"):
        build_dataset("cub200", root=tmp_path)
    folder = make_cub(tmp_path)
    (folder / "bounding_boxes.txt").write_text("1 1.0 2.0\n")
    with pytest.raises(LTPAError, match=r"line 1.*bounding_boxes.txt"):
        build_dataset("cub200", root=tmp_path)
    (folder / "bounding_boxes.txt").unlink()
    with pytest.raises(LTPAError, match=r"missing file: .*bounding_boxes.txt"):
        build_dataset("cub200", root=tmp_path)
    make_cub(tmp_path / "again")
    dataset = build_dataset("cub200", root=tmp_path / "again")
    dataset.paths[0].write_bytes(b"\x89PNG truncated")
    with pytest.raises(LTPAError, match="cannot decode"):
        dataset[0]
