"""Training: the paper's recipes with exact optimiser semantics, exact resume, and DDP through torchrun.

Paper: "Learn To Pay Attention", https://arxiv.org/abs/1804.02391 (method §3).

``fit(config)`` trains one model and writes a run folder::

    config.yaml        the resolved TrainConfig
    run.json           git commit, command, versions, device, world size
    metrics.csv/.jsonl per-epoch loss, accuracy, learning rate, seconds, images/s
    last.*, best.*     checkpoints (safetensors weights + JSON sidecar; best = highest test accuracy)
    resume.safetensors model, optimiser and loop state for ``resume=`` (metadata inside, one atomic file)
    .ltpa.lock         held (``fcntl.flock``) by the training that uses the folder, for its whole length

Every step's randomness (batch order, augmentation, dropout) is a function of (seed, epoch, step), so a run
resumed from any saved state ends with the same weights and metrics as an uninterrupted one on the CPU.

At an epoch's end the state is checked to be finite, then written in the order resume state, ``last``,
``best``, metrics, each file atomically: a kill between any two writes leaves a folder that ``resume=``
continues (it rewrites a ``last``/``best`` that lag the resume state); a kill before the first resume state
leaves a folder that a new run with the same ``out`` starts again (or ``resume=`` restarts from its
config.yaml). A non-empty ``out`` that is not such a folder is refused unless ``overwrite`` is set, and then
only ltpa's own files there are replaced.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from safetensors import safe_open
from torch import nn
from torch.utils.data import Dataset

from ltpa.checkpoint import atomic_write, first_non_finite, read_weights, save_checkpoint, save_weights
from ltpa.config import TrainConfig, _check_keys, _check_types, _validate
from ltpa.errors import LTPAError
from ltpa.models import LTPAModel, create_model
from ltpa.models._base import normalized_input
from ltpa.runtime import autocast, choose_channels_last, describe_runtime, resolve_precision
from ltpa.system import configure_threads
from ltpa.utils import log as logger
from ltpa.utils import normalize_minmax, open_no_follow, to_unit_float

__all__ = [
    "FitResult",
    "build_model",
    "clear_run",
    "eval_collapse",
    "fit",
    "foreign_files",
    "lr_at",
    "make_optimizer",
]

RESUME_FILE = "resume.safetensors"
LOCK_FILE = ".ltpa.lock"
# Everything fit() writes into a run folder: only these are ever replaced or deleted.
RUN_FILES = frozenset(
    {"config.yaml", "run.json", "metrics.csv", "metrics.jsonl", "last.safetensors", "last.json",
     "best.safetensors", "best.json", RESUME_FILE, LOCK_FILE, ".ltpa-write-test"}
)  # fmt: skip
RUN_DIRS = frozenset({"tensorboard"})
_CHECKPOINT_FILES = ("last.safetensors", "last.json", "best.safetensors", "best.json")
# the temporary files of ltpa.checkpoint.atomic_write, left by a kill in the middle of a write
_TMP = re.compile(r"\.(?P<name>.+)\.[A-Za-z0-9_]+\.tmp")


@dataclass
class FitResult:
    """What :func:`fit` returns: the run folder, the trained model (unwrapped, eval mode) and its history.

    Each history row's ``test_loss`` and ``test_accuracy`` are measured on the ``eval_split`` (``val`` with
    ``eval_split="val"``); the names stay for every split, so that readers of metrics files need one key.
    """

    run_dir: Path
    model: LTPAModel
    history: list[dict[str, Any]] = field(default_factory=list)
    eval_split: str = "test"

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}

    @property
    def best_accuracy(self) -> float:
        return max((row["test_accuracy"] for row in self.history), default=float("nan"))


# ----------------------------------------------------------------------------------------------- schedule


# The cosine schedule's linear warm-up starts at this share of the peak rate (not at 0, which would waste the
# first step) and reaches the peak after ``warmup`` of all steps.
WARMUP_START = 0.04
# Free space checked before training: room for this many copies of the weights (last, best, resume state with
# its optimiser momentum, and a temporary file while one of them is replaced) plus slack for metrics and logs.
CHECKPOINT_COPIES = 5
CHECKPOINT_SLACK_BYTES = 64 << 20


def lr_at(cfg: TrainConfig, epoch: int, step: int, total_steps: int | None = None) -> float:
    """The learning rate of optimiser step ``step`` (counted over the whole run) in 1-based ``epoch``.

    ``step`` schedule (the paper): milestone factors applied at the start of their epoch, then Torch's
    per-step decay ``1/(1+d*t)``. ``cosine``: a linear warm-up over ``warmup`` of the ``total_steps``, then a
    cosine from ``lr`` to 0.
    """
    if cfg.lr_schedule == "cosine":
        if not total_steps:
            raise ValueError("the cosine schedule needs total_steps")
        warm = int(cfg.warmup * total_steps)
        if step < warm:
            return cfg.peak_lr * (WARMUP_START + (1.0 - WARMUP_START) * step / warm)
        progress = (step - warm) / max(1, total_steps - warm)
        return cfg.peak_lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    lr = cfg.peak_lr
    for milestone, factor in zip(cfg.lr_milestones, cfg.lr_factors):
        if epoch >= milestone:
            lr *= factor
    return lr / (1.0 + cfg.lr_decay * step)


# Seeds of the per-step random streams (batch order, augmentation, dropout) combine (seed, epoch, step) with
# three primes far apart, so that no two (epoch, step) pairs of realistic runs share a stream; the modulus keeps
# the result a valid non-negative int64 seed. Changing them changes every run: resume depends on them.
_SEED_PRIME, _EPOCH_PRIME, _STEP_PRIME = 1_000_003, 100_003, 7_919


def _step_seed(seed: int, epoch: int, step: int) -> int:
    return (seed * _SEED_PRIME + epoch * _EPOCH_PRIME + step * _STEP_PRIME) % (2**63 - 1)


# ----------------------------------------------------------------------------------------------- devices


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # this fit() started the process group, and so ends it

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    owned = not dist.is_initialized()
    if owned:
        use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return _Dist(rank=rank, world=world, local_rank=local_rank, owned=owned)


def _end_distributed(dist_info: _Dist) -> None:
    """Ends the process group fit() started: a group left to interpreter shutdown can abort the process
    ("terminate called without an active exception") after training has finished."""
    if dist_info.owned:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def _resolve_device(cfg: TrainConfig, dist_info: _Dist) -> torch.device:
    if cfg.device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist_info.local_rank)
        return torch.device("cpu")
    device = torch.device(cfg.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise LTPAError("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu")
        if dist_info.enabled and device.index is None:
            device = torch.device("cuda", dist_info.local_rank)
    return device


# ----------------------------------------------------------------------------------------------- data


@dataclass
class _Tensors:
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    classes: list[str]


@dataclass
class _UserData:
    """Datasets passed to :func:`fit` instead of a registered dataset name."""

    train: Dataset
    eval: Dataset


class _AsImages(Dataset):
    """A user's dataset with its images as ltpa reads them: uint8 ``(3, H, W)`` tensors.

    Accepts tensors (uint8, or float in [0, 1] as ``ToTensor`` gives), numpy arrays (HWC or CHW) and PIL
    images; grey images become three equal channels. Labels become ints.
    """

    def __init__(self, dataset: Dataset, name: str) -> None:
        self.dataset, self.name = dataset, name
        self.classes = getattr(dataset, "classes", None)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        item = self.dataset[index]
        if not isinstance(item, tuple | list) or len(item) < 2:
            raise LTPAError(f"{self.name} item {index} is not an (image, label) pair")
        image, label = item[0], item[1]
        if not isinstance(image, torch.Tensor):
            import numpy as np

            array = np.asarray(image)
            image = torch.from_numpy(np.ascontiguousarray(array))
            if image.dim() == 3 and image.shape[-1] in (1, 3, 4) and image.shape[0] not in (1, 3):
                image = image.permute(2, 0, 1)  # HWC (PIL, numpy) to CHW
        if image.dim() == 2:
            image = image[None]
        if image.dim() != 3 or image.shape[0] not in (1, 3, 4):
            raise LTPAError(
                f"{self.name} item {index}: expected an image (C, H, W) with 1 or 3 channels, got "
                f"{tuple(image.shape)}"
            )
        image = image[:3].expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
        if image.is_floating_point():
            image = (image.clamp(0, 1) * 255).round().to(torch.uint8)
        elif image.dtype != torch.uint8:
            raise LTPAError(
                f"{self.name} item {index}: images must be uint8 or float in [0, 1], got {image.dtype}"
            )
        return image.contiguous(), int(label)


def _load_data(
    cfg: TrainConfig, img_size: int | None, progress: bool, user: _UserData | None = None
) -> _Tensors:
    """The training and held-out images as uint8 tensors at ``img_size`` (None: the datasets' own size)."""
    from ltpa.data import build_dataset, list_datasets, load_tensors

    if user is not None:
        train, test = user.train, user.eval
    elif cfg.data not in list_datasets():
        raise LTPAError(
            f"data {cfg.data!r} is not a registered dataset: this run trained on datasets given to fit(); pass "
            "them again (fit(cfg, resume=..., train_data=..., eval_data=...))"
        )
    else:
        train = build_dataset(cfg.data, root=cfg.root, split="train", **cfg.data_options)
        test = build_dataset(cfg.data, root=cfg.root, split=cfg.eval_split, **cfg.data_options)
    tx, ty, _ = load_tensors(train, img_size, limit=cfg.subset, progress=progress)
    vx, vy, _ = load_tensors(test, img_size, limit=cfg.test_subset, progress=progress)
    if len(tx) == 0 or len(vx) == 0:
        raise LTPAError(
            f"no {'training' if len(tx) == 0 else 'held-out'} images in {cfg.data}; check the data"
        )
    if vx.shape[-2:] != tx.shape[-2:]:
        raise LTPAError(
            f"training images are {tuple(tx.shape[-2:])} but held-out ones {tuple(vx.shape[-2:])}; set img_size"
        )
    if len(tx) < cfg.batch_size and cfg.drop_last:
        raise LTPAError(
            f"{len(tx)} training images are fewer than one batch of {cfg.batch_size}; lower --batch-size or raise --subset"
        )
    classes = getattr(train, "classes", None)
    if classes is None:
        top = int(max(ty.max(), vy.max()))
        classes = [str(k) for k in range(top + 1)]
    classes = [str(c) for c in classes]
    for name, labels in (("training", ty), ("held-out", vy)):
        if int(labels.min()) < 0 or int(labels.max()) >= len(classes):
            raise LTPAError(
                f"{name} labels of {cfg.data} run from {int(labels.min())} to {int(labels.max())}, outside the "
                f"{len(classes)} classes 0..{len(classes) - 1}; labels must be class indices"
            )
    return _Tensors(tx, ty.long(), vx, vy.long(), len(classes), classes)


def _augment(cfg: TrainConfig, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    from ltpa.data.augment import random_crop, random_flip

    if cfg.augment == "flip":
        x = random_flip(x, gen)
    elif cfg.augment == "flip-half":
        x = random_flip(x, gen, mode="half")
    elif cfg.augment == "crop-flip":
        x = random_flip(random_crop(x, 4, gen), gen)
    elif cfg.augment == "crop-flip-batch":  # the official ResNet code (docs/fidelity.md row 1)
        x = random_flip(random_crop(x, 4, gen, per="batch"), gen, mode="half")
    return x


# ----------------------------------------------------------------------------------------------- model


NARROW_WIDTH = 0.25


def narrow_drop_scale(width: float) -> float:
    """The default ``drop_scale`` of a non-preset run at ``width`` below 0.25: ``(width / 0.25) ** 2``.

    The paper's dropout (0.3-0.5 before BatchNorm on every VGG layer) on layers of 4-8 channels makes the
    train-mode and eval-mode statistics disagree so much that the model collapses to chance in eval mode
    (vgg_att2_concat_pc at width 0.0625: 52% train, 10% test accuracy); scaling it down with the square of
    the width keeps narrow runs usable. Presets, and an explicit ``--model-kwarg drop_scale=X``, are exact.
    """
    return (width / NARROW_WIDTH) ** 2


def build_model(cfg: TrainConfig, num_classes: int, img_size: int) -> LTPAModel:
    """The model of ``cfg`` for ``num_classes`` classes at ``img_size``, with the dataset's preset.

    Non-preset runs narrower than width 0.25 get a smaller dropout unless ``model_kwargs`` sets
    ``drop_scale`` (:func:`narrow_drop_scale`). ``model_kwargs`` that contradict the config (``num_classes``,
    ``img_size``, ``preprocess``, ``width``) are refused.
    """
    from ltpa.data import dataset_info

    kwargs = dict(cfg.model_kwargs)
    # Backbones from timm/torchvision bring the normalisation their (ImageNet) weights expect.
    backbone = cfg.model.startswith(("timm/", "tv/"))
    preprocess = cfg.preprocess or ("backbone" if backbone else dataset_info(cfg.data).preprocess)
    fixed: dict[str, tuple[Any, str]] = {
        "num_classes": (num_classes, f"the {num_classes} classes of {cfg.data}"),
        "img_size": (img_size, "--img-size"),
        "preprocess": (preprocess, "--preprocess"),
    }
    if cfg.width != 1.0 or "width" in kwargs:
        fixed["width"] = (cfg.width, "--width")
    for key, (value, source) in fixed.items():
        if key in kwargs and kwargs[key] != value:
            raise LTPAError(
                f"--model-kwarg {key}={kwargs[key]} conflicts with {source} ({value}); drop the model kwarg"
            )
        kwargs[key] = value
    own_family = cfg.model.startswith(("vgg", "resnet164"))  # ltpa's own models, which take drop_scale
    if kwargs.get("pretrained") and not backbone:
        raise LTPAError(
            f"--pretrained loads the ImageNet weights of timm/ and tv/ backbones; {cfg.model} has none: drop it, "
            "or start from a run of yours with --init-from RUN_DIR"
        )
    if cfg.preset is None and cfg.width < NARROW_WIDTH and "drop_scale" not in kwargs and own_family:
        kwargs["drop_scale"] = narrow_drop_scale(cfg.width)
    try:
        return create_model(cfg.model, **kwargs)
    except TypeError as err:
        raise LTPAError(f"model {cfg.model} does not take these options: {err}") from err


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with the config's momentum, dampening, Nesterov and weight decay (on every parameter, as Torch),
    or AdamW (decoupled weight decay) for short runs."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.peak_lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        model.parameters(),
        lr=cfg.peak_lr,
        momentum=cfg.momentum,
        dampening=cfg.dampening,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
    )


def _init_from(model: LTPAModel, path: str, head: str = "keep") -> int:
    """Loads every weight of the checkpoint at ``path`` whose name and shape fit, except the input
    normalisation (the CUB recipe, method §2.3). ``head="keep"`` also copies the classifier's tensors that fit
    (all but a final layer of another class count); ``"fresh"`` leaves the whole classifier block
    (``model.head_modules()``: per-level BatchNorms included) at its initial values, as the official CUB code
    does. Returns the number of tensors loaded."""
    from ltpa.checkpoint import checkpoint_paths, resolve_checkpoint

    weights, _ = checkpoint_paths(resolve_checkpoint(path))
    source = read_weights(weights)
    own = model.state_dict()
    skip = ["preprocess."]
    if head == "fresh":
        skip += [f"{name}." for name in model.head_modules()]
    loaded = {
        k: v
        for k, v in source.items()
        if k in own and own[k].shape == v.shape and not k.startswith(tuple(skip))
    }
    trunk = [k for k in own if not k.startswith(tuple(skip))]
    missing = [k for k in trunk if k not in loaded]
    classifier = {f"{n}" for n, _ in _classifier_names(model)}
    if not loaded or any(k not in classifier for k in missing):
        bad = [k for k in missing if k not in classifier][:3]
        raise LTPAError(
            f"checkpoint {path} does not fit model {model.model_name}: no match for {bad}; use a checkpoint of the same architecture"
        )
    model.load_state_dict(loaded, strict=False)
    return len(loaded)


def _classifier_names(model: LTPAModel) -> Iterator[tuple[str, torch.Tensor]]:
    clf = model.get_classifier()
    ids = {id(p) for p in clf.parameters()}
    for name, p in model.named_parameters():
        if id(p) in ids:
            yield name, p


@torch.no_grad()
def _test_metrics(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    dist_info: _Dist | None = None,
) -> tuple[float, float]:
    """Top-1 accuracy and mean cross-entropy of ``model`` (eval mode) on uint8 or [0, 1] ``images``, for the
    per-epoch test line. Unlike ``ltpa.evaluate.evaluate_accuracy`` (full report of a loaded checkpoint), each
    DDP process evaluates its share here and the sums are all-reduced.
    """
    dist_info = dist_info or _Dist()
    device = torch.device(device)
    was_training = model.training
    model.eval()
    idx = torch.arange(dist_info.rank, len(images), dist_info.world)
    correct = torch.zeros((), dtype=torch.float64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for start in range(0, len(idx), batch_size):
        sel = idx[start : start + batch_size]
        x = to_unit_float(images[sel].to(device, non_blocking=True))
        y = labels[sel].to(device)
        with autocast(device, amp_dtype):
            logits = model(x)
        correct += (logits.argmax(1) == y).sum()
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
    if dist_info.enabled:
        import torch.distributed as dist

        dist.all_reduce(correct)
        dist.all_reduce(loss_sum)
    model.train(was_training)
    n = max(1, len(images))
    return float(correct) / n, float(loss_sum) / n


# ----------------------------------------------------------------------------------------------- run folder


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _preflight(run_dir: Path, need_bytes: int) -> None:
    """Unwritable or full output folders are reported before any training happens."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".ltpa-write-test"
        fd = open_no_follow(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
        probe.unlink()
    except OSError as err:
        raise LTPAError(
            f"cannot write to output folder {run_dir}: {err.strerror}; choose another --out"
        ) from err
    free = shutil.disk_usage(run_dir).free
    if free < need_bytes:
        raise LTPAError(
            f"only {free / 2**20:.0f} MiB free at {run_dir}, checkpoints need about {need_bytes / 2**20:.0f} MiB; "
            "free some space or choose another --out"
        )


def _owned(path: Path) -> bool:
    if path.is_dir() and not path.is_symlink():
        return path.name in RUN_DIRS
    match = _TMP.fullmatch(path.name)
    return path.name in RUN_FILES or (match is not None and match["name"] in RUN_FILES)


# Names a user's own folder may hold too: they count as ltpa's only in a folder a training has claimed (an
# experiment folder with its own config.yaml is not a run to replace).
_COMMON_NAMES = frozenset({"config.yaml", "metrics.csv", "metrics.jsonl"})


def _is_run(run_dir: Path) -> bool:
    """Whether a training has claimed ``run_dir``: it holds ltpa's lock file (created once the folder was
    found free, before anything else is written) or an ltpa run.json."""
    lock = run_dir / LOCK_FILE
    if lock.is_file() and not lock.is_symlink():
        return True
    path = run_dir / "run.json"
    if path.is_symlink() or not path.is_file():
        return False
    try:
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(info, dict) and "started" in info and "argv" in info


def _remove_temporaries(run_dir: Path) -> None:
    """Deletes the temporary files of ``atomic_write`` that a killed training left in ``run_dir`` (the caller
    holds the folder's lock, so no other training is writing them)."""
    for path in run_dir.iterdir():
        match = _TMP.fullmatch(path.name)
        if match is not None and match["name"] in RUN_FILES and path.is_file() and not path.is_symlink():
            path.unlink()


def foreign_files(run_dir: str | os.PathLike[str]) -> list[str]:
    """Names of the entries of ``run_dir`` that ltpa's training does not write (sorted; [] for no folder).

    ``config.yaml`` and the metrics files count as ltpa's only in a folder with ltpa's ``run.json``.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    common = set() if _is_run(run_dir) else _COMMON_NAMES
    return sorted(p.name for p in run_dir.iterdir() if not _owned(p) or p.name in common)


def clear_run(run_dir: str | os.PathLike[str]) -> None:
    """Deletes what ltpa's training wrote in ``run_dir`` (its lock file excepted); other files stay."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    for path in run_dir.iterdir():
        if path.name == LOCK_FILE or not _owned(path):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()  # a link itself, never what it points to


def _has_checkpoints(run_dir: Path) -> bool:
    return any((run_dir / name).exists() for name in _CHECKPOINT_FILES)


def _claim_out(run_dir: Path, cfg: TrainConfig, *, clear: bool, log: bool) -> None:
    """Refuses an ``out`` that holds something to keep; with ``clear``, removes ltpa's stale files there.

    Kept unless ``cfg.overwrite``: a run that can be resumed, checkpoints, and any file ltpa does not write.
    A folder with ltpa's files only and no checkpoint (a run killed before its first epoch ended) starts again.
    """
    if run_dir.exists() and not run_dir.is_dir():
        raise LTPAError(f"{run_dir} exists and is not a folder; choose another --out")
    if not run_dir.is_dir() or not any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        return
    if not cfg.overwrite:
        if (run_dir / RESUME_FILE).exists():
            raise LTPAError(
                f"{run_dir} already holds a run; continue it with --resume {run_dir}, replace it with "
                "--overwrite or choose another --out"
            )
        foreign = foreign_files(run_dir)
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise LTPAError(
                f"{run_dir} is not empty and is not an ltpa run ({shown}); choose another --out, or pass "
                "--overwrite to train there anyway (ltpa's own files are replaced, other files kept)"
            )
        if _has_checkpoints(run_dir):
            raise LTPAError(
                f"{run_dir} holds checkpoints but no resume state; pass --overwrite to replace them or "
                "choose another --out"
            )
    if clear:
        if log and ((run_dir / RESUME_FILE).exists() or _has_checkpoints(run_dir)):
            epoch = _saved_epoch(run_dir)
            done = f" (last saved epoch {epoch})" if epoch is not None else ""
            logger.info("%s: --overwrite: replacing the earlier run there%s", run_dir, done)
        elif log and (run_dir / "config.yaml").exists():
            logger.info("%s: replacing an earlier run that never finished an epoch", run_dir)
        clear_run(run_dir)


class _RunLock:
    """An exclusive ``fcntl.flock`` on ``<run_dir>/.ltpa.lock``, so that two trainings never share a run
    folder; the kernel releases it when the process ends, however it ends."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.fd: int | None = None

    def acquire(self) -> None:
        path = self.run_dir / LOCK_FILE
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = open_no_follow(path, os.O_RDWR | os.O_CREAT)
        except OSError as err:
            raise LTPAError(
                f"cannot write to output folder {self.run_dir}: {err.strerror}; choose another --out"
            ) from err
        try:
            import fcntl
        except ImportError:  # not a POSIX system: no lock
            os.close(fd)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = Path(path).read_text().strip() or "?"
            os.close(fd)
            raise LTPAError(
                f"{self.run_dir} is in use by another ltpa training (pid {holder}); wait for it to end or "
                "choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None


def _default_out(cfg: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.model.replace('/', '_')}-{cfg.data}-s{cfg.seed}-{stamp}"


class _MetricsLog:
    """``metrics.csv`` for people and ``metrics.jsonl`` for programs. The held-out columns of the CSV are named
    after the split evaluated (``val_accuracy`` under ``--eval-split val``); the JSONL keeps the ``test_*`` keys
    for every split, as :class:`FitResult` documents, so that programs read one key."""

    def __init__(self, run_dir: Path, split: str = "test") -> None:
        self.csv = run_dir / "metrics.csv"
        self.jsonl = run_dir / "metrics.jsonl"
        self.split = split

    def rewrite(self, history: list[dict[str, Any]]) -> None:
        if not history:
            for path in (self.csv, self.jsonl):
                path.unlink(missing_ok=True)
            return
        rename = {f"test_{k}": f"{self.split}_{k}" for k in ("loss", "accuracy")}
        rows = [{rename.get(k, k): v for k, v in row.items()} for row in history]
        fields = list(rows[0])

        def write_csv(tmp: str) -> None:
            with open(tmp, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=fields)
                writer.writeheader()
                writer.writerows(rows)

        atomic_write(self.csv, write_csv)
        atomic_write(
            self.jsonl, lambda tmp: Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in history))
        )


# ----------------------------------------------------------------------------------------------- resume state


def _save_resume(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, meta: dict[str, Any]
) -> None:
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    opt_scalars: dict[str, dict[str, Any]] = {}
    for pid, state in opt["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                opt_scalars.setdefault(str(pid), {})[key] = value
    meta = {**meta, "param_groups": opt["param_groups"], "optim_scalars": opt_scalars}
    atomic_write(path, lambda tmp: save_weights(tensors, tmp, metadata={"ltpa_state": json.dumps(meta)}))


def _read_resume_meta(path: Path) -> dict[str, Any]:
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta: dict[str, Any] = json.loads((fh.metadata() or {})["ltpa_state"])
    except Exception as err:  # safetensors' own error types for truncated or foreign files
        raise LTPAError(f"cannot read resume state {path}: {err}") from err
    counts = ("epoch", "step", "global_step")
    ok = (
        isinstance(meta, dict)
        and all(
            isinstance(meta.get(k), int) and not isinstance(meta.get(k), bool) and meta[k] >= 0
            for k in counts
        )
        and isinstance(meta.get("history"), list)
        and all(isinstance(r, dict) for r in meta["history"])
        and isinstance(meta.get("param_groups"), list)
        and isinstance(meta.get("optim_scalars"), dict)
        and "accumulators" in meta
    )
    if not ok:
        raise LTPAError(
            f"resume state {path} is not one ltpa wrote (its metadata lacks the loop's position or the "
            "optimiser's settings); restore it, or start again with --overwrite"
        )
    return meta


# Settings that say where and how loudly a run goes, not what it computes: --resume may change them.
_RESUME_FREE = ("device", "quiet")


def _resume_config(
    run_dir: Path, caller: TrainConfig, changes: dict[str, Any], log: bool
) -> tuple[TrainConfig, dict[str, Any] | None, list[str]]:
    """The saved config of ``run_dir`` with ``changes`` (settings given again on resume) checked against it.

    Returns ``(config, resume metadata or None to start the run again, notes for run.json)``.

    Raises:
        LTPAError: no run there, or a change other than more ``epochs``, ``device`` or ``quiet``.
    """
    config_path, state_path = run_dir / "config.yaml", run_dir / RESUME_FILE
    if not config_path.is_file():
        raise LTPAError(f"nothing to resume in {run_dir}: no config.yaml (was it made by `ltpa train`?)")
    try:
        saved = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError as err:
        raise LTPAError(f"{config_path} is not valid YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(saved, dict):
        raise LTPAError(f"{config_path} is not an ltpa run config (not a mapping)")
    _check_keys(saved, str(config_path))
    cfg = TrainConfig(**_check_types(saved, f" in {config_path}"))
    meta: dict[str, Any] | None = None
    notes: list[str] = []
    if state_path.is_file():
        meta = _read_resume_meta(state_path)
    elif _has_checkpoints(run_dir) or foreign_files(run_dir):
        raise LTPAError(
            f"nothing to resume in {run_dir}: no {RESUME_FILE}; start again there with --overwrite or "
            "choose another --out"
        )
    else:
        notes.append("no resume state (stopped before its first epoch ended): started again")
    differ: list[str] = []
    for key, value in changes.items():
        if key in _RESUME_FREE or key == "epochs" or value is None:
            continue
        if key == "overwrite":
            if value:
                differ.append("--overwrite (it does not apply to --resume)")
            continue
        if key == "out":
            if Path(value).resolve() != run_dir.resolve():
                differ.append(f"out={value} (the run is {run_dir})")
            continue
        if key in ("amp", "channels_last") and value == "auto":
            continue  # auto: whatever the run resolved when it started, which is what it keeps
        saved_value = getattr(cfg, key)
        if key in ("model_kwargs", "data_options") and isinstance(value, dict):
            differ += [
                f"{key}.{k}={v!r} (run has {saved_value.get(k)!r})"
                for k, v in value.items()
                if saved_value.get(k) != v
            ]
        elif value != saved_value:
            differ.append(f"{key}={value!r} (run has {saved_value!r})")
    if differ:
        raise LTPAError(
            f"--resume continues {run_dir} with its saved settings, and these differ: {'; '.join(differ)}; "
            "drop them (only --epochs, --device and --quiet may change) or start a new run with --out"
        )
    epochs = changes.get("epochs")
    if epochs is not None and epochs != cfg.epochs:
        next_epoch, step = (meta["epoch"], meta["step"]) if meta else (1, 0)
        least = next_epoch if step else max(next_epoch - 1, 1)
        if epochs < least:
            raise LTPAError(
                f"--epochs {epochs} is fewer than the {least} epochs {run_dir} has done or begun; "
                f"pass at least {least}"
            )
        note = f"epochs changed from {cfg.epochs} to {epochs}"
        if cfg.lr_schedule == "cosine" and meta is not None:
            note += (
                "; the cosine schedule spans all steps, so it is recomputed for the new length: the remaining "
                "steps' learning rates differ from the original schedule and from a fresh run of that length"
            )
        notes.append(note)
        if cfg.lr_schedule == "cosine":  # the schedule changes: say so even when quiet
            logger.warning("%s: %s", run_dir, note)
        elif log:
            logger.info("%s: %s", run_dir, note)
        cfg.epochs = epochs
    cfg.quiet = bool(changes.get("quiet") or caller.quiet)
    cfg.device = changes.get("device") or caller.device
    _validate(cfg)
    return cfg, meta, notes


def _load_resume(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    meta = _read_resume_meta(path)
    tensors = read_weights(path)  # model and optimiser state, checked to be finite
    misfit = (
        f"resume state {path} does not fit the model and optimiser of the run's config.yaml; it belongs to "
        "another run or one of the two was edited: restore them, or start again with --overwrite"
    )
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, pid, name = key.split(".", 2)
                state.setdefault(int(pid), {})[name] = value
        for pid, scalars in meta.pop("optim_scalars").items():
            state.setdefault(int(pid), {}).update(scalars)
        optimizer.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as err:
        detail = str(err).strip().splitlines()
        raise LTPAError(f"{misfit} ({detail[-1].strip() if detail else type(err).__name__})") from err
    own = {id(p) for p in model.parameters()}
    for group in optimizer.param_groups:  # an edited param group could point the optimiser elsewhere
        if any(id(p) not in own for p in group["params"]):
            raise LTPAError(misfit)
    return meta


# ----------------------------------------------------------------------------------------------- fit


class _StopFlag:
    """Ctrl-C and SIGTERM (e.g. a cluster pre-emption) ask the loop to stop at the next step boundary, where it
    saves resume state and raises KeyboardInterrupt; a second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: signals stay as they are
                break
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def _progress(total: int, initial: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="step",
        leave=False,
        disable=not enabled,
        dynamic_ncols=True,
    )


def fit(
    cfg: TrainConfig,
    *,
    resume: str | os.PathLike[str] | None = None,
    callbacks: Sequence[Callable[[dict[str, Any]], None]] = (),
    changes: dict[str, Any] | None = None,
    train_data: Dataset | None = None,
    eval_data: Dataset | None = None,
) -> FitResult:
    """Trains ``cfg.model`` on ``cfg.data`` and writes the run folder (see the module docstring).

    Args:
        cfg: the resolved config (``ltpa.config.resolve_config``).
        resume: a run folder with ``resume.safetensors``: training continues where it stopped, with the config
            saved there (``cfg`` is then ignored except for ``quiet`` and ``device``). A folder stopped before
            its first resume state starts again from its config.yaml.
        callbacks: called after every optimiser step with ``{"epoch", "step", "loss", "global_step"}``.
        changes: with ``resume``, the settings given again (e.g. the command line's flags): more ``epochs``
            extend the run, ``device`` and ``quiet`` apply, any other value that differs from the saved config
            is refused.
        train_data: any ``torch.utils.data.Dataset`` of ``(image, label)`` items (uint8 or [0, 1] float
            ``(3, H, W)`` images, class-index labels) to train on instead of the registered ``cfg.data``; its
            ``classes`` attribute names the classes where it has one. ``cfg.data`` then only labels the run
            (a registered name becomes ``"custom"``), ``cfg.img_size`` defaults to the images' side and
            ``cfg.preprocess`` to ``meanstd``. A resumed run needs the same datasets again.
        eval_data: the held-out dataset evaluated after each epoch (required with ``train_data``).

    Returns:
        A :class:`FitResult`.

    Raises:
        LTPAError: bad config, missing data, an output folder that holds something else or is in use by
            another training, unwritable output, changed settings on resume, or a non-finite loss or state
            (named by epoch; the checkpoints saved before stay).
        KeyboardInterrupt: after saving resume state, on Ctrl-C or SIGTERM.
    """
    user = _user_data(train_data, eval_data)
    if resume is not None:
        run_dir = Path(resume)
        if not run_dir.is_dir():
            raise LTPAError(f"nothing to resume: {run_dir} is not a folder")
        device_choice = (changes or {}).get("device") or cfg.device
    else:
        if user is not None:
            cfg = _label_user_data(cfg, user)
        _validate(cfg)
        run_dir = Path(cfg.out) if cfg.out else _default_out(cfg)
        device_choice = cfg.device
    dist_info = _init_distributed(device_choice)
    lock = _RunLock(run_dir) if dist_info.main else None
    if resume is None and dist_info.main:
        _claim_out(run_dir, cfg, clear=False, log=False)  # refuse before creating anything there
    created = [p for p in (run_dir, *run_dir.parents) if not p.exists()]  # folders this call makes
    finished = False
    if lock is not None:
        lock.acquire()
    try:
        resume_meta: dict[str, Any] | None = None
        notes: list[str] = []
        if resume is not None:
            if dist_info.main:
                _remove_temporaries(run_dir)
            cfg, resume_meta, notes = _resume_config(
                run_dir, cfg, changes or {}, dist_info.main and not cfg.quiet
            )
            if resume_meta is None and dist_info.main:
                clear_run(run_dir)
        elif dist_info.main:
            _claim_out(run_dir, cfg, clear=True, log=not cfg.quiet)
        result = _fit(cfg, run_dir, dist_info, resume_meta, notes, callbacks, user)
        finished = True
        return result
    finally:
        if lock is not None:
            lock.release()
            if not finished:
                _remove_unused(created)
        _end_distributed(dist_info)


def _user_data(train_data: Dataset | None, eval_data: Dataset | None) -> _UserData | None:
    if train_data is None and eval_data is None:
        return None
    if train_data is None or eval_data is None:
        raise LTPAError("fit() needs both train_data and eval_data (held-out images evaluated each epoch)")
    for name, data in (("train_data", train_data), ("eval_data", eval_data)):
        if not isinstance(data, Dataset) or not hasattr(data, "__len__"):
            raise LTPAError(
                f"{name} must be a torch.utils.data.Dataset with a length, got {type(data).__name__}"
            )
    return _UserData(_AsImages(train_data, "train_data"), _AsImages(eval_data, "eval_data"))


def _label_user_data(cfg: TrainConfig, user: _UserData) -> TrainConfig:
    """``cfg`` for datasets given to fit(): ``data`` a label that names no registered dataset, and the input
    size and normalisation that would otherwise come from the registry."""
    import dataclasses

    from ltpa.data import list_datasets
    from ltpa.data._base import load_tensors

    changes: dict[str, Any] = {}
    if cfg.data in list_datasets():
        changes["data"] = "custom"
    if cfg.img_size is None:
        first, _, _ = load_tensors(user.train, None, limit=1, progress=False)
        if len(first) == 0:
            raise LTPAError("train_data is empty")
        changes["img_size"] = int(first.shape[-1])
    if cfg.preprocess is None and not cfg.model.startswith(("timm/", "tv/")):
        changes["preprocess"] = "meanstd"
    return dataclasses.replace(cfg, **changes)


def _remove_unused(created: list[Path]) -> None:
    """After a run that failed before writing anything (no data, a bad model option...): removes the folders
    it created, deepest first, where nothing but its lock file is in them, so that no empty run folder stays."""
    for folder in created:
        try:
            entries = list(folder.iterdir())
        except OSError:
            return
        if any(e.name != LOCK_FILE for e in entries):
            return
        try:
            (folder / LOCK_FILE).unlink(missing_ok=True)
            folder.rmdir()
        except OSError:
            return


@dataclass
class TrainState:
    """Where the loop stands, all that resume state saves: the epoch and step to run next, the optimiser step
    count, the finished epochs' rows, the running sums of the epoch in progress, and the best test accuracy."""

    epoch: int = 1
    step: int = 0
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    acc: dict[str, Any] = field(default_factory=lambda: _fresh_accumulators())
    best: float = -1.0

    def meta(self, epoch: int | None = None, step: int | None = None) -> dict[str, Any]:
        """What the resume file records (by default at the current epoch and step)."""
        return _loop_meta(
            self.epoch if epoch is None else epoch,
            self.step if step is None else step,
            self.global_step,
            self.history,
            self.acc,
        )


def _fresh_accumulators() -> dict[str, Any]:
    return {"loss_sum": 0.0, "correct": 0.0, "seen": 0, "seconds": 0.0}


@dataclass
class _Session:
    """Everything set up once per run: config, folder, devices, data, the model and its wrappers."""

    cfg: TrainConfig
    run_dir: Path
    dist_info: _Dist
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    data: _Tensors
    model: LTPAModel
    train_model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: Any
    metrics_log: _MetricsLog
    writer: Any
    log: bool
    bar: bool
    steps: int
    total_steps: int
    train_x: torch.Tensor
    train_y: torch.Tensor

    @property
    def per_rank(self) -> int:
        return self.cfg.batch_size // self.dist_info.world

    def save_resume(self, state: TrainState, epoch: int, step: int) -> None:
        _check_finite(self.model, epoch, self.run_dir)
        _save_resume(self.run_dir / RESUME_FILE, self.model, self.optimizer, state.meta(epoch, step))

    def checkpoint(self, stem: str, epoch: int, row: dict[str, Any]) -> None:
        metrics = {k: row[k] for k in ("train_loss", "train_accuracy", "test_loss", "test_accuracy")}
        save_checkpoint(
            self.run_dir / stem,
            self.model,
            epoch=epoch,
            metrics=metrics,
            config=self.cfg.to_dict(),
            extra={"classes": self.data.classes},
        )


def _fit(
    cfg: TrainConfig,
    run_dir: Path,
    dist_info: _Dist,
    resume_meta: dict[str, Any] | None,
    notes: list[str],
    callbacks: Sequence[Callable[[dict[str, Any]], None]],
    user: _UserData | None = None,
) -> FitResult:
    session, state = _setup(cfg, run_dir, dist_info, resume_meta, notes, user)
    with _StopFlag() as stop:
        try:
            for epoch in range(state.epoch, cfg.epochs + 1):
                state.epoch = epoch
                train_one_epoch(session, state, stop, callbacks)
                row = _evaluate_epoch(session, state)
                _end_epoch(session, state, row)
                if stop.requested:  # arrived during evaluation or saving: the epoch's state is already saved
                    logger.warning("interrupted; resume with: ltpa train --resume %s", run_dir)
                    raise KeyboardInterrupt
        finally:
            if session.writer is not None:
                session.writer.close()
    session.model.eval()
    return FitResult(run_dir=run_dir, model=session.model, history=state.history, eval_split=cfg.eval_split)


def _setup(
    cfg: TrainConfig,
    run_dir: Path,
    dist_info: _Dist,
    resume_meta: dict[str, Any] | None,
    notes: list[str],
    user: _UserData | None = None,
) -> tuple[_Session, TrainState]:
    """Resolves the runtime (threads, precision, memory format), loads data, builds model and optimiser,
    restores resume state, wraps the model (SyncBN, DDP, compile) and writes config.yaml and run.json."""
    resume = resume_meta is not None
    device = _resolve_device(cfg, dist_info)
    runtime: dict[str, Any] = {}
    if device.type == "cpu":
        # on resume the count is the one the run resolved when it started (config.yaml), not a flag
        threads = configure_threads(cfg.threads, "the count the run started with" if resume else "--threads")
        cfg.threads = threads.threads  # resolved: config.yaml records it, so --resume computes the same
        runtime["threads"] = threads.reason
    precision = resolve_precision(cfg.amp, device)
    cfg.amp, amp_dtype = precision.name, precision.dtype
    runtime["amp"] = precision.reason
    log = dist_info.main and not cfg.quiet
    bar = log and sys.stderr.isatty()
    if cfg.batch_size % dist_info.world:
        raise LTPAError(
            f"batch size {cfg.batch_size} does not split over {dist_info.world} processes; pick a multiple"
        )

    from ltpa.data import dataset_info, list_datasets

    if cfg.img_size is None and cfg.data not in list_datasets():
        raise LTPAError(f"data {cfg.data!r} is not a registered dataset; give its datasets to fit() again")
    img_size = cfg.img_size or dataset_info(cfg.data).img_size
    data = _load_data(cfg, img_size, progress=bar, user=user)
    model = _build_initial_model(cfg, data, img_size, resume, log)
    n_params = sum(p.numel() for p in model.parameters())
    if dist_info.main:
        _preflight(run_dir, need_bytes=n_params * 4 * CHECKPOINT_COPIES + CHECKPOINT_SLACK_BYTES)

    channels_last, runtime["channels_last"] = _place_model(
        cfg, model, data, device, amp_dtype, img_size, dist_info
    )
    optimizer = make_optimizer(cfg, model)
    state = TrainState()
    if resume:
        meta = _load_resume(run_dir / RESUME_FILE, model, optimizer)
        state = TrainState(
            epoch=meta["epoch"],
            step=meta["step"],
            global_step=meta["global_step"],
            history=meta["history"],
            acc=meta["accumulators"],
        )
    state.best = max((r["test_accuracy"] for r in state.history), default=-1.0)

    n = len(data.train_x)
    steps = n // cfg.batch_size if cfg.drop_last else math.ceil(n / cfg.batch_size)
    session = _Session(
        cfg=cfg,
        run_dir=run_dir,
        dist_info=dist_info,
        device=device,
        amp_dtype=amp_dtype,
        channels_last=channels_last,
        data=data,
        model=model,
        train_model=_wrap_model(cfg, model, dist_info, device),
        optimizer=optimizer,
        scaler=torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None,
        metrics_log=_MetricsLog(run_dir, cfg.eval_split),
        writer=None,
        log=log,
        bar=bar,
        steps=steps,
        total_steps=steps * cfg.epochs,
        train_x=data.train_x.to(device),
        train_y=data.train_y.to(device),
    )
    if dist_info.main:
        _write_run_files(session, state, n_params, runtime, notes, resume)
        session.writer = _tensorboard(cfg, run_dir)
    if log:
        logger.info(
            f"training {cfg.model} ({n_params:,} parameters) on {cfg.data}: {n} images at {img_size}x{img_size} "
            + ("(--img-size)" if cfg.img_size else "(the dataset's size; --img-size changes it)")
            + f", {steps} steps/epoch, "
            f"{cfg.epochs} epochs, device {device}"
            + (f" x{dist_info.world}" if dist_info.enabled else "")
            + f" ({describe_runtime(cfg.threads if device.type == 'cpu' else None, cfg.amp, cfg.channels_last)})"
            + f" -> {run_dir}"
        )
    return session, state


def _place_model(
    cfg: TrainConfig,
    model: LTPAModel,
    data: _Tensors,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    img_size: int,
    dist_info: _Dist | None = None,
) -> tuple[bool, str]:
    """Moves the model to ``device`` in the memory format chosen for it (measured on a CPU); records the
    choice in ``cfg.channels_last`` and returns it with its reason.

    Under DDP the first process chooses (measures) and every process takes its choice: DDP needs the same
    parameter strides on all of them, and two processes timing the formats on a busy CPU may disagree.
    """
    dist_info = dist_info or _Dist()
    model.to(device)
    if dist_info.main:
        channels_last, reason = choose_channels_last(
            cfg.channels_last,
            model,
            to_unit_float(data.train_x[: cfg.batch_size].to(device)),
            data.train_y[: cfg.batch_size].to(device),
            device,
            amp_dtype,
            cache_key=(
                cfg.model,
                cfg.width,
                img_size,
                repr(cfg.model_kwargs),
                cfg.amp,
                torch.get_num_threads(),
            ),
        )
    else:
        channels_last, reason = False, ""
    if dist_info.enabled:
        channels_last = _rank0_flag(channels_last, device)
        reason = (
            f"{reason}; process 0 chose, all {dist_info.world} processes follow"
            if dist_info.main
            else ("the choice of process 0")
        )
    cfg.channels_last = "on" if channels_last else "off"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return channels_last, reason


def _rank0_flag(flag: bool, device: torch.device) -> bool:
    """Process 0's ``flag``, in every process of the group."""
    import torch.distributed as dist

    value = torch.tensor([float(flag)], device=device)
    dist.broadcast(value, src=0)
    return bool(value.item())


def _build_initial_model(
    cfg: TrainConfig, data: _Tensors, img_size: int, resume: bool, log: bool
) -> LTPAModel:
    """The model with its fitted input normalisation and, for a new run, the ``--init-from`` weights."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data.num_classes, img_size)
    if not model.preprocess.fitted:
        model.preprocess.fit(data.train_x)
    if cfg.init_from and not resume:
        count = _init_from(model, cfg.init_from, cfg.init_from_head)
        if log:
            logger.info("initialised %d tensors from %s", count, cfg.init_from)
    return model


def _wrap_model(cfg: TrainConfig, model: nn.Module, dist_info: _Dist, device: torch.device) -> nn.Module:
    """What the training steps call: the model, under SyncBatchNorm, DDP and ``torch.compile`` as configured."""
    train_model: nn.Module = model
    if cfg.sync_bn and dist_info.enabled:
        if device.type != "cuda":
            raise LTPAError("--sync-bn needs CUDA devices; drop it for CPU (gloo) training")
        train_model = nn.SyncBatchNorm.convert_sync_batchnorm(train_model)
    if dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        train_model = DDP(train_model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        train_model = torch.compile(train_model)  # type: ignore[assignment]
    return train_model


def _write_run_files(
    session: _Session,
    state: TrainState,
    n_params: int,
    runtime: dict[str, Any],
    notes: list[str],
    resume: bool,
) -> None:
    """config.yaml (the resolved config), run.json (provenance), the metrics so far, and after a kill between
    an epoch's resume state and its checkpoints, those checkpoints."""
    cfg, run_dir = session.cfg, session.run_dir
    atomic_write(
        run_dir / "config.yaml",
        lambda tmp: Path(tmp).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False)),
    )
    run_info = {
        "git_commit": _git_commit(),
        "argv": sys.argv,
        "torch": torch.__version__,
        "device": str(session.device),
        "world_size": session.dist_info.world,
        "params": n_params,
        "train_images": len(session.data.train_x),
        "img_size": int(session.data.train_x.shape[-1]),
        "test_images": len(session.data.test_x),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "resumed_from_epoch": state.epoch if resume else None,
        "resume_notes": notes,
        "runtime": {"threads": cfg.threads, "amp": cfg.amp, "channels_last": cfg.channels_last},
        "runtime_reasons": runtime,
    }
    atomic_write(
        run_dir / "run.json", lambda tmp: Path(tmp).write_text(json.dumps(run_info, indent=2) + "\n")
    )
    session.metrics_log.rewrite(state.history)
    if resume and state.step == 0 and state.history:
        _catch_up_checkpoints(run_dir, session.model, cfg, state.history, session.data.classes)


def _batch(
    session: _Session, perm: torch.Tensor, step: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's share of batch ``step``, augmented, as float input for the training step."""
    cfg, rank = session.cfg, session.dist_info.rank
    sel = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
    sel = sel[rank * session.per_rank : (rank + 1) * session.per_rank].to(session.device)
    if cfg.augment_space == "normalized":  # augment normalised images (docs/fidelity.md row 2)
        with torch.no_grad():
            x = _augment(cfg, session.model.preprocess(to_unit_float(session.train_x[sel])), gen)
    else:
        x = to_unit_float(_augment(cfg, session.train_x[sel], gen))
    if session.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, session.train_y[sel]


def _train_step(session: _Session, state: TrainState, x: torch.Tensor, y: torch.Tensor, step: int) -> float:
    """One optimiser step on ``(x, y)``; returns the batch loss (refusing a non-finite one)."""
    cfg, optimizer = session.cfg, session.optimizer
    with (
        autocast(session.device, session.amp_dtype),
        normalized_input(session.model, cfg.augment_space == "normalized"),
    ):
        logits = session.train_model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
    loss_value = float(loss.detach())
    if not math.isfinite(loss_value):
        raise LTPAError(
            f"loss became {loss_value} at epoch {state.epoch} step {step + 1}; training stopped, "
            f"{_kept_note(session.run_dir)}; lower --lr or check the data"
        )
    for group in optimizer.param_groups:
        group["lr"] = lr_at(cfg, state.epoch, state.global_step, session.total_steps)
    optimizer.zero_grad(set_to_none=True)
    if session.scaler is not None:
        session.scaler.scale(loss).backward()
        session.scaler.step(optimizer)
        session.scaler.update()
    else:
        loss.backward()
        optimizer.step()
    state.global_step += 1
    state.acc["loss_sum"] += loss_value * len(y)
    state.acc["correct"] += float((logits.argmax(1) == y).sum())
    state.acc["seen"] += len(y)
    return loss_value


def train_one_epoch(
    session: _Session,
    state: TrainState,
    stop: _StopFlag,
    callbacks: Sequence[Callable[[dict[str, Any]], None]] = (),
) -> None:
    """Runs the steps of ``state.epoch`` from ``state.step``; saves resume state every ``checkpoint_every``
    steps and on Ctrl-C/SIGTERM (then raises ``KeyboardInterrupt``). Batch order, augmentation and dropout
    are functions of (seed, epoch, step), so a resumed epoch continues exactly."""
    cfg, epoch, dist_info = session.cfg, state.epoch, session.dist_info
    if cfg.reset_momentum and epoch in cfg.lr_milestones and state.step == 0:
        session.optimizer.state.clear()
    n = len(session.train_x)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(_step_seed(cfg.seed, epoch, -1)))
    session.train_model.train()
    progress = _progress(session.steps, state.step, f"epoch {epoch}/{cfg.epochs}", session.bar)
    tick = time.perf_counter()
    for step in range(state.step, session.steps):
        seed = _step_seed(cfg.seed, epoch, step)
        torch.manual_seed(seed)
        x, y = _batch(session, perm, step, torch.Generator().manual_seed(seed))
        loss_value = _train_step(session, state, x, y, step)
        progress.update(1)
        if session.bar:
            elapsed = state.acc["seconds"] + time.perf_counter() - tick
            seen = state.acc["seen"]
            progress.set_postfix(
                loss=f"{state.acc['loss_sum'] / seen:.3f}",
                acc=f"{state.acc['correct'] / seen:.3f}",
                img_s=f"{seen * dist_info.world / max(elapsed, 1e-9):.0f}",
            )
        try:
            for callback in callbacks:
                callback(
                    {"epoch": epoch, "step": step + 1, "loss": loss_value, "global_step": state.global_step}
                )
        except KeyboardInterrupt:
            stop.requested = True
        if dist_info.enabled:  # every process stops at the same step
            stop.requested = _any_rank(stop.requested, session.device)
        if stop.requested:
            state.acc["seconds"] += time.perf_counter() - tick
            progress.close()
            if dist_info.main:
                session.save_resume(state, epoch, step + 1)
                logger.warning("\ninterrupted; resume with: ltpa train --resume %s", session.run_dir)
            raise KeyboardInterrupt
        if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < session.steps:
            state.acc["seconds"] += time.perf_counter() - tick
            tick = time.perf_counter()
            if dist_info.main:
                session.save_resume(state, epoch, step + 1)
    progress.close()
    state.acc["seconds"] += time.perf_counter() - tick
    state.step = 0


def _evaluate_epoch(session: _Session, state: TrainState) -> dict[str, Any]:
    """The epoch's metrics row: training loss and accuracy, held-out loss and accuracy, and the eval-mode
    accuracy on training images that detects a train/eval collapse."""
    cfg, data = session.cfg, session.data
    row = _epoch_row(
        cfg, state.epoch, state.global_step, session.total_steps, state.acc, session.dist_info, session.device
    )

    def metrics(images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        return _test_metrics(
            session.train_model,
            images,
            labels,
            batch_size=cfg.eval_batch_size,
            device=session.device,
            amp_dtype=session.amp_dtype,
            dist_info=session.dist_info,
        )

    test_acc, test_loss = metrics(data.test_x, data.test_y)
    row.update(test_loss=round(test_loss, 6), test_accuracy=round(test_acc, 6))
    probe = min(len(data.train_x), COLLAPSE_PROBE)
    eval_acc, _ = metrics(data.train_x[:probe], data.train_y[:probe])
    collapse = eval_collapse(row["train_accuracy"], eval_acc, data.num_classes)
    row.update(train_eval_accuracy=round(eval_acc, 6), eval_collapse=collapse)
    return row


def _end_epoch(session: _Session, state: TrainState, row: dict[str, Any]) -> None:
    """Records the epoch: resume state first (a kill after it leaves a run that --resume completes), then
    ``last``, ``best`` and the metrics files; then the epoch line."""
    cfg, epoch = session.cfg, state.epoch
    state.history.append(row)
    state.acc = _fresh_accumulators()
    if session.dist_info.main:
        _check_finite(session.model, epoch, session.run_dir)
        _save_resume(
            session.run_dir / RESUME_FILE, session.model, session.optimizer, state.meta(epoch + 1, 0)
        )
        session.checkpoint("last", epoch, row)
        if row["test_accuracy"] > state.best:
            state.best = row["test_accuracy"]
            session.checkpoint("best", epoch, row)
        session.metrics_log.rewrite(state.history)
        if session.writer is not None:
            _log_tensorboard(session.writer, row, session.model, session.data, session.device)
    probe = min(len(session.data.train_x), COLLAPSE_PROBE)
    warning = (
        f"  WARNING: eval-mode accuracy on {probe} training images is {row['train_eval_accuracy']:.4f}, near "
        f"chance, against {row['train_accuracy']:.4f} in train mode: BatchNorm statistics and dropout "
        "disagree (too narrow for its dropout?); try --model-kwarg drop_scale=0 or a larger --width"
        if row["eval_collapse"]
        else ""
    )
    if session.log:
        logger.log(
            logging.WARNING if warning else logging.INFO,
            f"epoch {epoch}/{cfg.epochs}  loss {row['train_loss']:.4f}  train acc {row['train_accuracy']:.4f}  "
            f"{cfg.eval_split} acc {row['test_accuracy']:.4f}  lr {row['lr']:.4g}  {row['images_per_s']:.0f} img/s  "
            f"{row['seconds']:.1f}s" + warning,
        )
    elif warning and session.dist_info.main:
        logger.warning(f"epoch {epoch}/{cfg.epochs}:{warning}")


COLLAPSE_PROBE = 512  # training images evaluated in eval mode at each epoch's end


def eval_collapse(train_accuracy: float, eval_accuracy: float, num_classes: int) -> bool:
    """Whether a model that learns in train mode has collapsed in eval mode: its eval-mode accuracy on
    training images is below half its train-mode accuracy and below twice chance, while the train-mode
    accuracy is above twice chance."""
    chance = 1.0 / max(num_classes, 1)
    return train_accuracy > 2 * chance and eval_accuracy < min(0.5 * train_accuracy, 2 * chance)


def _saved_epoch(run_dir: Path) -> int | None:
    try:
        epoch = json.loads((run_dir / "last.json").read_text()).get("epoch")
    except (OSError, ValueError, AttributeError):
        return None
    return epoch if isinstance(epoch, int) else None


def _kept_note(run_dir: Path) -> str:
    epoch = _saved_epoch(run_dir)
    if epoch is None:
        return f"no checkpoint had been saved in {run_dir} yet"
    return f"the last good checkpoint (epoch {epoch}) in {run_dir} is kept"


def _check_finite(model: nn.Module, epoch: int, run_dir: Path) -> None:
    """Refuses to save a state with an inf or NaN tensor (weights or BatchNorm statistics)."""
    bad = first_non_finite(model.state_dict())
    if bad is not None:
        raise LTPAError(
            f"at the end of epoch {epoch} the model's {bad} holds inf or NaN values; nothing of epoch {epoch} "
            f"was saved, {_kept_note(run_dir)}; lower --lr or check the data"
        )


def _catch_up_checkpoints(
    run_dir: Path, model: LTPAModel, cfg: TrainConfig, history: list[dict[str, Any]], classes: list[str]
) -> None:
    """After a kill between an epoch's resume state and its checkpoints: writes ``last`` (and ``best`` where
    that epoch is the best) from the resume state, which holds the epoch's final weights."""
    row = history[-1]
    epoch = row["epoch"]
    metrics = {k: row[k] for k in ("train_loss", "train_accuracy", "test_loss", "test_accuracy")}
    stems = []
    if _saved_epoch(run_dir) != epoch:
        stems.append("last")
    best_row = max(history, key=lambda r: r["test_accuracy"])  # the first of equal rows, as the loop keeps
    try:
        best_epoch = json.loads((run_dir / "best.json").read_text()).get("epoch")
    except (OSError, ValueError):
        best_epoch = None
    if best_row["epoch"] == epoch and best_epoch != epoch:
        stems.append("best")
    for stem in stems:
        save_checkpoint(
            run_dir / stem,
            model,
            epoch=epoch,
            metrics=metrics,
            config=cfg.to_dict(),
            extra={"classes": classes},
        )


def _any_rank(flag: bool, device: torch.device) -> bool:
    import torch.distributed as dist

    value = torch.tensor(float(flag), device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def _loop_meta(
    epoch: int, step: int, global_step: int, history: list[dict[str, Any]], acc: dict[str, Any]
) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "step": step,
        "global_step": global_step,
        "history": history,
        "accumulators": dict(acc),
    }


def _epoch_row(
    cfg: TrainConfig,
    epoch: int,
    global_step: int,
    total_steps: int,
    acc: dict[str, Any],
    dist_info: _Dist,
    device: torch.device,
) -> dict[str, Any]:
    stats = torch.tensor(
        [acc["loss_sum"], acc["correct"], float(acc["seen"])], dtype=torch.float64, device=device
    )
    if dist_info.enabled:
        import torch.distributed as dist

        dist.all_reduce(stats)
    loss_sum, correct, seen = stats.tolist()
    seconds = acc["seconds"]
    return {
        "epoch": epoch,
        "global_step": global_step,
        "lr": lr_at(cfg, epoch, max(global_step - 1, 0), total_steps),
        "train_loss": round(loss_sum / max(seen, 1), 6),
        "train_accuracy": round(correct / max(seen, 1), 6),
        "seconds": round(seconds, 3),
        "images_per_s": round(seen / max(seconds, 1e-9), 2),
    }


def _tensorboard(cfg: TrainConfig, run_dir: Path) -> Any:
    if not cfg.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise LTPAError(
            "--tensorboard needs the tensorboard package: pip install tensorboard (or, in an ltpa checkout, "
            "pip install -e '.[tensorboard]')"
        ) from err
    return SummaryWriter(str(run_dir / "tensorboard"))


@torch.no_grad()
def _log_tensorboard(
    writer: Any, row: dict[str, Any], model: LTPAModel, data: _Tensors, device: torch.device
) -> None:
    epoch = row["epoch"]
    for key, value in row.items():
        if key != "epoch":
            writer.add_scalar(key, value, epoch)
    was_training = model.training
    model.eval()
    x = to_unit_float(data.test_x[:8].to(device))
    out = model.forward_attention(x)
    for level, a in enumerate(out.maps):
        up = F.interpolate(a[:, None].float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
        up = normalize_minmax(up[:, 0])[:, None]
        overlay = 0.5 * x + 0.5 * up * torch.tensor([1.0, 0.2, 0.0], device=device).view(1, 3, 1, 1)
        writer.add_images(f"attention/level{level + 1}", overlay.clamp(0, 1), epoch)
    model.train(was_training)
