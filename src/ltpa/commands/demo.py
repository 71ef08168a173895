"""``ltpa demo``: baseline vs attention VGG on the embedded cluttered digits, with a report, in minutes."""

from __future__ import annotations

import argparse
from pathlib import Path

from ltpa.commands.train import add_speed_args
from ltpa.demo import DemoConfig, run_demo


def add_demo_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    defaults = DemoConfig()
    parser = subparsers.add_parser(
        "demo",
        allow_abbrev=False,
        help="train baseline and attention VGG on cluttered digits and write a report (CPU, minutes)",
        description=(
            "The main job: trains a baseline VGG and an attention VGG (paper layout, narrow width) on the "
            "embedded cluttered-digits data, evaluates accuracy and attention localisation, and writes "
            "report.md, figures and summary.json. Needs no data download."
        ),
    )
    parser.add_argument("--out", default=defaults.out, help=f"output folder (default {defaults.out})")
    group = parser.add_argument_group("what to train")
    group.add_argument(
        "--attention", default=defaults.attention, help=f"attention model (default {defaults.attention})"
    )
    group.add_argument(
        "--baseline", default=defaults.baseline, help=f"baseline model (default {defaults.baseline})"
    )
    group.add_argument(
        "--width", type=float, default=defaults.width, help=f"width multiplier (default {defaults.width})"
    )
    group.add_argument(
        "--epochs", type=int, default=defaults.epochs, help=f"epochs (default {defaults.epochs})"
    )
    group.add_argument("--num-train", type=int, default=defaults.num_train, help="training images")
    group.add_argument("--num-test", type=int, default=defaults.num_test, help="test images")
    group.add_argument("--seed", type=int, default=defaults.seed)
    group.add_argument("--device", default=defaults.device, help="auto (default), cpu or cuda")
    speed = parser.add_argument_group("speed")
    add_speed_args(speed)
    parser.set_defaults(amp=defaults.amp, channels_last=defaults.channels_last, threads=defaults.threads)
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="redo the runs even where their folders hold files the demo did not write (those are kept)",
    )
    parser.set_defaults(func=demo_command)
    return parser


def demo_command(args: argparse.Namespace) -> int:
    cfg = DemoConfig(
        out=args.out,
        attention=args.attention,
        baseline=args.baseline,
        width=args.width,
        epochs=args.epochs,
        num_train=args.num_train,
        num_test=args.num_test,
        seed=args.seed,
        device=args.device,
        amp=args.amp,
        channels_last=args.channels_last,
        threads=args.threads,
        quiet=args.quiet,
        overwrite=args.overwrite,
    )
    run_demo(cfg)
    if not cfg.quiet:
        print((Path(cfg.out) / "report.md").read_text())
    return 0
