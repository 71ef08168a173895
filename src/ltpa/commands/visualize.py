"""``ltpa visualize``: per-level attention maps over images, beside CAM and Grad-CAM, in one grid figure."""

from __future__ import annotations

import argparse

from ltpa.commands.eval import add_checkpoint_args, add_gradcam_backend_arg
from ltpa.commands.train import add_data_option_arg


def add_visualize_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "visualize",
        allow_abbrev=False,
        help="attention maps overlaid on images (with CAM / Grad-CAM beside them)",
        description=(
            "Per-level attention maps of a checkpoint, bilinearly upsampled and min-max scaled per image, "
            "overlaid on the pictures in one grid figure (attention.png, with attention.json). Any image file"
            " of any size and mode is accepted; the model sees it resized to its input. Beside them: the CAM "
            "of a vgg_gap checkpoint (--cam) and Grad-CAM of the model."
        ),
    )
    add_checkpoint_args(parser, many=False)
    source = parser.add_argument_group(
        "pictures (--images, or --count images of --data, by default the run's own data)"
    )
    source.add_argument("--images", nargs="+", default=[], metavar="FILE", help="image files")
    source.add_argument("--data", metavar="NAME", help="dataset to take the first --count images from")
    source.add_argument("--root", metavar="DIR", help="its folder")
    source.add_argument("--split", default="test", help="its split (default test)")
    source.add_argument("--count", type=int, default=8, help="number of dataset images (default 8)")
    add_data_option_arg(source, "dataset option (repeatable)")
    maps = parser.add_argument_group("maps")
    maps.add_argument("--cam", metavar="CKPT", help="a vgg_gap checkpoint whose CAM is shown for comparison")
    maps.add_argument(
        "--gradcam", action=argparse.BooleanOptionalAction, default=True, help="show Grad-CAM (default: yes)"
    )
    add_gradcam_backend_arg(maps)
    maps.add_argument(
        "--display", type=int, default=192, help="longer side of each picture in pixels (default 192)"
    )
    maps.add_argument("--alpha", type=float, default=0.5, help="weight of the heat colours (default 0.5)")
    run = parser.add_argument_group("run")
    run.add_argument(
        "--out", default="runs/visualize", metavar="DIR", help="output folder (default runs/visualize)"
    )
    run.add_argument(
        "--device", default="auto", help="auto (default: cuda when available), cpu, cuda, cuda:N"
    )
    run.add_argument("--which", default="last", choices=("last", "best"), help="checkpoint of a run folder")
    parser.set_defaults(func=visualize_command)
    return parser


def visualize_command(args: argparse.Namespace) -> int:
    from ltpa.visualize import VisualizeConfig, run_visualize

    if not args.images and args.data is None:  # the run's own data, as the other evaluation commands
        from ltpa.commands.eval import data_from_run

        args.data, root, options = data_from_run(args.checkpoint, args.which)
        args.root = args.root or root
        args.data_option = [*options.items(), *args.data_option]
    config = VisualizeConfig(
        images=list(args.images),
        data=args.data,
        root=args.root,
        split=args.split,
        count=args.count,
        data_options=dict(args.data_option),
        cam=args.cam,
        gradcam=args.gradcam,
        gradcam_backend=args.gradcam_backend,
        display=args.display,
        alpha=args.alpha,
        device=args.device,
        which=args.which,
        out=args.out,
    )
    run_visualize(args.checkpoint, config)
    return 0
