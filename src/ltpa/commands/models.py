"""``ltpa models``: the registered models with their parameter counts and attended levels."""

from __future__ import annotations

import argparse
import json

from ltpa.models import list_models, model_info


def add_models_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "models",
        allow_abbrev=False,
        help="list the models with parameter counts and attended levels",
        description="List the registered models (method §7) with their parameter counts and attended levels.",
    )
    parser.add_argument("pattern", nargs="?", help="only names containing this text or matching this glob")
    group = parser.add_argument_group("model options")
    group.add_argument("--num-classes", type=int, default=10, help="classes K (default 10)")
    group.add_argument("--img-size", type=int, default=32, help="input side (default 32; 80 for CUB)")
    group.add_argument("--width", type=float, default=1.0, help="channel multiplier (default 1.0)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=models_command)
    return parser


def models_command(args: argparse.Namespace) -> int:
    kwargs = {"num_classes": args.num_classes, "img_size": args.img_size, "width": args.width}
    rows = [model_info(name, **kwargs) for name in list_models(args.pattern)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<28} {'params':>12}  attended levels (channels @ stride)")
    for row in rows:
        levels = ", ".join(f"{lv['name']} ({lv['channels']} @ {lv['stride']})" for lv in row["levels"]) or "-"
        print(f"{row['name']:<28} {row['params']:>12,}  {levels}")
    print(f"\n{len(rows)} models; K={args.num_classes}, {args.img_size}x{args.img_size}, width {args.width}")
    print(
        "Also any timm or torchvision CNN with attention: timm/<model>_att<N>[_concat|_indep]_<pc|dp|add> and "
        "tv/<model>_att<N>..., e.g. timm/resnet50_att2_pc (see ltpa.attach)."
    )
    return 0
