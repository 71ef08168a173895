"""Object Discovery reader: images, GroundTruth masks, unusable masks reported and skipped (method §4.3)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torchvision.io import write_jpeg, write_png

from ltpa.data import OBJECT_DISCOVERY_CLASSES, build_dataset, load_tensors
from ltpa.errors import LTPAError


def _mask(h: int, w: int, y0: int, x0: int) -> torch.Tensor:
    mask = torch.zeros(h, w, dtype=torch.bool)
    mask[y0 : y0 + h // 2, x0 : x0 + w // 3] = True
    return mask


def make_object_discovery(root: Path) -> Path:
    data = root / "ObjectDiscovery-data" / "Data"
    for c, name in enumerate(("Airplane100", "Car100", "Horse100")):
        (data / name / "GroundTruth").mkdir(parents=True)
        for i in range(3):
            h, w = 20 + 4 * i, 30 - 2 * c
            mask = _mask(h, w, i + 1, 2 * i + c)
            image = torch.full((3, h, w), 20, dtype=torch.uint8)
            image[:, mask] = 230
            write_jpeg(image, str(data / name / f"{i:04d}.jpg"), quality=95)
            write_png(
                (mask * 255).to(torch.uint8).unsqueeze(0), str(data / name / "GroundTruth" / f"{i:04d}.png")
            )
    # unusable: an image without an object, one without a mask file, one whose mask has another size
    write_png(
        torch.zeros(1, 20, 30, dtype=torch.uint8), str(data / "Airplane100" / "GroundTruth" / "0000.png")
    )
    (data / "Car100" / "GroundTruth" / "0001.png").unlink()
    write_png(
        torch.full((1, 5, 5), 255, dtype=torch.uint8), str(data / "Horse100" / "GroundTruth" / "0002.png")
    )
    return data


def test_object_discovery_items_masks_and_order(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_object_discovery(tmp_path)
    with caplog.at_level(logging.WARNING):
        dataset = build_dataset("object-discovery", root=tmp_path, split="test")
    assert dataset.has_masks and dataset.classes == OBJECT_DISCOVERY_CLASSES
    assert dataset.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert [p.name for p in dataset.paths] == [
        "0001.jpg",
        "0002.jpg",
        "0000.jpg",
        "0002.jpg",
        "0000.jpg",
        "0001.jpg",
    ]
    reasons = {f"{p.parent.name}/{p.name}": why for p, why in dataset.skipped}
    assert set(reasons) == {"Airplane100/0000.jpg", "Car100/0001.jpg", "Horse100/0002.jpg"}
    assert "empty" in reasons["Airplane100/0000.jpg"] and "no ground-truth" in reasons["Car100/0001.jpg"]
    assert "3 of 9 images have no usable mask" in caplog.text
    image, label, mask = dataset[2]  # Car100/0000
    assert label == 1 and image.shape == (3, 20, 28) and mask.dtype == torch.bool
    assert torch.equal(mask, _mask(20, 28, 1, 1))
    assert image[0][mask].float().mean() > 200 and image[0][~mask].float().mean() < 60


def test_object_discovery_resized_tensors(tmp_path: Path) -> None:
    make_object_discovery(tmp_path)
    dataset = build_dataset(
        "object-discovery", root=tmp_path / "ObjectDiscovery-data", split="all", img_size=32
    )
    assert dataset[0][0].shape == (3, 32, 32) and dataset[0][2].shape == (32, 32)
    images, labels, masks = load_tensors(
        build_dataset("object-discovery", root=tmp_path), img_size=16, progress=False
    )
    assert images.shape == (6, 3, 16, 16) and masks is not None and masks.shape == (6, 16, 16)
    assert masks.flatten(1).any(1).all() and labels.tolist() == [0, 0, 1, 1, 2, 2]
    horses = build_dataset("object-discovery", root=tmp_path, categories=["horse"])
    assert horses.labels.tolist() == [2, 2]


def test_object_discovery_errors(tmp_path: Path) -> None:
    with pytest.raises(LTPAError, match=r"Data/Airplane100.*expected.*GroundTruth.*mrub"):
        build_dataset("object-discovery", root=tmp_path)
    data = make_object_discovery(tmp_path)
    for path in (data / "Car100").iterdir():
        if path.is_file():
            path.unlink()
    with pytest.raises(LTPAError, match=r"no images in folder.*Car100"):
        build_dataset("object-discovery", root=tmp_path)
    with pytest.raises(LTPAError, match="unknown category 'dog'"):
        build_dataset("object-discovery", root=tmp_path, categories=["airplane", "dog"])
