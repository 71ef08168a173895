"""``ltpa eval``: top-1 accuracy and error, per-class accuracy and confusion matrix (method §3.5).

Also holds the flags every evaluation command shares (checkpoints, data, run options).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ltpa.commands.train import add_data_option_arg
from ltpa.errors import LTPAError


def add_checkpoint_args(parser: argparse.ArgumentParser, *, many: bool = True) -> None:
    """The positional checkpoint argument(s): run folders or ``.safetensors`` files."""
    parser.add_argument(
        "checkpoints" if many else "checkpoint",
        nargs="+" if many else None,
        metavar="CKPT",
        help="run folder(s) or .safetensors checkpoint file(s) made by `ltpa train`",
    )


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """``--data``, ``--root``, ``--split``, ``--limit`` and ``--data-option`` in a "data" group; without
    ``--data`` the first checkpoint's training data is used (:func:`data_from_run`)."""
    group = parser.add_argument_group("data")
    group.add_argument(
        "--data",
        metavar="NAME",
        help="dataset name (default: the one the first checkpoint was trained on, with its folder and options)",
    )
    group.add_argument("--root", metavar="DIR", help="dataset folder (default: the dataset's default place)")
    group.add_argument("--split", default="test", help="split to evaluate (default test)")
    group.add_argument("--limit", type=int, metavar="N", help="only the first N images (quick runs)")
    add_data_option_arg(group, "dataset option, e.g. num_test=500 (repeatable)")


def add_run_args(parser: argparse.ArgumentParser, command: str, *, batch_size: int = 256) -> None:
    """``--out``, ``--batch-size``, ``--device``, ``--which`` and ``--quiet`` in a "run" group."""
    group = parser.add_argument_group("run")
    group.add_argument(
        "--out",
        default=f"runs/{command}",
        metavar="DIR",
        help=f"output folder (default runs/{command}, beside the training runs)",
    )
    group.add_argument(
        "--batch-size", type=int, default=batch_size, help=f"images per batch (default {batch_size})"
    )
    group.add_argument(
        "--device", default="auto", help="auto (default: cuda when available), cpu, cuda, cuda:N"
    )
    group.add_argument(
        "--which", default="last", choices=("last", "best"), help="checkpoint of a run folder (default last)"
    )
    group.add_argument("--quiet", action="store_true", help="no progress bars")


def add_gradcam_backend_arg(group: argparse._ArgumentGroup) -> None:
    """``--gradcam-backend``: the grad-cam package or the built-in Grad-CAM."""
    group.add_argument(
        "--gradcam-backend",
        default="auto",
        choices=("auto", "package", "own"),
        help="grad-cam package (auto: when installed) or the built-in implementation",
    )


def add_map_args(group: argparse._ArgumentGroup) -> None:
    """``--size``, ``--gradcam-backend`` and ``--gaussian-sigma``: the flags of the commands that score maps
    against masks (``segment``, ``localize``)."""
    group.add_argument(
        "--size", type=int, help="side at which maps and masks are compared (default: model input)"
    )
    add_gradcam_backend_arg(group)
    group.add_argument(
        "--gaussian-sigma",
        type=float,
        default=0.25,
        help="sigma of the centred Gaussian baseline, fraction of the side (default 0.25)",
    )


def map_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Config fields of :func:`add_map_args`, from parsed flags."""
    return {"size": args.size, "gradcam_backend": args.gradcam_backend, "gaussian_sigma": args.gaussian_sigma}


def data_from_run(checkpoint: str, which: str = "last") -> tuple[str, str | None, dict[str, Any]]:
    """``(data, root, data_options)`` a checkpoint was trained with, from its sidecar's config."""
    from ltpa.checkpoint import read_sidecar

    config = read_sidecar(checkpoint, which).get("config") or {}
    if not config.get("data"):
        raise LTPAError(f"{checkpoint} does not record its training data; give --data NAME")
    data, root, options = config["data"], config.get("root"), config.get("data_options") or {}
    return _checked_data(checkpoint, data, root, options)


# Counts a sidecar may ask a dataset for (num_test and the like): beyond this it is not a training's record.
MAX_RECORDED_COUNT = 1_000_000


def _checked_data(
    checkpoint: str, data: Any, root: Any, options: Any
) -> tuple[str, str | None, dict[str, Any]]:
    """The data fields of a sidecar, checked before any dataset is read: names are strings, options plain
    values with sane counts, and the root an existing dataset folder (never a file system's root)."""
    where = f"the training data recorded in {checkpoint}"
    fix = "give --data NAME (and --root, --data-option) yourself"
    if (
        not isinstance(data, str)
        or not isinstance(options, dict)
        or not all(isinstance(k, str) for k in options)
    ):
        raise LTPAError(f"{where} is malformed (data {data!r:.40}, data_options {options!r:.40}); {fix}")
    for key, value in options.items():
        plain = value is None or isinstance(value, str | bool | int | float)
        listed = (
            isinstance(value, list) and len(value) <= 64 and all(isinstance(v, int | float) for v in value)
        )
        if not (plain or listed):
            raise LTPAError(f"{where}: data option {key}={value!r:.40} is not a plain value; {fix}")
        if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) > MAX_RECORDED_COUNT:
            raise LTPAError(f"{where}: data option {key}={value!r} is out of range; {fix}")
    if root is not None and (
        not isinstance(root, str) or not root or Path(root).resolve() == Path(Path(root).resolve().anchor)
    ):  # a file system's root would be walked whole by a folder dataset
        raise LTPAError(f"{where}: root {root!r:.80} is not a dataset folder; {fix}")
    return data, root, dict(options)


def common_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Config fields shared by the evaluation commands, from parsed flags (``--data`` defaulting to the first
    checkpoint's training data, folder and options; ``--data-option`` flags apply on top)."""
    if args.data is None:
        first = args.checkpoints[0] if hasattr(args, "checkpoints") else args.checkpoint
        args.data, root, options = data_from_run(first, args.which)
        args.root = args.root or root
        args.data_option = [*options.items(), *args.data_option]
    return {
        "data": args.data,
        "root": args.root,
        "split": args.split,
        "limit": args.limit,
        "data_options": dict(args.data_option),
        "batch_size": args.batch_size,
        "device": args.device,
        "which": args.which,
        "out": args.out,
        "progress": False if args.quiet else None,
    }


def add_eval_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "eval",
        allow_abbrev=False,
        help="accuracy, per-class accuracy and confusion matrix of checkpoints",
        description=(
            "Top-1 accuracy and error (single centre view, BN in eval mode; method §3.5), per-class accuracy "
            "and a confusion-matrix figure per checkpoint. Writes eval.json and confusion_<run>.png. A "
            "CIFAR-10 model on stl10 is scored directly through its head on the nine shared classes (method "
            "§4.2)."
        ),
    )
    add_checkpoint_args(parser)
    add_data_args(parser)
    add_run_args(parser, "eval")
    parser.set_defaults(func=eval_command)
    return parser


def eval_command(args: argparse.Namespace) -> int:
    from ltpa.evaluate.accuracy import EvalConfig, run_eval

    run_eval(args.checkpoints, EvalConfig(**common_kwargs(args)))
    return 0
