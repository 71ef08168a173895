"""``ltpa attack``: accuracy and fooling rate under FGSM or PGD for a sweep of budgets (method §4.4)."""

from __future__ import annotations

import argparse

from ltpa.commands.eval import add_checkpoint_args, add_data_args, add_run_args, common_kwargs


def parse_epsilons(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 0,1,2,4,8,16, got {text!r}"
        ) from err
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"epsilons must be numbers >= 0, got {text!r}")
    return values


def add_attack_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "attack",
        allow_abbrev=False,
        help="accuracy and fooling rate under FGSM / PGD per epsilon",
        description=(
            "Adversarial robustness (method §4.4): for each checkpoint and epsilon (in 1/255 units of [0, 1] "
            "pixels), accuracy under attack and fooling rate (share of correctly classified images whose "
            "prediction flips). Writes attack.csv (model,method,eps,accuracy,fooling_rate) and attack.png. "
            "Epsilon 0 is the clean accuracy of `ltpa eval`."
        ),
    )
    add_checkpoint_args(parser)
    add_data_args(parser)
    group = parser.add_argument_group("attack")
    group.add_argument("--method", default="fgsm", choices=("fgsm", "pgd"), help="attack (default fgsm)")
    group.add_argument(
        "--eps",
        type=parse_epsilons,
        default=[0.0, 1.0, 2.0, 4.0, 8.0, 16.0],
        metavar="LIST",
        help="budgets in 1/255 units, comma-separated (default 0,1,2,4,8,16)",
    )
    group.add_argument("--steps", type=int, default=10, help="PGD steps (default 10)")
    group.add_argument("--alpha", type=float, help="PGD step size in 1/255 units (default 2.5 * eps / steps)")
    group.add_argument("--no-random-start", action="store_true", help="PGD starts at the clean image")
    group.add_argument("--seed", type=int, default=0, help="seed of PGD's random start (default 0)")
    add_run_args(parser, "attack")
    parser.set_defaults(func=attack_command)
    return parser


def attack_command(args: argparse.Namespace) -> int:
    from ltpa.evaluate.robustness import AttackConfig, run_attack

    config = AttackConfig(
        **common_kwargs(args),
        method=args.method,
        epsilons=args.eps,
        steps=args.steps,
        alpha=args.alpha,
        random_start=not args.no_random_start,
        seed=args.seed,
    )
    run_attack(args.checkpoints, config)
    return 0
