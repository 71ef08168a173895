"""Test data, devices, batches and progress bars shared by the evaluation experiments.

Paper: "Learn To Pay Attention", Jetley et al., ICLR 2018, https://arxiv.org/abs/1804.02391 (method §3.5: a
single centre view, BN in eval mode, dropout off).

Evaluation data is held as uint8 tensors (``ltpa.data.load_tensors``); batches become float [0, 1] images at
the model's input side only when they are fed to it, so one copy of the data serves several models.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ltpa.errors import LTPAError
from ltpa.models import LTPAModel
from ltpa.utils import log as logger
from ltpa.utils import to_unit_float

__all__ = [
    "MASK_DATASETS",
    "MAX_MAP_SIZE",
    "EvalData",
    "batch_slices",
    "check_classes",
    "data_for_models",
    "data_options_for",
    "eval_mode",
    "load_checkpoints",
    "load_eval_data",
    "masked_data",
    "match_classes",
    "model_classes",
    "model_device",
    "progress_bar",
    "resolve_device",
    "show_progress",
    "to_model_input",
]

T = TypeVar("T")


@dataclass
class EvalSettings:
    """What every evaluation command shares: which data, which checkpoint, where and how to run.

    Attributes:
        data: dataset name.
        root: its folder (None: the dataset's default place).
        split: split evaluated.
        limit: only the first N images.
        data_options: further ``build_dataset`` options.
        batch_size: images per forward pass.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        which: ``last`` or ``best`` checkpoint of a run folder.
        out: output folder.
        progress: progress bars (None: on a terminal).
    """

    data: str = "cluttered-digits"
    root: str | None = None
    split: str = "test"
    limit: int | None = None
    data_options: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 256
    device: str = "auto"
    which: str = "last"
    out: str = "results"
    progress: bool | None = None

    def datasets_for(
        self, models: Sequence[LTPAModel], *, img_size: int | None = None, labelled: bool = True
    ) -> list[EvalData]:
        """:func:`data_for_models` with these settings' data, root, split, limit, options and progress."""
        return data_for_models(
            models,
            self.data,
            self.root,
            split=self.split,
            limit=self.limit,
            options=self.data_options,
            img_size=img_size,
            progress=self.progress,
            labelled=labelled,
        )


@dataclass
class EvalData:
    """A labelled evaluation set in memory.

    Attributes:
        name: dataset registry name.
        split: split name.
        images: uint8 (N, 3, S, S).
        labels: int64 (N,).
        masks: bool (N, S, S) ground truth, or None.
        classes: class names, index = label.
        options: the dataset options it was built with.
    """

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    masks: torch.Tensor | None
    classes: list[str]
    options: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def size(self) -> int:
        """Side S of the images (and masks)."""
        return int(self.images.shape[-1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def show_progress(progress: bool | None) -> bool:
    """Whether to draw progress bars: ``None`` means "when stderr is a terminal"."""
    if progress is None:
        return sys.stderr.isatty()
    return bool(progress) and sys.stderr.isatty()


def progress_bar(
    items: Iterable[T], *, total: int | None = None, desc: str = "", progress: bool | None = None
) -> Iterator[T]:
    """``tqdm`` over ``items``, drawn only on a terminal (see :func:`show_progress`)."""
    yield from tqdm(
        items, total=total, desc=desc, disable=not show_progress(progress), leave=False, unit="batch"
    )


def resolve_device(device: str | torch.device) -> torch.device:
    """A torch device from ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``.

    Raises:
        LTPAError: when CUDA is asked for but not available.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise LTPAError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LTPAError(f"device {device!r} asked for but CUDA is not available here; use --device cpu")
    return dev


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU when it has none)."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Puts every submodule in eval mode and restores each one's own train/eval flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """Consecutive slices of at most ``batch_size`` covering ``range(n)``."""
    if batch_size < 1:
        raise LTPAError(f"batch size must be at least 1, got {batch_size}")
    return [slice(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def to_model_input(images: torch.Tensor, size: int, device: torch.device | None = None) -> torch.Tensor:
    """uint8 or float [0, 1] images as float [0, 1] at side ``size`` on ``device``.

    Resizing is bilinear with antialiasing (as ``ltpa.data`` resizes), so a dataset loaded at another side
    than the model's input still feeds it what it was trained on.

    Shape:
        - images: (B, 3, H, W)
        - output: (B, 3, size, size)
    """
    x = images.to(device) if device is not None else images
    x = to_unit_float(x)
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        x = x.clamp_(0.0, 1.0)
    return x


def load_eval_data(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    split: str = "test",
    img_size: int | None = None,
    limit: int | None = None,
    options: dict[str, Any] | None = None,
    progress: bool | None = None,
) -> EvalData:
    """One split of a dataset as tensors, through ``ltpa.data.build_dataset`` and ``load_tensors``.

    Args:
        name: dataset registry name (``cluttered-digits``, ``object-discovery``, ``image-folder``, ...).
        root: where its files are (None: the dataset's default place).
        split: ``"test"`` unless another split is asked for.
        img_size: side the images (and masks) are resized to; None keeps the native size.
        limit: keep only the first ``limit`` images.
        options: further keyword arguments of ``build_dataset``.
        progress: progress bar while decoding (None: on a terminal).

    Raises:
        LTPAError: for an unknown dataset, missing files, or an empty selection.
    """
    from ltpa.data import build_dataset, load_tensors

    if limit is not None and limit < 1:
        raise LTPAError(f"--limit must be at least 1, got {limit}")
    options = dict(options or {})
    dataset = build_dataset(name, root=root, split=split, **options)
    images, labels, masks = load_tensors(
        dataset, img_size=img_size, limit=limit, progress=show_progress(progress)
    )
    if images.shape[0] == 0:
        raise LTPAError(f"dataset {name} ({split} split) has no images at {root or 'its default root'}")
    classes = list(getattr(dataset, "classes", [str(i) for i in range(int(labels.max()) + 1)]))
    return EvalData(name, split, images, labels.long(), masks, classes, options)


def load_checkpoints(
    paths: Sequence[str | os.PathLike[str]], *, which: str = "last", device: str | torch.device = "cpu"
) -> list[LTPAModel]:
    """Models of the given run folders / checkpoint files, in eval mode, each with a unique ``run_name``.

    Two checkpoints of the same run (``last`` and ``best``) would share the run folder's name; the second and
    later ones are then named ``<run>/<stem>``.
    """
    from ltpa.checkpoint import load_model, resolve_checkpoint

    if not paths:
        raise LTPAError("no checkpoint given; pass one or more run folders or .safetensors files")
    device = resolve_device(device)  # "auto" -> cuda when available, else cpu
    models = []
    seen: set[str] = set()
    for path in paths:
        model = load_model(path, which=which, device=device)
        if model.run_name in seen:
            model.run_name = f"{model.run_name}/{Path(resolve_checkpoint(path, which)).name}"
        if model.run_name in seen:
            raise LTPAError(f"checkpoint {path} is given twice; pass each checkpoint once")
        seen.add(model.run_name)
        models.append(model)
    return models


def data_options_for(model: nn.Module, data: str, options: dict[str, Any]) -> dict[str, Any]:
    """Dataset options for evaluating ``model`` on ``data``: a 10-class model on ``stl10`` reads it with
    CIFAR-10 labels (the nine shared classes, monkeys dropped; method §4.2) unless the options say otherwise."""
    options = dict(options)
    if data == "stl10" and int(getattr(model, "num_classes", 0)) == 10:
        options.setdefault("cifar10_labels", True)
    return options


def check_classes(model: nn.Module, data: EvalData) -> None:
    """Raises when the model's outputs cannot name the dataset's classes; warns when they can but are other
    classes (more outputs than the dataset has classes, or class names other than the checkpoint's)."""
    k = int(getattr(model, "num_classes", 0))
    top = int(data.labels.max()) if len(data) else -1
    name = getattr(model, "run_name", getattr(model, "model_name", "model"))
    if k < data.num_classes or top >= k:
        raise LTPAError(
            f"{name} has {k} outputs but {data.name} has {data.num_classes} classes; evaluate it on the data "
            "it was trained on (or use `ltpa transfer` for a new label set)"
        )
    trained = list((getattr(model, "checkpoint", None) or {}).get("classes") or [])
    if k != data.num_classes or (trained and trained[: data.num_classes] != list(data.classes)):
        shown = ", ".join(trained[:4]) + (", ..." if len(trained) > 4 else "") if trained else ""
        logger.warning(
            f"warning: {name} was trained on {k} classes{f' ({shown})' if shown else ''} but {data.name} "
            f"{data.split} has {data.num_classes} ({', '.join(data.classes[:4])}"
            f"{', ...' if data.num_classes > 4 else ''}): labels are compared by index, so the accuracy compares "
            "different classes; evaluate it on the data it was trained on, or use `ltpa transfer`"
        )


def model_classes(model: nn.Module) -> list[str] | None:
    """The class names ``model`` was trained with (its checkpoint's or pretrained folder's), one per output,
    or None when they are not known."""
    k = int(getattr(model, "num_classes", 0))
    for source in (getattr(model, "checkpoint", None), getattr(model, "pretrained_cfg", None)):
        classes = source.get("classes") if isinstance(source, dict) else None
        if isinstance(classes, list) and len(classes) == k and all(isinstance(c, str) for c in classes):
            return classes
    return None


def match_classes(model: nn.Module, data: EvalData) -> EvalData:
    """``data`` labelled with ``model``'s class indices, matched by class name.

    A folder dataset numbers its classes by position among the folders that hold images, so a missing or
    empty class folder shifts every later label: matched by position, the same images would score 100% or
    0%. When the model knows its class names, each of the data's classes is looked up by name (all must be
    among the model's) and the labels are renumbered; otherwise the positions must fit the outputs
    (:func:`check_classes`).

    Raises:
        LTPAError: a class of the data that the model does not know, or more classes than outputs.
    """
    names = model_classes(model)
    if names is None or data.classes == names:
        check_classes(model, data)
        return data
    run = getattr(model, "run_name", getattr(model, "model_name", "model"))
    index = {name: i for i, name in enumerate(names)}
    unknown = [c for c in data.classes if c not in index]
    if unknown:
        shown = ", ".join(unknown[:4]) + (", ..." if len(unknown) > 4 else "")
        known = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        raise LTPAError(
            f"{run} was trained on the classes {known}; {data.name} has {len(unknown)} it does not know "
            f"({shown}): evaluate it on data with the class names it was trained on (for a folder dataset, "
            "name the folders so), or use `ltpa transfer` for a new label set"
        )
    lookup = torch.tensor([index[c] for c in data.classes], dtype=torch.long)
    logger.info(
        "%s: %s's %d classes matched by name to the model's %d (labels renumbered)",
        run,
        data.name,
        data.num_classes,
        len(names),
    )
    return replace(data, labels=lookup[data.labels], classes=list(names))


def data_for_models(
    models: Sequence[LTPAModel],
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    split: str = "test",
    limit: int | None = None,
    options: dict[str, Any] | None = None,
    img_size: int | None = None,
    progress: bool | None = None,
    labelled: bool = True,
) -> list[EvalData]:
    """The evaluation set for each model, read once per distinct (side, options).

    Images are loaded at ``img_size`` when given, else at each model's input side. With ``labelled`` the
    labels are the model's class indices, matched by class name where the model knows its class names
    (:func:`match_classes`), and must fit its outputs.
    """
    cache: dict[tuple[int, str], EvalData] = {}
    out = []
    for model in models:
        opts = data_options_for(model, name, options or {})
        side = int(img_size or model.img_size)
        key = (side, repr(sorted(opts.items())))
        if key not in cache:
            cache[key] = load_eval_data(
                name, root, split=split, img_size=side, limit=limit, options=opts, progress=progress
            )
        out.append(match_classes(model, cache[key]) if labelled else cache[key])
    return out


MASK_DATASETS: tuple[str, ...] = ("object-discovery", "cluttered-digits", "cluttered-fashion")
# Largest side at which segment/localize compare maps and masks: every map kind holds N x side x side floats.
MAX_MAP_SIZE = 1024


def masked_data(models: Sequence[LTPAModel], config: Any, command: str) -> tuple[EvalData, torch.Tensor, int]:
    """The evaluation set with ground-truth masks, read once at the side where ``segment`` and ``localize``
    compare maps and masks (``config.size``, default the largest model input), its masks, and that side.

    ``config`` carries ``data``, ``root``, ``split``, ``limit``, ``data_options``, ``size`` and ``progress``.

    Raises:
        LTPAError: for a dataset without masks, naming the ones that have them.
    """
    if config.size is not None and not (isinstance(config.size, int) and 1 <= config.size <= MAX_MAP_SIZE):
        raise LTPAError(
            f"{command}: --size must be a whole number of pixels in 1..{MAX_MAP_SIZE} (the side at which maps "
            f"and masks are compared), got {config.size!r}"
        )
    size = config.size or max(int(m.img_size) for m in models)
    data = config.datasets_for(
        models[:1],
        img_size=size,
        labelled=False,
    )[0]
    if data.masks is None:
        raise LTPAError(
            f"{config.data} has no ground-truth masks; {command} needs one of {', '.join(MASK_DATASETS)}"
        )
    return data, data.masks, size
