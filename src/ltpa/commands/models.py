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
    parser.add_argument(
        "pattern",
        nargs="?",
        help="only names containing this text or matching this glob; timm/PATTERN or tv/PATTERN lists the timm "
        "or torchvision backbones that take attention (timm/resnet*), a full name such as timm/resnet18_att2_pc "
        "its parameters and levels",
    )
    group = parser.add_argument_group("model options")
    group.add_argument("--num-classes", type=int, default=10, help="classes K (default 10)")
    group.add_argument("--img-size", type=int, default=32, help="input side (default 32; 80 for CUB)")
    group.add_argument("--width", type=float, default=1.0, help="channel multiplier (default 1.0)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=models_command)
    return parser


def backbone_names(family: str, pattern: str) -> list[str]:
    """The timm (``family="timm"``) or torchvision (``"tv"``) models whose names contain ``pattern`` or match
    it as a glob: the backbones ``<family>/<name>_att<N>_<compat>`` builds."""
    import fnmatch

    if family == "timm":
        import timm

        names = timm.list_models()
    else:
        import torchvision

        names = torchvision.models.list_models(module=torchvision.models)
    return sorted(n for n in names if not pattern or pattern in n or fnmatch.fnmatch(n, pattern))


def _family_listing(args: argparse.Namespace, kwargs: dict) -> int | None:
    """``ltpa models timm/...`` or ``tv/...``: one attention model's row, or the backbones that match."""
    family, _, rest = str(args.pattern).partition("/")
    if family not in ("timm", "tv"):
        return None
    if "_att" in rest:
        kwargs = {k: v for k, v in kwargs.items() if k != "width" or v != 1.0}
        rows = [model_info(args.pattern, **kwargs)]
        return _print_rows(args, rows)
    names = backbone_names(family, rest)
    if args.json:
        print(json.dumps([f"{family}/{n}" for n in names], indent=2))
        return 0
    for name in names:
        print(f"{family}/{name}")
    example = f"{family}/{names[0] if names else 'resnet18'}_att2_pc"
    print(
        f"\n{len(names)} {'timm' if family == 'timm' else 'torchvision'} models match {rest or 'everything'}; each "
        f"takes attention as {family}/<model>_att<N>[_concat|_indep]_<pc|dp|add>: `ltpa models {example}` shows "
        "the levels of one"
    )
    return 0


def models_command(args: argparse.Namespace) -> int:
    kwargs = {"num_classes": args.num_classes, "img_size": args.img_size, "width": args.width}
    if args.pattern:
        listed = _family_listing(args, kwargs)
        if listed is not None:
            return listed
    rows = [model_info(name, **kwargs) for name in list_models(args.pattern)]
    return _print_rows(args, rows, footer=True)


def _print_rows(args: argparse.Namespace, rows: list[dict], footer: bool = False) -> int:
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<28} {'params':>12}  attended levels (channels @ stride)")
    for row in rows:
        levels = ", ".join(f"{lv['name']} ({lv['channels']} @ {lv['stride']})" for lv in row["levels"]) or "-"
        print(f"{row['name']:<28} {row['params']:>12,}  {levels}")
    print(f"\n{len(rows)} models; K={args.num_classes}, {args.img_size}x{args.img_size}, width {args.width}")
    if footer:
        print(
            "Also any timm or torchvision CNN with attention: timm/<model>_att<N>[_concat|_indep]_<pc|dp|add> and "
            "tv/<model>_att<N>..., e.g. timm/resnet50_att2_pc (see ltpa.attach); `ltpa models timm/resnet*` lists "
            "the timm backbones that match."
        )
    return 0
