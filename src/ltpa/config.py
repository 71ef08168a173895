"""Training configuration: one dataclass, filled from YAML, a named preset and overrides, in that order.

Presets reproduce the recipes of "Learn To Pay Attention" (https://arxiv.org/abs/1804.02391; method §3.1-3.4),
one per row of the paper's tables: ``<model>-<dataset>``, e.g. ``vgg_att3_concat_pc-cifar100``. Each paper preset
sets every optimisation field, so it stays exact whatever the defaults below are. The ``demo`` preset is the
short CPU recipe of ``ltpa demo``.

Without a preset a run gets a recipe that trains at any length: AdamW with a linear warm-up over the first
tenth of the steps, then a cosine to 0 at the run's last step, for 10 epochs (``DEFAULT_LR`` per optimiser). The
paper's recipe (SGD at lr 1 with Torch's dampening, halved every 25 of 300 epochs) stays at chance in a run of a
few epochs (docs/training.md).

The VGG recipes keep the official Torch optimiser exactly: ``optim.sgd`` with learning rate 1, momentum 0.9
and (Torch's default) dampening 0.9, i.e. ``SGD(lr=1, momentum=0.9, dampening=0.9)`` here, which is the
standard ``lr=0.1, dampening=0`` up to the first step. Plain ``SGD(lr=1, momentum=0.9)`` would be ten times
too large (method §3.1).
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ltpa.errors import LTPAError

__all__ = [
    "DEFAULT_LR",
    "PRESETS",
    "TrainConfig",
    "command_line",
    "list_presets",
    "portable_path",
    "preset_overrides",
    "resolve_config",
]

# The learning rate of a run that gives none, per optimiser: AdamW's is the demo's; SGD's is the usual rate of
# (undampened) momentum SGD on CIFAR-sized images.
DEFAULT_LR: dict[str, float] = {"adamw": 3e-3, "sgd": 0.1}


@dataclass
class TrainConfig:
    """Everything a training run depends on; the resolved config is saved in the run folder.

    Learning rate at optimiser step ``t`` of epoch ``e`` (1-based), ``step`` schedule:
    ``lr * prod(factors of milestones <= e) / (1 + lr_decay * t)``; ``cosine`` schedule (the default): a linear
    warm-up over ``warmup`` of all steps, then a cosine from ``lr`` to 0 at the last step. ``lr`` left at None
    becomes ``DEFAULT_LR[optimizer]``.
    """

    # what
    model: str = "vgg_att2_concat_pc"
    data: str = "cluttered-digits"
    root: str | None = None
    data_options: dict[str, Any] = field(default_factory=dict)
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    width: float = 1.0
    img_size: int | None = None  # default: the dataset's
    preprocess: str | None = None  # default: the dataset's preset
    subset: int | None = None  # first N training images
    test_subset: int | None = None  # first N test images for the per-epoch evaluation
    # split of the per-epoch evaluation (and of "best"): "test", or "val" where the dataset has one, so that
    # choices made during training never see the test set
    eval_split: str = "test"
    init_from: str | None = None  # checkpoint whose weights (all but the classifier) start the run
    # keep: copy every fitting tensor, head BatchNorms included; fresh: re-initialise the whole classifier
    # block as the official CUB code does (docs/fidelity.md row 3)
    init_from_head: str = "keep"
    preset: str | None = None
    # optimiser: defaults that train in a few epochs; the paper's recipes are presets (method §3.1)
    optimizer: str = "adamw"  # adamw | sgd (the paper's presets)
    epochs: int = 10
    batch_size: int = 64
    lr: float | None = None  # None: DEFAULT_LR[optimizer]
    momentum: float = 0.9
    dampening: float = 0.0  # the VGG presets: 0.9, Torch's default (module docstring)
    nesterov: bool = False
    weight_decay: float = 5e-4
    lr_decay: float = 0.0  # Torch learningRateDecay: lr / (1 + lr_decay * step)
    lr_milestones: list[int] = field(default_factory=list)
    lr_factors: list[float] = field(default_factory=list)
    reset_momentum: bool = False  # re-create the optimiser state at every milestone (the ResNet code)
    lr_schedule: str = "cosine"  # cosine (linear warm-up, then cosine to 0) | step (milestones, the paper)
    warmup: float = 0.1  # cosine: share of all steps spent warming up
    # none (the default: digits must not be mirrored) | flip | flip-half | crop-flip | crop-flip-batch (official
    # ResNet)
    augment: str = "none"
    augment_space: str = "pixels"
    drop_last: bool = True
    label_smoothing: float = 0.0
    # run
    out: str | None = None
    seed: int = 0
    device: str = "auto"
    # auto | off | bf16 | fp16; auto: bf16 on CUDA and on CPUs with native bf16, else fp32 (ltpa.runtime)
    amp: str = "auto"
    channels_last: str = "auto"  # auto | on | off; auto: on for CUDA, the faster format measured on a CPU
    threads: int | None = None  # CPU threads; None: the idle cores (ltpa.system.choose_threads)
    compile: bool = False
    sync_bn: bool = False
    eval_batch_size: int = 500
    checkpoint_every: int = 0  # also save resume state every N steps inside an epoch (0: epoch ends only)
    tensorboard: bool = False
    quiet: bool = False
    overwrite: bool = False  # train into a non-empty --out that holds no resumable run of these settings

    def __post_init__(self) -> None:
        if self.lr is None and self.optimizer in DEFAULT_LR:
            self.lr = DEFAULT_LR[self.optimizer]

    @property
    def peak_lr(self) -> float:
        """The learning rate: ``lr``, or the optimiser's default when ``lr`` is None."""
        if self.lr is not None:
            return self.lr
        if self.optimizer not in DEFAULT_LR:
            raise LTPAError(f"unknown optimizer {self.optimizer!r}; choose {' or '.join(DEFAULT_LR)}")
        return DEFAULT_LR[self.optimizer]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _milestones(every: int, epochs: int, factor: float) -> tuple[list[int], list[float]]:
    ms = list(range(every, epochs + 1, every))
    return ms, [factor] * len(ms)


# What every paper preset pins, whatever TrainConfig's defaults are (the paper trains with step schedules).
_PAPER_PINNED: dict[str, Any] = {
    "optimizer": "sgd",
    "lr_schedule": "step",
    "warmup": 0.0,
    "label_smoothing": 0.0,
}


def _vgg_recipe(dataset: str) -> dict[str, Any]:
    common: dict[str, Any] = {
        **_PAPER_PINNED,
        "batch_size": 128,
        "momentum": 0.9,
        "dampening": 0.9,
        "nesterov": False,
        "weight_decay": 5e-4,
        "lr_decay": 1e-7,
        "augment": "flip-half",
        "drop_last": True,
        "reset_momentum": False,
    }
    if dataset in ("cifar10", "cifar100"):
        ms, fs = _milestones(25, 300, 0.5)
        return {**common, "lr": 1.0, "epochs": 300, "lr_milestones": ms, "lr_factors": fs}
    if dataset == "svhn":
        ms, fs = _milestones(25, 300, 0.5)
        return {**common, "lr": 0.1, "epochs": 300, "lr_milestones": ms, "lr_factors": fs}
    if dataset == "cub200":
        ms = [30, 60, *range(90, 301, 30)]
        fs = [2.0, 2.0] + [0.5] * (len(ms) - 2)
        return {
            **common,
            "lr": 0.1,
            "epochs": 320,
            "lr_milestones": ms,
            "lr_factors": fs,
            "img_size": 80,
            "init_from_head": "fresh",
        }
    raise KeyError(dataset)


def _resnet_recipe() -> dict[str, Any]:
    return {
        **_PAPER_PINNED,
        "batch_size": 64,
        "lr": 0.1,
        "momentum": 0.9,
        "dampening": 0.0,
        "nesterov": True,
        "weight_decay": 5e-4,
        "lr_decay": 0.0,
        "epochs": 200,
        "lr_milestones": [60, 120, 160],
        "lr_factors": [0.2, 0.2, 0.2],
        "reset_momentum": True,
        "augment": "crop-flip-batch",
        "drop_last": True,
        "preprocess": "gcn_zca",
    }


def _build_presets() -> dict[str, dict[str, Any]]:
    from ltpa.models import list_models

    presets: dict[str, dict[str, Any]] = {}
    for model in list_models():
        if model.startswith("vgg"):
            for dataset in ("cifar10", "cifar100", "svhn", "cub200"):
                cfg = {"model": model, "data": dataset, **_vgg_recipe(dataset)}
                if dataset == "cub200" and model == "vgg_pan":
                    cfg["batch_size"] = 32
                presets[f"{model}-{dataset}"] = cfg
                if model.startswith("vgg_att3") and dataset in ("cifar10", "cifar100"):
                    # the official scripts' only att3 training block: variant C at batch 64 (fidelity row 4)
                    presets[f"{model}-{dataset}-variant-c"] = {
                        **cfg,
                        "batch_size": 64,
                        "model_kwargs": {"match": "local"},
                    }
        elif model.startswith("resnet164"):
            for dataset in ("cifar10", "cifar100"):
                presets[f"{model}-{dataset}"] = {"model": model, "data": dataset, **_resnet_recipe()}
    presets["demo"] = _demo_recipe()
    return presets


def _demo_recipe() -> dict[str, Any]:
    """``ltpa demo``'s recipe for its attention model (ltpa.demo.DemoConfig), without its output settings."""
    from ltpa.demo import DemoConfig

    demo = DemoConfig()
    cfg = demo.train_config(demo.attention).to_dict()
    run_only = ("out", "device", "amp", "channels_last", "threads", "quiet", "overwrite", "preset")
    return {k: v for k, v in cfg.items() if k not in run_only}


PRESETS: dict[str, dict[str, Any]] = {}


def list_presets() -> list[str]:
    """Names of the presets: the paper's, ``<model>-<dataset>``, and ``demo``."""
    if not PRESETS:
        PRESETS.update(_build_presets())
    return sorted(PRESETS)


def preset_overrides(name: str) -> dict[str, Any]:
    """The config fields a preset sets.

    Raises:
        LTPAError: for an unknown preset, listing close matches.
    """
    from ltpa.utils import did_you_mean

    names = list_presets()
    if name not in PRESETS:
        hint = did_you_mean(name, names) or "`ltpa train --list-presets` lists them"
        raise LTPAError(f"unknown preset {name!r}; {hint}")
    return {**PRESETS[name], "preset": name}


_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}


def _check_keys(values: dict[str, Any], where: str) -> None:
    unknown = sorted(set(values) - _FIELDS)
    if unknown:
        raise LTPAError(
            f"unknown config key(s) {', '.join(unknown)} in {where}; valid keys: {', '.join(sorted(_FIELDS))}"
        )


def resolve_config(
    yaml_path: str | Path | None = None, preset: str | None = None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """A config from defaults, then a YAML file, then a preset, then explicit overrides (None values skipped)."""
    values: dict[str, Any] = {}
    if yaml_path is not None:
        values.update(load_yaml(yaml_path))
    if preset is not None:
        values.update(preset_overrides(preset))
    if overrides:
        _check_keys(overrides, "overrides")
        values.update({k: v for k, v in overrides.items() if v is not None})
    cfg = TrainConfig(**_check_types(values))
    _validate(cfg)
    return cfg


MAX_CONFIG_BYTES = 1 << 20


def load_yaml(yaml_path: str | Path) -> dict[str, Any]:
    """The config keys of a YAML file, checked for unknown keys and value types.

    Raises:
        LTPAError: a missing or malformed file, an unknown key or a value of the wrong type.
    """
    path = Path(yaml_path)
    if path.exists() and not path.is_file():  # reading a FIFO or a device would block or never end
        raise LTPAError(f"config file {path} is not a regular file; give the path of a YAML file")
    if path.is_file() and path.stat().st_size > MAX_CONFIG_BYTES:
        raise LTPAError(f"config file {path} is {path.stat().st_size:,} bytes, too large for a config")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise LTPAError(f"config file {path} not found") from None
    except yaml.YAMLError as err:
        raise LTPAError(f"config file {path} is not valid YAML: {str(err).splitlines()[0]}") from err
    if not isinstance(loaded, dict):
        raise LTPAError(f"config file {path} must hold a mapping of config keys, got {type(loaded).__name__}")
    _check_keys(loaded, str(path))
    return _check_types(loaded, f" in {path}")


_HINTS = typing.get_type_hints(TrainConfig)


def _type_words(hint: Any) -> str:
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin is list:
        return f"a list of {_type_words(args[0])}s"
    if origin is dict:
        return "a mapping of KEY: VALUE"
    if args and type(None) in args:  # X | None
        return " or ".join([_type_words(a) for a in args if a is not type(None)] + ["null"])
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


def _coerce(value: Any, hint: Any) -> tuple[bool, Any]:
    """``(ok, value)``: whether ``value`` is of type ``hint``; numbers as ``float``, YAML 1.1 strings such as
    ``1e-3`` read as the float they spell."""
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if args and type(None) in args and origin is not list and origin is not dict:
        if value is None:
            return True, None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner)
    if origin is list:
        if not isinstance(value, list):
            return False, value
        items = [_coerce(v, args[0]) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value), value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str):
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if hint is str:
        return isinstance(value, str), value
    return True, value


def _check_types(values: dict[str, Any], where: str = "") -> dict[str, Any]:
    checked: dict[str, Any] = {}
    for key, value in values.items():
        hint = _HINTS.get(key)
        if hint is None:
            checked[key] = value
            continue
        ok, value = _coerce(value, hint)
        if not ok:
            raise LTPAError(f"config key {key}{where}: expected {_type_words(hint)}, got {value!r}")
        checked[key] = value
    return checked


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _validate(cfg: TrainConfig) -> None:
    _check_types(cfg.to_dict())
    for key in ("subset", "test_subset", "img_size"):
        value = getattr(cfg, key)
        if value is not None and value < 1:
            raise LTPAError(f"{key} must be at least 1 (got {value}); omit it for the default")
    if cfg.checkpoint_every < 0 or cfg.eval_batch_size < 1:
        raise LTPAError("checkpoint_every must be >= 0 and eval_batch_size >= 1")
    if not _DEVICE.fullmatch(cfg.device):
        raise LTPAError(f"unknown device {cfg.device!r}; choose auto, cpu, cuda, cuda:N or mps")
    if not 0 <= cfg.warmup < 1:
        raise LTPAError(f"warmup must be a share of the steps in [0, 1) (got {cfg.warmup})")
    if len(cfg.lr_milestones) != len(cfg.lr_factors):
        raise LTPAError("lr_milestones and lr_factors must have the same length")
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise LTPAError(f"epochs and batch_size must be positive (got {cfg.epochs}, {cfg.batch_size})")
    if cfg.augment not in ("none", "flip", "flip-half", "crop-flip", "crop-flip-batch"):
        raise LTPAError(
            f"unknown augment {cfg.augment!r}; choose none, flip, flip-half, crop-flip or crop-flip-batch"
        )
    if cfg.init_from_head not in ("keep", "fresh"):
        raise LTPAError(f"unknown init_from_head {cfg.init_from_head!r}; choose keep or fresh")
    if cfg.augment_space not in ("pixels", "normalized"):
        raise LTPAError(f"unknown augment_space {cfg.augment_space!r}; choose pixels or normalized")
    if cfg.optimizer not in ("sgd", "adamw"):
        raise LTPAError(f"unknown optimizer {cfg.optimizer!r}; choose sgd or adamw")
    if cfg.lr_schedule not in ("step", "cosine"):
        raise LTPAError(f"unknown lr_schedule {cfg.lr_schedule!r}; choose step or cosine")
    if cfg.amp not in ("auto", "off", "bf16", "fp16"):
        raise LTPAError(f"unknown amp {cfg.amp!r}; choose auto, off, bf16 or fp16")
    if cfg.channels_last not in ("auto", "on", "off"):
        raise LTPAError(f"unknown channels_last {cfg.channels_last!r}; choose auto, on or off")
    if cfg.threads is not None and cfg.threads < 1:
        raise LTPAError(f"threads must be at least 1 (got {cfg.threads}); omit it to use the idle cores")
    for key, value in cfg.to_dict().items():  # inf or nan passes every comparison below
        numbers = value if isinstance(value, list) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):
            raise LTPAError(f"{key} must be a finite number, got {value!r}")
    if cfg.peak_lr <= 0 or not 0 < cfg.width <= 4:
        raise LTPAError(f"lr must be positive and width in (0, 4], got lr {cfg.lr!r} and width {cfg.width!r}")
    if not 0 <= cfg.seed < 2**63:
        raise LTPAError(f"seed must be a whole number in 0..2**63-1, got {cfg.seed}")
    if cfg.eval_split == "train" or not cfg.eval_split:
        raise LTPAError(f"eval_split must be a held-out split such as test or val, got {cfg.eval_split!r}")


# Settings that say where and how a run goes, not what it computes: a command that reproduces a run leaves them
# out (the thread count and memory format change results only in the last bits).
_RUN_ONLY = (
    "out", "device", "quiet", "overwrite", "threads", "channels_last", "compile", "tensorboard",
    "checkpoint_every", "eval_batch_size", "sync_bn", "preset",
)  # fmt: skip


def portable_path(path: str | None) -> str | None:
    """``path`` as it can be shown to someone else: relative to the working folder when inside it, ``~/...``
    under the home folder, else only its last part (an absolute path of this machine means nothing
    elsewhere)."""
    if not path:
        return path
    here, home, full = Path.cwd().resolve(), Path.home().resolve(), Path(path).expanduser()
    if not full.is_absolute():
        return str(Path(path))
    full = full.resolve()
    if full.is_relative_to(here):
        return str(full.relative_to(here)) or "."
    if full.is_relative_to(home):
        return str(Path("~") / full.relative_to(home))
    return full.name or str(full)


def _flag_value(value: Any) -> str:
    """``value`` as the YAML text ``--model-kwarg``/``--data-option`` read back to the same value."""
    if isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=1_000_000).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def command_line(config: dict[str, Any]) -> str:
    """The ``ltpa train`` command that trains ``config`` (a saved TrainConfig as a dict) again: its preset,
    then every setting that differs from the preset or the defaults, with paths made portable
    (:func:`portable_path`). Where and how the run went (``out``, ``device``, threads...) is left out."""
    import shlex

    preset = config.get("preset")
    try:
        base = resolve_config(preset=preset).to_dict() if preset else TrainConfig().to_dict()
    except LTPAError:  # a preset this version no longer has: every setting then
        preset, base = None, TrainConfig().to_dict()
    words = ["ltpa", "train"]
    if preset:
        words += ["--preset", str(preset)]
    else:  # what to train, always said
        words += [
            "--model",
            str(config.get("model", base["model"])),
            "--data",
            str(config.get("data", base["data"])),
        ]
    for key, value in config.items():
        if key in _RUN_ONLY or key not in _FIELDS or value is None or value == base.get(key):
            continue
        if key in ("model", "data") and not preset:
            continue
        flag = "--" + key.replace("_", "-")
        if key in ("root", "init_from"):
            words += [flag, str(portable_path(value))]
        elif key in ("model_kwargs", "data_options"):
            option = "--model-kwarg" if key == "model_kwargs" else "--data-option"
            for name, item in value.items():  # all of them: the flags replace the preset's mapping
                words += [option, f"{name}={_flag_value(item)}"]
        elif isinstance(value, bool):
            words.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, list):
            words += [flag, *(str(v) for v in value)]
        else:
            words += [flag, str(value)]
    return " ".join(shlex.quote(w) for w in words)
