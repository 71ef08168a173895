"""Any tree of images, one folder per class, with a seeded per-class train/test split (method §4.2).

Paper: "Learn To Pay Attention", Jetley et al., ICLR 2018, https://arxiv.org/abs/1804.02391.

The paper's transfer experiments use Caltech-101, Caltech-256, Event-8 (UIUC sports), Action-40 (Stanford 40
Actions) and Scene-67 (MIT Indoor 67); each ships, or is easily arranged, as ``<root>/<class>/*.jpg``. Their
train/test splits are unknown (method §6.2), so the split is a rule: per class, the sorted files are shuffled
with a generator seeded by ``(seed, class name)`` and the first ``train_per_class`` (or ``train_fraction``) go
to train, the rest (capped at ``test_per_class``) to test. Adding or removing a class does not change the
others' splits. ``label_from="filename"`` reads the class from a ``<class>_<n>.jpg`` name instead, which
is how Stanford 40 Actions ships its ``JPEGImages`` folder.

A folder laid out by split, ``<root>/train/<class>/*.jpg`` beside ``<root>/val/...`` and/or ``<root>/test/...``
(also ``valid``, ``validation``, ``training``, ``testing``), keeps the user's own split: each split reads its
folder, and the classes are the union of the split folders' class folders, so that labels agree across splits.
``masks=DIR`` gives each image a ground-truth mask (for ``ltpa localize`` and ``ltpa segment``): the file of the
same relative path and stem under ``DIR`` (``<DIR>/<class>/<stem>.png``, white object on black).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ltpa.data._base import ImageDataset, data_error
from ltpa.data._decode import IMAGE_EXTENSIONS, read_image, read_mask
from ltpa.data.augment import resize
from ltpa.errors import LTPAError

__all__ = ["ImageFolderDataset", "build_image_folder", "read_split_file", "split_files"]

FOLDER_SOURCE = (
    "the dataset's publisher (Caltech-101/256, UIUC Event-8, Stanford 40 Actions, MIT Indoor 67), unpacked "
    "so that each class is one folder"
)
FOLDER_LAYOUT = "<root>/<class>/*.{jpg,jpeg,png,gif,webp,bmp,tif} (one folder per class), or <root>/{train,val,test}/<class>/*.jpg"
# Split folder names (lower case) and the split each holds.
SPLIT_FOLDERS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _class_folders(root: Path) -> dict[str, list[Path]]:
    files: dict[str, list[Path]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(p for p in folder.rglob("*") if _is_image(p))
        if images:
            files[folder.name] = images
    return files


def _class_prefixes(root: Path) -> dict[str, list[Path]]:
    files: dict[str, list[Path]] = {}
    for path in sorted(p for p in root.iterdir() if _is_image(p)):
        label = path.stem.rsplit("_", 1)[0] if "_" in path.stem else path.stem
        files.setdefault(label, []).append(path)
    return files


def split_files(
    files: Sequence[Path],
    split: str,
    *,
    key: str,
    seed: int = 0,
    train_fraction: float = 0.8,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
) -> list[Path]:
    """The files of one class that belong to ``split`` under the seeded rule (see the module docstring)."""
    if split == "all":
        return list(files)
    rng = np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])
    order = [files[i] for i in rng.permutation(len(files))]
    n_train = (
        min(len(order), train_per_class)
        if train_per_class is not None
        else round(train_fraction * len(order))
    )
    if split == "train":
        return order[:n_train]
    rest = order[n_train:]
    return rest[:test_per_class] if test_per_class is not None else rest


class ImageFolderDataset(ImageDataset):
    """Images of a class-per-folder tree, decoded on access.

    Attributes:
        paths: image files of this split.
        labels: int64 (N,) class indices.

    Shape:
        - image: (3, img_size, img_size) uint8, or native size when ``img_size`` is None.
    """

    def __init__(
        self,
        paths: list[Path],
        labels: list[int],
        classes: list[str],
        *,
        root: Path,
        split: str,
        img_size: int | None,
        masks: list[Path] | None = None,
    ) -> None:
        self.paths = paths
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.classes = classes
        self.img_size = img_size
        self.mask_paths = masks
        self.has_masks = masks is not None
        self.name, self.split, self.root = "image-folder", split, root

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        image = read_image(self.paths[index])
        if self.img_size is not None:
            image = resize(image, self.img_size)
        if self.mask_paths is None:
            return image, int(self.labels[index])
        mask = resize(read_mask(self.mask_paths[index]), tuple(image.shape[-2:]))  # nearest, to the image
        return image, int(self.labels[index]), mask


def _descend(root: Path) -> Path:
    """Follows a lone wrapper folder (``101_ObjectCategories``, ``Images``) down to the class folders."""
    for _ in range(2):
        children = [p for p in root.iterdir() if not p.name.startswith(".")]
        dirs = [p for p in children if p.is_dir()]
        if len(dirs) != 1 or any(_is_image(p) for p in children):
            break
        inner = [p for p in dirs[0].iterdir() if p.is_dir()]
        if not inner:
            break
        root = dirs[0]
    return root


def _split_layout(root: Path) -> dict[str, list[Path]] | None:
    """The split folders of ``root`` (``train/``, ``val/``, ``test/``...) by split, or None when it is not laid
    out by split."""
    found: dict[str, list[Path]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        split = SPLIT_FOLDERS.get(folder.name.lower())
        if split is None:
            return None  # another folder beside them: a class that happens to be called "test"
        found.setdefault(split, []).append(folder)
    return found if "train" in found and len(found) > 1 else None


def _mask_paths(images: list[Path], root: Path, masks: Path) -> list[Path]:
    """The mask of each image: the file of the same relative path and stem under ``masks``."""
    if not masks.is_dir():
        raise LTPAError(f"image-folder: masks folder {masks} does not exist; pass masks=DIR of mask images")
    found: list[Path] = []
    missing: list[Path] = []
    for image in images:
        stem = masks / image.relative_to(root).with_suffix("")
        hit = next(
            (c for c in (stem.with_suffix(e) for e in (".png", *IMAGE_EXTENSIONS)) if c.is_file()), None
        )
        if hit is None:
            missing.append(stem)
        else:
            found.append(hit)
    if missing:
        raise LTPAError(
            f"image-folder: {len(missing)} of {len(images)} images have no mask under {masks} (first: "
            f"{missing[0]}.png); masks mirror the image tree: <masks>/<class>/<image stem>.png"
        )
    return found


def build_image_folder(
    candidates: list[Path],
    split: str,
    *,
    img_size: int | None = None,
    train_fraction: float = 0.8,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    seed: int = 0,
    exclude: Sequence[str] = (),
    label_from: Literal["folder", "filename"] = "folder",
    masks: str | None = None,
    split_file: str | None = None,
) -> ImageFolderDataset:
    """A class-per-folder image tree with a seeded, per-class train/test split.

    Args:
        candidates: folders to look in, in order (the first existing one is used).
        split: ``"train"``, ``"test"`` or ``"all"``.
        img_size: side to resize every image to (None: native sizes; ``load_tensors`` can resize).
        train_fraction: share of each class used for training, when ``train_per_class`` is not given.
        train_per_class: fixed number of training images per class (e.g. 30 for Caltech-101).
        test_per_class: at most this many test images per class.
        seed: seed of the split rule.
        exclude: class names to leave out (e.g. ``BACKGROUND_Google``, ``257.clutter``).
        label_from: ``"folder"`` (class = folder name) or ``"filename"`` (``<class>_<n>.jpg`` in one folder).
        masks: folder of ground-truth masks mirroring the image tree (``<masks>/<class>/<stem>.png``).
        split_file: the user's own split instead of the seeded rule: a text file of lines ``<path> <split>``
            (path relative to the root, split ``train``, ``val`` or ``test``; ``#`` starts a comment); images
            it does not list are left out.

    A root laid out by split (``train/``, ``val/``, ``test/`` folders of class folders) keeps that split; the
    options of the seeded rule (``train_fraction``, ``train_per_class``, ``test_per_class``, ``seed``) do not
    apply to it.
    """
    root = next((c for c in candidates if c.is_dir()), None)
    if root is None:
        raise data_error("image-folder", "missing folder", candidates[0], FOLDER_LAYOUT, FOLDER_SOURCE)
    if not 0.0 <= train_fraction <= 1.0:
        raise LTPAError(f"image-folder: train_fraction must be in [0, 1], got {train_fraction}")
    layout = _split_layout(root) if label_from == "folder" else None
    if layout is None and label_from == "folder":
        root = _descend(root)
        layout = _split_layout(root)
    if layout is not None:
        return _build_split_folders(root, layout, split, img_size, exclude, masks)
    if split == "val" and split_file is None:
        raise LTPAError(
            f"image-folder: {root} has no val/ folder (the seeded split has train and test only); lay it out as "
            "<root>/train/<class>/ and <root>/val/<class>/ or evaluate on test"
        )
    if label_from == "folder":
        root = _descend(root)
        files = _class_folders(root)
    elif label_from == "filename":
        files = _class_prefixes(root)
    else:
        raise LTPAError(f"image-folder: label_from must be 'folder' or 'filename', got {label_from!r}")
    for name in exclude:
        files.pop(name, None)
    if not files:
        raise data_error("image-folder", "no class folders with images", root, FOLDER_LAYOUT, FOLDER_SOURCE)
    classes = sorted(files)
    if split_file is not None:
        return _build_from_split_file(
            root, files, classes, Path(split_file).expanduser(), split, img_size, masks
        )
    paths: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        chosen = split_files(
            files[name],
            split,
            key=name,
            seed=seed,
            train_fraction=train_fraction,
            train_per_class=train_per_class,
            test_per_class=test_per_class,
        )
        paths.extend(chosen)
        labels.extend([index] * len(chosen))
    mask_paths = _mask_paths(paths, root, Path(masks).expanduser()) if masks is not None else None
    return ImageFolderDataset(
        paths, labels, classes, root=root, split=split, img_size=img_size, masks=mask_paths
    )


def _build_split_folders(
    root: Path,
    layout: dict[str, list[Path]],
    split: str,
    img_size: int | None,
    exclude: Sequence[str],
    masks: str | None,
) -> ImageFolderDataset:
    """The images of ``split`` in a root laid out by split folders; classes from all of them."""
    per_split = {name: [_class_folders(f) for f in folders] for name, folders in layout.items()}
    classes = sorted({c for trees in per_split.values() for tree in trees for c in tree} - set(exclude))
    if not classes:
        raise data_error("image-folder", "no class folders with images", root, FOLDER_LAYOUT, FOLDER_SOURCE)
    if split == "all":
        trees = [tree for name in ("train", "val", "test") for tree in per_split.get(name, [])]
    elif split in per_split:
        trees = per_split[split]
    else:
        have = ", ".join(f"{f.name}/" for folders in layout.values() for f in folders)
        hint = " (ltpa train --eval-split val)" if split == "test" and "val" in per_split else ""
        raise LTPAError(
            f"image-folder: {root} is laid out by split ({have}) and has no {split} folder; choose "
            f"{' or '.join(sorted(per_split))}{hint}"
        )
    paths: list[Path] = []
    labels: list[int] = []
    for tree in trees:
        for index, name in enumerate(classes):
            files = tree.get(name, [])
            paths.extend(files)
            labels.extend([index] * len(files))
    mask_paths = _mask_paths(paths, root, Path(masks).expanduser()) if masks is not None else None
    return ImageFolderDataset(
        paths, labels, classes, root=root, split=split, img_size=img_size, masks=mask_paths
    )


def read_split_file(path: Path) -> dict[str, str]:
    """``{relative path: split}`` from a split file (lines ``<path> <split>``; ``#`` comments).

    Raises:
        LTPAError: a missing file, a line without two fields, or an unknown split, naming the line.
    """
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise LTPAError(f"image-folder: cannot read split_file {path}: {err.strerror}") from err
    chosen: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = text.replace(",", " ").rsplit(maxsplit=1)
        if len(parts) != 2 or parts[1] not in ("train", "val", "test"):
            raise LTPAError(
                f"image-folder: {path} line {number} ({line.strip()!r}) is not '<path> <train|val|test>'"
            )
        chosen[Path(parts[0].strip()).as_posix()] = parts[1]
    if not chosen:
        raise LTPAError(f"image-folder: split_file {path} lists no images")
    return chosen


def _build_from_split_file(
    root: Path,
    files: dict[str, list[Path]],
    classes: list[str],
    split_file: Path,
    split: str,
    img_size: int | None,
    masks: str | None,
) -> ImageFolderDataset:
    chosen = read_split_file(split_file)
    known = {p.relative_to(root).as_posix() for name in classes for p in files[name]}
    unknown = sorted(set(chosen) - known)
    if unknown:
        raise LTPAError(
            f"image-folder: {split_file} lists {len(unknown)} images that are not in {root}'s class folders "
            f"(first: {unknown[0]}); paths are relative to the root, e.g. <class>/<file>"
        )
    paths: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        for path in files[name]:
            if chosen.get(path.relative_to(root).as_posix()) in (
                (split,) if split != "all" else ("train", "val", "test")
            ):
                paths.append(path)
                labels.append(index)
    if not paths:
        raise LTPAError(f"image-folder: {split_file} puts no image in the {split} split")
    mask_paths = _mask_paths(paths, root, Path(masks).expanduser()) if masks is not None else None
    return ImageFolderDataset(
        paths, labels, classes, root=root, split=split, img_size=img_size, masks=mask_paths
    )
