"""``ltpa report``: one self-contained HTML page per run (curves, maps, confusion matrix, FGSM sweep)."""

from __future__ import annotations

import argparse

from ltpa.commands.attack import parse_epsilons
from ltpa.commands.eval import add_checkpoint_args, add_data_args, add_gradcam_backend_arg, add_run_args


def add_report_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "report",
        allow_abbrev=False,
        help="one self-contained HTML page per run: curves, maps, confusion matrix, FGSM sweep",
        description=(
            "Writes <out>/<run>.html (several runs: <run>+<run>.html, compared side by side, one colour per "
            "run): learning curves from the run folder, maps of a few test images with predicted and true "
            "classes, the confusion matrix, and a quick FGSM sweep. Every figure is embedded in the page, "
            "which opens offline in any browser."
        ),
    )
    add_checkpoint_args(parser)
    add_data_args(parser)
    parser.set_defaults(limit=1000)
    group = parser.add_argument_group("report")
    group.add_argument("--examples", type=int, default=8, help="test images whose maps are shown (default 8)")
    group.add_argument(
        "--attack-images", type=int, default=256, help="test images of the FGSM sweep (default 256; 0: none)"
    )
    group.add_argument(
        "--eps",
        type=parse_epsilons,
        default=[0.0, 1.0, 2.0, 4.0, 8.0],
        help="FGSM budgets in 1/255 (default 0,1,2,4,8)",
    )
    add_gradcam_backend_arg(group)
    add_run_args(parser, "report")
    parser.set_defaults(func=report_command)
    return parser


def report_command(args: argparse.Namespace) -> int:
    from ltpa.commands.eval import common_kwargs
    from ltpa.report import ReportConfig, run_report

    config = ReportConfig(
        **common_kwargs(args),
        examples=args.examples,
        attack_images=args.attack_images,
        epsilons=list(args.eps),
        gradcam_backend=args.gradcam_backend,
    )
    print(run_report(args.checkpoints, config))
    return 0
