"""``ltpa data``: which datasets exist, where they were looked for, counts, and a sample grid.

Paper: "Learn To Pay Attention", Jetley et al., ICLR 2018, https://arxiv.org/abs/1804.02391 (datasets: method §3.4,
§4.2, §4.3).

    ltpa data                                   # every dataset: present or not, and where it looked
    ltpa data cluttered-digits                  # counts per class and runs/data/cluttered-digits-train.png
    ltpa data cifar10 --root ~/data --split test --grid cifar.png
    ltpa data cluttered-digits --option num_train=500 --option noise=0.1
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import torch
import yaml

from ltpa.data import (
    boxes_from_masks,
    build_dataset,
    dataset_info,
    dataset_options,
    find_dataset,
    list_datasets,
)
from ltpa.data.augment import resize
from ltpa.errors import LTPAError

__all__ = ["add_data_parser", "data_command", "sample_grid_figure"]


def add_data_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Adds ``ltpa data`` to the ``ltpa`` subcommands."""
    parser = subparsers.add_parser(
        "data",
        allow_abbrev=False,
        help="list datasets and where they are; counts and a sample grid for one",
        description="Without NAME: list every dataset, whether its files are present and where ltpa looked. "
        "With NAME: read one split, print its counts per class, and write a grid of sample images (object "
        "boxes drawn for datasets with masks). Nothing is downloaded unless --download is given.",
    )
    parser.add_argument("name", nargs="?", metavar="NAME", help=f"one of: {', '.join(list_datasets())}")
    source = parser.add_argument_group("data source")
    source.add_argument(
        "--root", type=Path, default=None, help="folder with the files (default: see the listing)"
    )
    source.add_argument(
        "--split", default=None, help="split to read (default: the dataset's first, train for most)"
    )
    source.add_argument(
        "--data-option",
        "--option",
        dest="option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dataset option, repeatable (e.g. num_train=500, pad_to=none, cifar10_labels=true)",
    )
    source.add_argument(
        "--download", action="store_true", help="fetch the public files into --root first (needs internet)"
    )
    grid = parser.add_argument_group("sample grid")
    grid.add_argument(
        "--grid", type=Path, default=None, help="PNG to write (default: runs/data/<name>-<split>.png)"
    )
    grid.add_argument("--no-grid", action="store_true", help="do not write a sample grid")
    grid.add_argument("--grid-count", type=int, default=64, help="images in the grid (default: 64)")
    grid.add_argument(
        "--grid-size", type=int, default=None, help="side of each tile (default: dataset's size)"
    )
    grid.add_argument("--seed", type=int, default=0, help="seed choosing the sample images (default: 0)")
    parser.set_defaults(func=data_command)
    return parser


def _parse_options(pairs: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise LTPAError(f"--option takes KEY=VALUE, got {pair!r}")
        value = None if text.strip().lower() in ("none", "null") else yaml.safe_load(text)
        options[key.strip().replace("-", "_")] = tuple(value) if isinstance(value, list) else value
    return options


def _list() -> int:
    rows = []
    for name in list_datasets():
        info = dataset_info(name)
        found, looked = find_dataset(name)
        if info.default_root is None:
            status = "generated (no files needed)"
        elif found is not None:
            status = f"present: {found}"
        else:
            status = f"missing (looked in {', '.join(str(p) for p in looked)})"
        classes = "?" if info.num_classes is None else str(info.num_classes)
        rows.append((name, classes, f"{info.img_size}", info.preprocess, status))
    header = ("dataset", "classes", "size", "preprocess", "files")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[4])
    print("\nDetails, counts and a sample grid: ltpa data NAME [--root DIR] [--split SPLIT]")
    return 0


def sample_grid_figure(dataset: Any, indices: list[int], side: int, title: str) -> Any:
    """Images ``indices`` of ``dataset`` at ``side`` pixels in a grid, each titled with its class name, the
    object's box drawn in red where the dataset has masks; a matplotlib ``Figure``."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    n = len(indices)
    cols = max(1, math.ceil(n**0.5))
    rows = max(1, math.ceil(n / cols))
    fig = Figure(figsize=(max(1.25 * cols, 4.0), 1.3 * rows + 0.5), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    classes = list(dataset.classes)
    for ax, i in zip(axes.flat, indices):
        item = dataset[i]
        ax.imshow(resize(item[0], side).permute(1, 2, 0).numpy(), interpolation="nearest")
        label = int(item[1])
        ax.set_title(classes[label] if 0 <= label < len(classes) else str(label), fontsize=7, pad=2)
        if len(item) > 2:
            x0, y0, x1, y1 = (float(v) for v in boxes_from_masks(resize(item[2], side)).view(4))
            if x1 > x0 and y1 > y0:
                box = Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="red", lw=1)
                ax.add_patch(box)
    fig.suptitle(title, fontsize=9)
    return fig


def _grid(dataset: Any, info: Any, args: argparse.Namespace, split: str) -> Path:
    from ltpa.evaluate import save_figure

    n = min(args.grid_count, len(dataset))
    if n <= 0:
        raise LTPAError(f"{info.name}: nothing to draw (split {split!r} is empty or --grid-count <= 0)")
    generator = torch.Generator().manual_seed(args.seed)
    picks = torch.randperm(len(dataset), generator=generator)[:n].sort().values.tolist()
    side = args.grid_size or info.img_size
    boxes = " (red: the object's box)" if dataset.has_masks else ""
    title = f"{info.name}, {split} split: {n} random images of {len(dataset)}{boxes}"
    path = args.grid if args.grid is not None else Path("runs/data") / f"{info.name}-{split}.png"
    if path.is_dir():
        raise LTPAError(
            f"--grid {path} is a folder; give the PNG file to write, e.g. --grid {path / 'grid.png'}"
        )
    return save_figure(sample_grid_figure(dataset, picks, side, title), path)


def data_command(args: argparse.Namespace) -> int:
    """Runs ``ltpa data``; returns the exit status."""
    if args.name is None:
        if args.option or args.download or args.split or args.root:
            raise LTPAError("--root, --split, --option and --download need a dataset NAME")
        return _list()
    info = dataset_info(args.name)
    options = _parse_options(args.option)
    if args.download:
        if "download" not in dataset_options(info.name):
            raise LTPAError(f"{info.name}: nothing to download; {info.source}")
        options["download"] = True
    split = args.split or info.splits[0]
    dataset = build_dataset(info.name, root=args.root, split=split, **options)
    print(f"{info.name}: {info.description}")
    print(f"  source: {info.source}")
    print(f"  read from: {dataset.root if dataset.root is not None else 'generated in memory'}")
    print(f"  default preprocess: {info.preprocess}; input size {info.img_size}")
    print(
        f"  split {split!r}: {len(dataset)} images, {dataset.num_classes} classes, masks: {dataset.has_masks}"
    )
    labels = getattr(dataset, "labels", None)
    if isinstance(labels, torch.Tensor) and labels.numel() and int(labels.min()) >= 0:
        counts = torch.bincount(labels, minlength=dataset.num_classes).tolist()
        shown = ", ".join(f"{c}: {k}" for c, k in zip(dataset.classes, counts))
        print(
            f"  per class: {shown if len(counts) <= 20 else f'{min(counts)}..{max(counts)} images per class'}"
        )
    skipped = getattr(dataset, "skipped", None)
    if skipped:
        print(f"  skipped for scoring (no usable mask): {len(skipped)}")
    if not args.no_grid:
        print(f"  sample grid: {_grid(dataset, info, args, split)}")
    return 0
