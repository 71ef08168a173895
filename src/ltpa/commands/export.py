"""``ltpa export``: a trained checkpoint to ONNX, TorchScript or a shareable weights folder (``--format hf``),
checked against PyTorch after export."""

from __future__ import annotations

import argparse
from pathlib import Path

from ltpa.errors import LTPAError
from ltpa.export import FORMATS, onnx_opset_range


def add_export_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX, TorchScript or a shareable weights folder",
        description=(
            "Export a trained checkpoint to ONNX or TorchScript, or (--format hf) to a folder of "
            "model.safetensors, config.json and a README.md model card that ltpa.create_model(name, "
            "pretrained=DIR) loads and that can be uploaded to the Hugging Face Hub. The exported model takes "
            "float32 RGB images in [0, 1], (B, 3, S, S), returns logits (and, with --with-maps, one attention "
            "map per level), and is compared with PyTorch on random images after export."
        ),
    )
    parser.add_argument(
        "checkpoint", metavar="CKPT", help="run folder, .safetensors/.json checkpoint, or stem"
    )
    group = parser.add_argument_group("export options")
    group.add_argument("--format", choices=sorted(FORMATS), default="onnx", help="file format (default onnx)")
    group.add_argument(
        "--with-maps", action="store_true", help="also output the attention map of every level"
    )
    group.add_argument(
        "--out",
        metavar="DIR",
        help="output folder: the export is written there as <checkpoint name>.onnx or .pt; for --format hf the "
        "folder itself (default: beside the checkpoint)",
    )
    group.add_argument(
        "--file", metavar="PATH", help="exact output file for onnx or torchscript (instead of --out)"
    )
    group.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output file that ltpa did not write (an earlier export is always replaced)",
    )
    group.add_argument("--img-size", type=int, help="input side (default: the model's)")
    low, high = onnx_opset_range()
    group.add_argument(
        "--opset", type=int, default=17, help=f"ONNX opset version, {low}..{high} (default 17)"
    )
    group.add_argument("--which", choices=["last", "best"], default="last", help="checkpoint of a run folder")
    check = parser.add_argument_group("check")
    check.add_argument("--no-check", action="store_true", help="skip comparing the export with PyTorch")
    check.add_argument(
        "--atol", type=float, default=1e-4, help="absolute part of the accepted difference (default 1e-4)"
    )
    check.add_argument(
        "--rtol",
        type=float,
        default=1e-4,
        help="relative part: accepted difference is atol + rtol * |PyTorch value| (default 1e-4)",
    )
    parser.set_defaults(func=export_command)
    return parser


def export_command(args: argparse.Namespace) -> int:
    from ltpa.checkpoint import checkpoint_paths, load_model, resolve_checkpoint
    from ltpa.export import export_model

    stem = resolve_checkpoint(args.checkpoint, args.which)
    suffix = FORMATS[args.format]
    if args.file and (args.out or args.format == "hf"):
        raise LTPAError(
            "--file names one onnx/torchscript file; drop --out, or use --out DIR for --format hf"
        )
    if args.out and Path(args.out).suffix in {s for s in FORMATS.values() if s.startswith(".")}:
        raise LTPAError(f"--out is a folder, got {args.out}; give an exact file name with --file {args.out}")
    model = load_model(stem)
    name = stem.parent.name if stem.name in ("last", "best") else stem.name
    if args.file:
        out = Path(args.file)
    elif args.out:
        out = Path(args.out) if args.format == "hf" else Path(args.out) / f"{name}{suffix}"
    else:
        out = stem.with_name(stem.name + suffix)
    checkpoint_files = {p.resolve() for p in checkpoint_paths(stem)}
    if out.resolve() in checkpoint_files or (
        args.format == "hf"
        and {(out / n).resolve() for n in ("model.safetensors", "config.json")} & checkpoint_files
    ):
        raise LTPAError(f"{out} is the checkpoint being exported; choose another --file or --out")
    path = export_model(
        model,
        out,
        args.format,
        with_maps=args.with_maps,
        img_size=args.img_size,
        check=not args.no_check,
        atol=args.atol,
        rtol=args.rtol,
        opset=args.opset,
        overwrite=args.overwrite,
    )
    checked = (
        "not checked" if args.no_check else f"matches PyTorch within {args.atol:g} + {args.rtol:g} x |value|"
    )
    print(f"wrote {path} ({args.format}, {model.model_name}; {checked})")
    return 0
