"""``ltpa segment``: weakly supervised segmentation by binarised attention maps, Jaccard index (method §4.3)."""

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


def add_segment_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "segment",
        allow_abbrev=False,
        help="Jaccard index of binarised attention maps against ground-truth masks",
        description=(
            "Weakly supervised segmentation (method §4.3): each level's map and their mean, upsampled and "
            "min-max scaled, binarised by a fixed threshold, Otsu's method and the best threshold per class "
            "(oracle, an upper bound), scored by the Jaccard index per image and per class. Baselines: CAM "
            "(vgg_gap checkpoints), Grad-CAM, a centred Gaussian and the uniform map. Writes segment.csv "
            "(model,map,level,threshold_rule,class,jaccard), segment_images.csv and segment_*.png."
        ),
    )
    add_checkpoint_args(parser)
    add_data_args(parser)
    group = parser.add_argument_group("segmentation")
    group.add_argument(
        "--threshold", type=float, default=0.5, help="fixed threshold on [0, 1] maps (default 0.5)"
    )
    group.add_argument(
        "--gradcam",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="include the Grad-CAM baseline (default: yes)",
    )
    add_map_args(group)
    group.add_argument("--examples", type=int, default=6, help="images per example figure (default 6)")
    add_run_args(parser, "segment", batch_size=128)
    parser.set_defaults(func=segment_command)
    return parser


def segment_command(args: argparse.Namespace) -> int:
    from ltpa.evaluate.segmentation import SegmentConfig, run_segment

    config = SegmentConfig(
        **common_kwargs(args),
        **map_kwargs(args),
        threshold=args.threshold,
        gradcam=args.gradcam,
        examples=args.examples,
    )
    run_segment(args.checkpoints, config)
    return 0
