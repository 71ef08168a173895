"""``ltpa train``: train any registered model on any dataset, or one row of the paper's tables (--preset)."""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import Any

import yaml

from ltpa.errors import LTPAError


def _key_value(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as err:  # e.g. a YAML tag: values are plain data (numbers, strings, lists)
        first = str(err).splitlines()[0]
        raise argparse.ArgumentTypeError(
            f"value of {key.strip()!r} is not plain YAML data ({first})"
        ) from err
    return key.strip().replace("-", "_"), parsed


def add_data_option_arg(group: argparse._ArgumentGroup | argparse.ArgumentParser, help: str) -> None:
    """``--data-option KEY=VALUE`` (repeatable; values parsed as YAML), collected as a list of pairs."""
    group.add_argument(
        "--data-option", action="append", type=_key_value, default=[], metavar="KEY=VALUE", help=help
    )


THREADS_HELP = (
    "CPU threads (default: the cores other processes leave idle, measured at start; $LTPA_THREADS or "
    "$OMP_NUM_THREADS also set it). Threads sharing a core with another busy process make every step wait "
    "for the slowest one (measurements: docs/benchmarks.md). The count changes results in the last bits; "
    "--resume reuses it"
)


def add_speed_args(group: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    """``--amp``, ``--channels-last`` and ``--threads``: how training uses the device (``ltpa.runtime``)."""
    group.add_argument(
        "--amp",
        choices=["auto", "off", "bf16", "fp16"],
        help="mixed precision (default auto: bf16 autocast on CUDA and on CPUs that compute bf16 natively, "
        "fp32 on other CPUs, where emulated bf16 is slower)",
    )
    group.add_argument(
        "--channels-last",
        choices=["auto", "on", "off"],
        help="memory format (default auto: on for CUDA; on a CPU the faster one, timed on a few steps)",
    )
    group.add_argument("--threads", type=int, metavar="N", help=THREADS_HELP)


def add_train_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "train",
        allow_abbrev=False,
        help="train a model (any model and dataset, or a paper preset)",
        description=(
            "Train a model. Settings come from defaults, then --config YAML, then --preset, then the flags below. "
            "Without a preset: AdamW, warm-up then cosine to the last step, 10 epochs, a recipe that trains at "
            "any length; --preset demo is ltpa demo's recipe, the paper's rows are presets too. "
            "Multi-process: torchrun --nproc-per-node N -m ltpa train ..."
        ),
    )
    what = parser.add_argument_group("what to train")
    what.add_argument(
        "--preset",
        help="a paper table row, e.g. vgg_att3_concat_pc-cifar100 (see --list-presets), or demo (ltpa demo's "
        "short AdamW recipe)",
    )
    what.add_argument("--list-presets", action="store_true", help="list the presets and exit")
    what.add_argument("--config", help="YAML file of config keys (see --dry-run for the full list)")
    what.add_argument("--model", help="registered model name (`ltpa models`)")
    what.add_argument("--data", help="dataset name (`ltpa data`)")
    what.add_argument("--root", help="dataset folder (default: the dataset's usual place)")
    what.add_argument("--subset", type=int, help="train on the first N training images")
    what.add_argument("--test-subset", type=int, help="evaluate on the first N test images each epoch")
    what.add_argument(
        "--eval-split",
        help="split evaluated each epoch and used to pick best (default: test; val on cluttered data with "
        "--data-option holdout=N, or on an image folder with a val/ folder)",
    )
    what.add_argument(
        "--pretrained",
        action="store_true",
        help="start a timm/ or tv/ backbone from its ImageNet weights, read from this machine's cache (nothing is "
        "downloaded; the error says how to fetch them once)",
    )
    what.add_argument(
        "--width",
        type=float,
        help="channel width multiplier of ltpa's vgg and resnet164 models (e.g. 0.125 on a CPU)",
    )
    what.add_argument("--img-size", type=int, help="input side (default: the dataset's)")
    what.add_argument("--preprocess", help="input normalisation preset (default: the dataset's)")
    what.add_argument("--init-from", help="checkpoint to initialise all but the classifier from (CUB recipe)")
    what.add_argument(
        "--init-from-head",
        choices=["keep", "fresh"],
        help="with --init-from: keep copies the fitting classifier tensors (head BatchNorms too); fresh "
        "re-initialises the whole classifier block, as the official CUB code (the cub200 presets' choice)",
    )
    what.add_argument(
        "--model-kwarg",
        action="append",
        type=_key_value,
        default=[],
        metavar="KEY=VALUE",
        help="extra model argument, e.g. compatibility=add or grad_averaging=true (repeatable)",
    )
    add_data_option_arg(what, "extra dataset option, e.g. num_train=5000 (repeatable)")
    optim = parser.add_argument_group("optimisation")
    optim.add_argument(
        "--epochs", type=int, help="epochs to train (default 10; the paper's presets 300, 320 or 200)"
    )
    optim.add_argument("--batch-size", type=int, help="images per optimiser step (default 64)")
    optim.add_argument(
        "--optimizer",
        choices=["adamw", "sgd"],
        help="adamw (default) or sgd (the paper's presets, with Torch's dampened momentum in the VGG ones)",
    )
    optim.add_argument(
        "--lr",
        type=float,
        help="peak learning rate (default 3e-3 with adamw, 0.1 with sgd; the presets set their own)",
    )
    optim.add_argument(
        "--lr-schedule",
        choices=["cosine", "step"],
        help="cosine (default): linear warm-up over --warmup of all steps, then a cosine to 0 at the run's "
        "last step, whatever --epochs is; step: the paper's milestones (--lr-milestones, --lr-factors)",
    )
    optim.add_argument(
        "--warmup",
        type=float,
        metavar="SHARE",
        help="cosine: share of all steps spent warming up (default 0.1)",
    )
    optim.add_argument(
        "--augment",
        choices=["none", "flip", "flip-half", "crop-flip", "crop-flip-batch"],
        help="default none (digits must not be mirrored; try flip on photographs); flip-half: exactly half "
        "of each batch (VGG presets); crop-flip-batch: one crop offset per batch and a half-batch flip (the "
        "official ResNet code); crop-flip: per-image crops and coin-flip flips",
    )
    optim.add_argument(
        "--augment-space",
        choices=["pixels", "normalized"],
        help="augment the [0, 1] images (default) or the normalised ones, as the official code did",
    )
    optim.add_argument("--seed", type=int)
    run = parser.add_argument_group("run")
    run.add_argument("--out", help="run folder (default runs/<model>-<data>-s<seed>-<time>)")
    run.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run from its folder, with its saved settings; only --epochs (to extend "
        "the run), --device and --quiet may differ, any other flag that differs is refused",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        default=None,
        help="train into a non-empty --out that holds no run to continue: ltpa's own files there are replaced, "
        "other files are kept (without it such a folder is refused)",
    )
    run.add_argument("--device", help="auto (default), cpu, cuda, cuda:1")
    add_speed_args(run)
    run.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    run.add_argument("--sync-bn", action="store_true", default=None, help="SyncBatchNorm under DDP (CUDA)")
    run.add_argument("--checkpoint-every", type=int, help="also save resume state every N steps")
    run.add_argument("--tensorboard", action="store_true", default=None, help="log to <out>/tensorboard")
    run.add_argument("--quiet", action="store_true", default=None, help="no progress or epoch lines")
    run.add_argument(
        "--dry-run", action="store_true", help="print the resolved config, build model and optimiser, exit"
    )
    add_config_flags(parser.add_argument_group("more config keys (each a TrainConfig field)"), parser)
    parser.set_defaults(func=train_command)
    return parser


# TrainConfig fields given in other forms: model_kwargs and data_options by their repeatable KEY=VALUE flags,
# preset by --preset.
_NOT_FLAGS = ("model_kwargs", "data_options", "preset")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_flags(group: argparse._ArgumentGroup, parser: argparse.ArgumentParser) -> None:
    """A flag for every :class:`ltpa.config.TrainConfig` field that has none above, typed from the field, so
    that every setting of a run can be given on the command line (``--weight-decay``, ``--lr-schedule``...)."""
    import dataclasses
    import typing

    from ltpa.config import TrainConfig

    taken = {opt for action in parser._actions for opt in action.option_strings}
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in _NOT_FLAGS or _flag(f.name) in taken:
            continue
        hint = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc,operator]
        text = f"config key {f.name} (default {default!r})"
        args = typing.get_args(hint)
        if hint is bool:
            group.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, default=None, help=text)
        elif typing.get_origin(hint) is list:
            group.add_argument(_flag(f.name), nargs="*", type=args[0], metavar="X", default=None, help=text)
        else:
            kind = next((a for a in args if a is not type(None)), hint) if args else hint
            group.add_argument(_flag(f.name), type=kind, default=None, help=text)


def config_flag_keys() -> list[str]:
    """Every TrainConfig field that has a flag: all of them but :data:`_NOT_FLAGS`."""
    import dataclasses

    from ltpa.config import TrainConfig

    return [f.name for f in dataclasses.fields(TrainConfig) if f.name not in _NOT_FLAGS]


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config values the command line gives (None where a flag is absent)."""
    overrides: dict[str, Any] = {key: getattr(args, key) for key in config_flag_keys()}
    if args.model_kwarg or args.pretrained:
        overrides["model_kwargs"] = dict(args.model_kwarg) | ({"pretrained": True} if args.pretrained else {})
    if args.data_option:
        overrides["data_options"] = dict(args.data_option)
    return overrides


def config_from_args(args: argparse.Namespace) -> Any:
    """The TrainConfig of a parsed ``ltpa train`` command line (defaults, --config, --preset, flags)."""
    from ltpa.config import resolve_config

    return resolve_config(args.config, args.preset, flag_overrides(args))


def train_command(args: argparse.Namespace) -> int:
    from ltpa.config import TrainConfig, list_presets, load_yaml, preset_overrides

    if args.list_presets:
        for name in list_presets():
            print(name)
        return 0
    if not (args.model or args.preset or args.config or args.resume):
        raise LTPAError(
            "say what to train: --model NAME (`ltpa models`), --preset NAME (--list-presets), "
            "--config FILE or --resume RUN_DIR"
        )
    overrides = flag_overrides(args)
    from ltpa.train import fit

    if args.resume is not None:
        if args.dry_run:
            raise LTPAError("--dry-run does not apply to --resume; read the run's config.yaml instead")
        # everything given on the command line, to be checked against the run's saved settings
        given: dict[str, Any] = load_yaml(args.config) if args.config else {}
        if args.preset:
            given.update(preset_overrides(args.preset))
        given.update({k: v for k, v in overrides.items() if v is not None})
        result = fit(TrainConfig(quiet=bool(args.quiet)), resume=args.resume, changes=given)
    else:
        cfg = config_from_args(args)
        if args.dry_run:
            return _dry_run(cfg)
        result = fit(cfg)
    final = result.final
    if final:
        print(
            f"{result.run_dir}: epoch {final['epoch']}  {result.eval_split} accuracy {final['test_accuracy']:.4f}  "
            f"(best {result.best_accuracy:.4f})"
        )
    return 0


def _dry_run(cfg: Any) -> int:
    import torch

    from ltpa.data import build_dataset, dataset_info
    from ltpa.train import build_model, lr_at, make_optimizer

    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip())
    info = dataset_info(cfg.data)
    img_size = cfg.img_size or info.img_size
    num_classes = info.num_classes
    try:
        train = build_dataset(cfg.data, root=cfg.root, split="train", **cfg.data_options)
        num_classes = train.num_classes
        data_line = f"present, {len(train)} training images, {num_classes} classes"
    except LTPAError as err:
        data_line = f"not present here ({err})"
    if num_classes is None:
        raise LTPAError(f"{cfg.data} needs its data to know the number of classes; pass --root")
    with torch.device("meta"), warnings.catch_warnings():
        # --pretrained weights load into the meta tensors as a no-op, which PyTorch warns about once per tensor
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter", category=UserWarning)
        model = build_model(cfg, num_classes, img_size)
    optimizer = make_optimizer(cfg, model)
    params = sum(p.numel() for p in model.parameters())
    if cfg.lr_schedule == "cosine":
        from ltpa.train import WARMUP_START

        schedule = (
            f"linear warm-up from {cfg.peak_lr * WARMUP_START:g} to {cfg.peak_lr:g} over the first "
            f"{cfg.warmup:.0%} of the steps, then a cosine to 0 at the last step of epoch {cfg.epochs}"
            if cfg.warmup
            else f"a cosine from {cfg.peak_lr:g} to 0 at the last step of epoch {cfg.epochs}"
        )
    else:
        lrs = sorted({round(lr_at(cfg, e, 0), 10) for e in range(1, cfg.epochs + 1)}, reverse=True)
        schedule = ", ".join(f"{v:g}" for v in lrs) + " (at epoch starts)"
    print("# ---")
    print(f"# model: {cfg.model}, {params:,} parameters, {img_size}x{img_size}, K={num_classes}")
    print(f"# preprocess: {cfg.preprocess or info.preprocess}; data {cfg.data}: {data_line}")
    print(f"# optimiser: {type(optimizer).__name__} {optimizer.defaults}")
    print(f"# learning rate: {schedule}")
    if cfg.init_from is None and cfg.data == "cub200" and cfg.preset:
        print(
            "# note: the paper initialises CUB models from the CIFAR-100 model: add --init-from RUN_DIR",
            file=sys.stderr,
        )
    return 0
