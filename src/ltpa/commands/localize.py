"""``ltpa localize``: attention mass in the object's box and mask, and the pointing game (method §4.5)."""

from __future__ import annotations

import argparse

from ltpa.commands.eval import (
    add_checkpoint_args,
    add_data_args,
    add_map_args,
    add_run_args,
    common_kwargs,
    map_kwargs,
)


def add_localize_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "localize",
        allow_abbrev=False,
        help="attention mass inside the object's box and mask, pointing game",
        description=(
            "Attention localisation on data with ground truth: per level, the share of attention mass inside "
            "the object's bounding box and mask, and the pointing game (is the map's maximum on the object?),"
            " against the uniform map (which scores the box's area fraction) and a centred Gaussian. Writes "
            "localize.csv (model,level,mass_in_box,mass_in_mask,pointing_accuracy), localize.json and "
            "localize.png."
        ),
    )
    add_checkpoint_args(parser)
    add_data_args(parser)
    group = parser.add_argument_group("localisation")
    group.add_argument(
        "--gradcam",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also score Grad-CAM of each model, the baseline segment and visualize show too (default: yes)",
    )
    add_map_args(group)
    add_run_args(parser, "localize", batch_size=128)
    parser.set_defaults(func=localize_command)
    return parser


def localize_command(args: argparse.Namespace) -> int:
    from ltpa.evaluate.localization import LocalizeConfig, run_localize

    config = LocalizeConfig(
        **common_kwargs(args),
        **map_kwargs(args),
        gradcam=args.gradcam,
    )
    run_localize(args.checkpoints, config)
    return 0
