"""Training: the paper's recipes with exact optimiser semantics, exact resume, and DDP through torchrun.

Paper: "Learn To Pay Attention", https://arxiv.org/abs/1804.02391 (method §3).

``fit(config)`` trains one model and writes a run folder::

    config.yaml        the resolved TrainConfig
    run.json           git commit, command, versions, device, world size
    metrics.csv/.jsonl per-epoch loss, accuracy, learning rate, seconds, images/s
    last.*, best.*     checkpoints (safetensors weights + JSON sidecar; best = highest test accuracy)
    resume.safetensors model, optimiser and loop state for ``resume=`` (metadata inside, one atomic file)

Every step's randomness (batch order, augmentation, dropout) is a function of (seed, epoch, step), so a run
resumed from any saved state ends with the same weights and metrics as an uninterrupted one on the CPU.
"""

from __future__ import annotations

import csv
import json
import math
import os
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
from safetensors.torch import load_file, save_file
from torch import nn

from ltpa.checkpoint import atomic_write, save_checkpoint
from ltpa.config import TrainConfig
from ltpa.errors import LTPAError
from ltpa.models import LTPAModel, create_model
from ltpa.runtime import autocast, choose_channels_last, resolve_precision
from ltpa.system import configure_threads

__all__ = ["FitResult", "build_model", "fit", "lr_at", "make_optimizer"]

RESUME_FILE = "resume.safetensors"


@dataclass
class FitResult:
    """What :func:`fit` returns: the run folder, the trained model (unwrapped, eval mode) and its history."""

    run_dir: Path
    model: LTPAModel
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}

    @property
    def best_accuracy(self) -> float:
        return max((row["test_accuracy"] for row in self.history), default=float("nan"))


# ----------------------------------------------------------------------------------------------- schedule


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
            return cfg.lr * (0.04 + 0.96 * step / warm)
        progress = (step - warm) / max(1, total_steps - warm)
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    lr = cfg.lr
    for milestone, factor in zip(cfg.lr_milestones, cfg.lr_factors):
        if epoch >= milestone:
            lr *= factor
    return lr / (1.0 + cfg.lr_decay * step)


def _step_seed(seed: int, epoch: int, step: int) -> int:
    return (seed * 1_000_003 + epoch * 100_003 + step * 7_919) % (2**63 - 1)


# ----------------------------------------------------------------------------------------------- devices


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

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
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return _Dist(rank=rank, world=world, local_rank=local_rank)


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


def _load_data(cfg: TrainConfig, img_size: int, progress: bool) -> _Tensors:
    from ltpa.data import build_dataset, load_tensors

    train = build_dataset(cfg.data, root=cfg.root, split="train", **cfg.data_options)
    test = build_dataset(cfg.data, root=cfg.root, split="test", **cfg.data_options)
    tx, ty, _ = load_tensors(train, img_size, limit=cfg.subset, progress=progress)
    vx, vy, _ = load_tensors(test, img_size, limit=cfg.test_subset, progress=progress)
    if len(tx) < cfg.batch_size and cfg.drop_last:
        raise LTPAError(
            f"{len(tx)} training images are fewer than one batch of {cfg.batch_size}; lower --batch-size or raise --subset"
        )
    return _Tensors(tx, ty.long(), vx, vy.long(), int(train.num_classes), list(train.classes))


def _augment(cfg: TrainConfig, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    from ltpa.data.augment import random_crop, random_flip

    if cfg.augment == "flip":
        x = random_flip(x, gen)
    elif cfg.augment == "flip-half":
        x = random_flip(x, gen, mode="half")
    elif cfg.augment == "crop-flip":
        x = random_flip(random_crop(x, 4, gen), gen)
    return x


def _to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


# ----------------------------------------------------------------------------------------------- model


def build_model(cfg: TrainConfig, num_classes: int, img_size: int) -> LTPAModel:
    """The model of ``cfg`` for ``num_classes`` classes at ``img_size``, with the dataset's preset."""
    from ltpa.data import dataset_info

    kwargs = dict(cfg.model_kwargs)
    kwargs.setdefault("num_classes", num_classes)
    kwargs.setdefault("img_size", img_size)
    # Backbones from timm/torchvision bring the normalisation their (ImageNet) weights expect.
    backbone = cfg.model.startswith(("timm/", "tv/"))
    preprocess = cfg.preprocess or ("backbone" if backbone else dataset_info(cfg.data).preprocess)
    kwargs.setdefault("preprocess", preprocess)
    if cfg.width != 1.0:
        kwargs.setdefault("width", cfg.width)
    try:
        return create_model(cfg.model, **kwargs)
    except TypeError as err:
        raise LTPAError(f"model {cfg.model} does not take these options: {err}") from err


def make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD with the config's momentum, dampening, Nesterov and weight decay (on every parameter, as Torch),
    or AdamW (decoupled weight decay) for short runs."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        model.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        dampening=cfg.dampening,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
    )


def _init_from(model: LTPAModel, path: str) -> int:
    """Loads every weight of the checkpoint at ``path`` whose name and shape fit, except the classifier and
    the input normalisation (the CUB recipe, method §2.3). Returns the number of tensors loaded."""
    from ltpa.checkpoint import checkpoint_paths, resolve_checkpoint

    weights, _ = checkpoint_paths(resolve_checkpoint(path))
    source = load_file(str(weights))
    own = model.state_dict()
    loaded = {
        k: v
        for k, v in source.items()
        if k in own and own[k].shape == v.shape and not k.startswith("preprocess.")
    }
    trunk = [k for k in own if not k.startswith("preprocess.")]
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
        x = _to_float(images[sel].to(device, non_blocking=True))
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
        probe.write_bytes(b"ok")
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


def _default_out(cfg: TrainConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{cfg.model.replace('/', '_')}-{cfg.data}-s{cfg.seed}-{stamp}"


class _MetricsLog:
    def __init__(self, run_dir: Path) -> None:
        self.csv = run_dir / "metrics.csv"
        self.jsonl = run_dir / "metrics.jsonl"

    def rewrite(self, history: list[dict[str, Any]]) -> None:
        if not history:
            for path in (self.csv, self.jsonl):
                path.unlink(missing_ok=True)
            return
        fields = list(history[0])

        def write_csv(tmp: str) -> None:
            with open(tmp, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=fields)
                writer.writeheader()
                writer.writerows(history)

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
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"ltpa_state": json.dumps(meta)}))


def _load_resume(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {})["ltpa_state"])
        tensors = load_file(str(path))
    except Exception as err:  # safetensors' own error types for truncated or foreign files
        raise LTPAError(f"cannot read resume state {path}: {err}") from err
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for pid, scalars in meta.pop("optim_scalars").items():
        state.setdefault(int(pid), {}).update(scalars)
    optimizer.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
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
) -> FitResult:
    """Trains ``cfg.model`` on ``cfg.data`` and writes the run folder (see the module docstring).

    Args:
        cfg: the resolved config (``ltpa.config.resolve_config``).
        resume: a run folder with ``resume.safetensors``: training continues where it stopped, with the config
            saved there (``cfg`` is then ignored except for ``quiet`` and ``device``).
        callbacks: called after every optimiser step with ``{"epoch", "step", "loss", "global_step"}``.

    Returns:
        A :class:`FitResult`.

    Raises:
        LTPAError: bad config, missing data, unwritable output, or a non-finite loss (named by epoch and step;
            the last good checkpoint stays).
        KeyboardInterrupt: after saving resume state, on Ctrl-C or SIGTERM.
    """
    resume_meta: dict[str, Any] | None = None
    if resume is not None:
        run_dir = Path(resume)
        state_path = run_dir / RESUME_FILE
        if not state_path.is_file():
            raise LTPAError(
                f"nothing to resume in {run_dir}: no {RESUME_FILE} (was it made by `ltpa train`?)"
            )
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        quiet, device_choice = cfg.quiet, cfg.device
        cfg = TrainConfig(**saved)
        cfg.quiet, cfg.device = quiet, device_choice
    else:
        run_dir = Path(cfg.out) if cfg.out else _default_out(cfg)
        if (run_dir / RESUME_FILE).exists() or (run_dir / "last.json").exists():
            raise LTPAError(
                f"{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --out"
            )

    dist_info = _init_distributed(cfg.device)
    device = _resolve_device(cfg, dist_info)
    runtime: dict[str, Any] = {}
    if device.type == "cpu":
        threads = configure_threads(cfg.threads)
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

    from ltpa.data import dataset_info

    info = dataset_info(cfg.data)
    img_size = cfg.img_size or info.img_size
    data = _load_data(cfg, img_size, progress=bar)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data.num_classes, img_size)
    if not model.preprocess.fitted:
        model.preprocess.fit(data.train_x)
    if cfg.init_from and resume is None:
        count = _init_from(model, cfg.init_from)
        if log:
            print(f"initialised {count} tensors from {cfg.init_from}", file=sys.stderr)
    n_params = sum(p.numel() for p in model.parameters())
    if dist_info.main:
        _preflight(run_dir, need_bytes=n_params * 4 * 5 + (64 << 20))

    model.to(device)
    channels_last, runtime["channels_last"] = choose_channels_last(
        cfg.channels_last,
        model,
        _to_float(data.train_x[: cfg.batch_size].to(device)),
        data.train_y[: cfg.batch_size].to(device),
        device,
        amp_dtype,
        cache_key=(cfg.model, cfg.width, img_size, repr(cfg.model_kwargs), cfg.amp, torch.get_num_threads()),
    )
    cfg.channels_last = "on" if channels_last else "off"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, model)
    history: list[dict[str, Any]] = []
    start_epoch, start_step, global_step = 1, 0, 0
    acc_state = {"loss_sum": 0.0, "correct": 0.0, "seen": 0, "seconds": 0.0}
    if resume is not None:
        resume_meta = _load_resume(run_dir / RESUME_FILE, model, optimizer)
        start_epoch, start_step = resume_meta["epoch"], resume_meta["step"]
        global_step = resume_meta["global_step"]
        history = resume_meta["history"]
        acc_state = resume_meta["accumulators"]

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
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

    metrics_log = _MetricsLog(run_dir)
    if dist_info.main:
        atomic_write(
            run_dir / "config.yaml",
            lambda tmp: Path(tmp).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False)),
        )
        run_info = {
            "git_commit": _git_commit(),
            "argv": sys.argv,
            "torch": torch.__version__,
            "device": str(device),
            "world_size": dist_info.world,
            "params": n_params,
            "train_images": len(data.train_x),
            "test_images": len(data.test_x),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "resumed_from_epoch": start_epoch if resume is not None else None,
            "runtime": {"threads": cfg.threads, "amp": cfg.amp, "channels_last": cfg.channels_last},
            "runtime_reasons": runtime,
        }
        atomic_write(
            run_dir / "run.json", lambda tmp: Path(tmp).write_text(json.dumps(run_info, indent=2) + "\n")
        )
        metrics_log.rewrite(history)
    writer = _tensorboard(cfg, run_dir) if dist_info.main else None

    train_x = data.train_x.to(device)
    train_y = data.train_y.to(device)
    n = len(train_x)
    per_rank = cfg.batch_size // dist_info.world
    steps = n // cfg.batch_size if cfg.drop_last else math.ceil(n / cfg.batch_size)
    total_steps = steps * cfg.epochs
    best = max((r["test_accuracy"] for r in history), default=-1.0)
    if log:
        print(
            f"training {cfg.model} ({n_params:,} parameters) on {cfg.data}: {n} images, {steps} steps/epoch, "
            f"{cfg.epochs} epochs, device {device}"
            + (f" x{dist_info.world}" if dist_info.enabled else "")
            + f" ({_runtime_summary(cfg, device)})"
            + f" -> {run_dir}",
            file=sys.stderr,
        )

    with _StopFlag() as stop:
        try:
            for epoch in range(start_epoch, cfg.epochs + 1):
                if cfg.reset_momentum and epoch in cfg.lr_milestones and start_step == 0:
                    optimizer.state.clear()
                perm = torch.randperm(
                    n, generator=torch.Generator().manual_seed(_step_seed(cfg.seed, epoch, -1))
                )
                train_model.train()
                progress = _progress(steps, start_step, f"epoch {epoch}/{cfg.epochs}", bar)
                tick = time.perf_counter()
                for step in range(start_step, steps):
                    seed = _step_seed(cfg.seed, epoch, step)
                    torch.manual_seed(seed)
                    gen = torch.Generator().manual_seed(seed)
                    sel = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                    sel = sel[dist_info.rank * per_rank : (dist_info.rank + 1) * per_rank].to(device)
                    x = _to_float(_augment(cfg, train_x[sel], gen))
                    y = train_y[sel]
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    with autocast(device, amp_dtype):
                        logits = train_model(x)
                        loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                    loss_value = float(loss.detach())
                    if not math.isfinite(loss_value):
                        raise LTPAError(
                            f"loss became {loss_value} at epoch {epoch} step {step + 1}; training stopped and "
                            f"the last good checkpoint in {run_dir} is kept; lower --lr or check the data"
                        )
                    for group in optimizer.param_groups:
                        group["lr"] = lr_at(cfg, epoch, global_step, total_steps)
                    optimizer.zero_grad(set_to_none=True)
                    if scaler is not None:
                        scaler.scale(loss).backward()
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        loss.backward()
                        optimizer.step()
                    global_step += 1
                    acc_state["loss_sum"] += loss_value * len(y)
                    acc_state["correct"] += float((logits.argmax(1) == y).sum())
                    acc_state["seen"] += len(y)
                    progress.update(1)
                    if bar:
                        elapsed = acc_state["seconds"] + time.perf_counter() - tick
                        progress.set_postfix(
                            loss=f"{acc_state['loss_sum'] / acc_state['seen']:.3f}",
                            acc=f"{acc_state['correct'] / acc_state['seen']:.3f}",
                            img_s=f"{acc_state['seen'] * dist_info.world / max(elapsed, 1e-9):.0f}",
                        )
                    try:
                        for callback in callbacks:
                            callback(
                                {
                                    "epoch": epoch,
                                    "step": step + 1,
                                    "loss": loss_value,
                                    "global_step": global_step,
                                }
                            )
                    except KeyboardInterrupt:
                        stop.requested = True
                    if dist_info.enabled:  # every process stops at the same step
                        stop.requested = _any_rank(stop.requested, device)
                    if stop.requested:
                        acc_state["seconds"] += time.perf_counter() - tick
                        progress.close()
                        if dist_info.main:
                            _save_resume(
                                run_dir / RESUME_FILE,
                                model,
                                optimizer,
                                _loop_meta(epoch, step + 1, global_step, history, acc_state),
                            )
                            print(
                                f"\ninterrupted; resume with: ltpa train --resume {run_dir}", file=sys.stderr
                            )
                        raise KeyboardInterrupt
                    if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < steps:
                        acc_state["seconds"] += time.perf_counter() - tick
                        tick = time.perf_counter()
                        if dist_info.main:
                            _save_resume(
                                run_dir / RESUME_FILE,
                                model,
                                optimizer,
                                _loop_meta(epoch, step + 1, global_step, history, acc_state),
                            )
                progress.close()
                acc_state["seconds"] += time.perf_counter() - tick
                start_step = 0
                row = _epoch_row(cfg, epoch, global_step, total_steps, acc_state, dist_info, device)
                test_acc, test_loss = _test_metrics(
                    train_model,
                    data.test_x,
                    data.test_y,
                    batch_size=cfg.eval_batch_size,
                    device=device,
                    amp_dtype=amp_dtype,
                    dist_info=dist_info,
                )
                row.update(test_loss=round(test_loss, 6), test_accuracy=round(test_acc, 6))
                history.append(row)
                acc_state = {"loss_sum": 0.0, "correct": 0.0, "seen": 0, "seconds": 0.0}
                if dist_info.main:
                    metrics = {
                        k: row[k] for k in ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
                    }
                    save_checkpoint(
                        run_dir / "last",
                        model,
                        epoch=epoch,
                        metrics=metrics,
                        config=cfg.to_dict(),
                        extra={"classes": data.classes},
                    )
                    if test_acc > best:
                        best = test_acc
                        save_checkpoint(
                            run_dir / "best",
                            model,
                            epoch=epoch,
                            metrics=metrics,
                            config=cfg.to_dict(),
                            extra={"classes": data.classes},
                        )
                    _save_resume(
                        run_dir / RESUME_FILE,
                        model,
                        optimizer,
                        _loop_meta(epoch + 1, 0, global_step, history, acc_state),
                    )
                    metrics_log.rewrite(history)
                    if writer is not None:
                        _log_tensorboard(writer, row, model, data, device)
                if log:
                    print(
                        f"epoch {epoch}/{cfg.epochs}  loss {row['train_loss']:.4f}  train acc {row['train_accuracy']:.4f}  "
                        f"test acc {test_acc:.4f}  lr {row['lr']:.4g}  {row['images_per_s']:.0f} img/s  {row['seconds']:.1f}s",
                        file=sys.stderr,
                    )
                if stop.requested:  # arrived during evaluation or saving: the epoch's state is already saved
                    print(f"interrupted; resume with: ltpa train --resume {run_dir}", file=sys.stderr)
                    raise KeyboardInterrupt
        finally:
            if writer is not None:
                writer.close()
    model.eval()
    return FitResult(run_dir=run_dir, model=model, history=history)


def _runtime_summary(cfg: TrainConfig, device: torch.device) -> str:
    """E.g. ``"2 threads, bf16 autocast, channels-last"``: what the resolved runtime settings mean."""
    parts = [f"{cfg.threads} threads"] if device.type == "cpu" else []
    parts.append("fp32" if cfg.amp == "off" else f"{cfg.amp} autocast")
    parts.append("channels-last" if cfg.channels_last == "on" else "contiguous")
    return ", ".join(parts)


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
            "--tensorboard needs the tensorboard package: pip install 'ltpa[tensorboard]'"
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
    x = _to_float(data.test_x[:8].to(device))
    out = model.forward_attention(x)
    for level, a in enumerate(out.maps):
        up = F.interpolate(a[:, None].float(), size=x.shape[-2:], mode="bilinear", align_corners=False)
        lo = up.amin(dim=(2, 3), keepdim=True)
        hi = up.amax(dim=(2, 3), keepdim=True)
        up = (up - lo) / (hi - lo).clamp_min(1e-12)
        overlay = 0.5 * x + 0.5 * up * torch.tensor([1.0, 0.2, 0.0], device=device).view(1, 3, 1, 1)
        writer.add_images(f"attention/level{level + 1}", overlay.clamp(0, 1), epoch)
    model.train(was_training)
