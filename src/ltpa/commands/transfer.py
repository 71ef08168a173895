"""``ltpa transfer``: frozen features + a cross-validated linear classifier on unseen datasets (method §4.2)."""

from __future__ import annotations

import argparse

from ltpa.commands.eval import add_checkpoint_args, add_run_args
from ltpa.commands.train import add_data_option_arg
from ltpa.errors import LTPAError


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from err
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"C values must be positive, got {text!r}")
    return values


def add_transfer_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "transfer",
        allow_abbrev=False,
        help="linear classifier on frozen features of unseen datasets",
        description=(
            "The 'unseen datasets' protocol (method §4.2): frozen features (attention descriptors for attention"
            " models, the penultimate layer for baselines), extracted once and cached, images resized to the "
            "model's input; a logistic regression whose C is chosen by cross-validation on the training "
            "split; test accuracy per dataset and model. Writes transfer.csv (model,dataset,accuracy), "
            "transfer.json and transfer.png. Give --data/--root once per dataset, in pairs."
        ),
    )
    add_checkpoint_args(parser)
    group = parser.add_argument_group("data")
    group.add_argument(
        "--data",
        action="append",
        metavar="NAME",
        help="dataset name, e.g. image-folder (repeatable; default: the first checkpoint's training data, "
        "with its folder and options)",
    )
    group.add_argument(
        "--root",
        action="append",
        default=[],
        metavar="DIR",
        help="its folder; one per --data, in the same order (or none at all)",
    )
    group.add_argument(
        "--train-split", default="train", help="split the classifier is fitted on (default train)"
    )
    group.add_argument("--test-split", default="test", help="split it is scored on (default test)")
    group.add_argument("--limit", type=int, metavar="N", help="only the first N images of each split")
    add_data_option_arg(group, "dataset option for every dataset, e.g. train_fraction=0.5 (repeatable)")
    probe = parser.add_argument_group("classifier")
    probe.add_argument(
        "--C",
        dest="Cs",
        type=_floats,
        default=[0.001, 0.01, 0.1, 1.0, 10.0, 100.0],
        metavar="LIST",
        help="candidate inverse regularisation strengths (default 0.001,...,100)",
    )
    probe.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    probe.add_argument("--seed", type=int, default=0, help="seed of the folds (default 0)")
    probe.add_argument("--cache", metavar="DIR", help="feature cache folder (default <out>/features)")
    add_run_args(parser, "transfer")
    parser.set_defaults(func=transfer_command)
    return parser


def transfer_command(args: argparse.Namespace) -> int:
    from ltpa.evaluate.transfer import TransferConfig, run_transfer

    if not args.data:
        from ltpa.commands.eval import data_from_run

        data, root, options = data_from_run(args.checkpoints[0], args.which)
        args.data, args.root = [data], [root] if root else []
        args.data_option = [*options.items(), *args.data_option]
    if args.root and len(args.root) != len(args.data):
        raise LTPAError(
            f"{len(args.data)} --data but {len(args.root)} --root; give one --root per --data, in order"
        )
    roots = args.root or [None] * len(args.data)
    config = TransferConfig(
        datasets=list(zip(args.data, roots)),
        train_split=args.train_split,
        test_split=args.test_split,
        limit=args.limit,
        data_options=dict(args.data_option),
        Cs=args.Cs,
        folds=args.folds,
        seed=args.seed,
        batch_size=args.batch_size,
        device=args.device,
        which=args.which,
        cache=args.cache,
        out=args.out,
        progress=False if args.quiet else None,
    )
    run_transfer(args.checkpoints, config)
    return 0
