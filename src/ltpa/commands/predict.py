"""``ltpa predict``: a trained model's top classes for image files, with an overlay figure per attended level."""

from __future__ import annotations

import argparse

from ltpa.commands.eval import add_gradcam_backend_arg


def add_predict_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "predict",
        allow_abbrev=False,
        help="top-k classes of image files, with the model's maps over each",
        description=(
            "Classifies image files (any size and mode; the model sees each resized to its input) with a "
            "trained run and prints the top-k classes with their probabilities. For each picture and each "
            "attended level it writes a figure of the map overlaid on the picture, with a colour bar "
            "(Grad-CAM for a model without maps of its own), and predictions.json."
        ),
    )
    parser.add_argument(
        "checkpoint", metavar="RUN", help="run folder or .safetensors checkpoint of `ltpa train`"
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, BMP, ...)")
    group = parser.add_argument_group("output")
    group.add_argument("--top-k", type=int, default=5, help="classes to print per image (default 5)")
    group.add_argument(
        "--display", type=int, default=256, help="longer side of each picture in the figures (default 256)"
    )
    group.add_argument("--alpha", type=float, default=0.5, help="weight of the heat colours (default 0.5)")
    add_gradcam_backend_arg(group)
    run = parser.add_argument_group("run")
    run.add_argument(
        "--out", default="runs/predict", metavar="DIR", help="output folder (default runs/predict)"
    )
    run.add_argument(
        "--device", default="auto", help="auto (default: cuda when available), cpu, cuda, cuda:N"
    )
    run.add_argument(
        "--which", default="last", choices=("last", "best"), help="checkpoint of a run folder (default last)"
    )
    parser.set_defaults(func=predict_command)
    return parser


def predict_command(args: argparse.Namespace) -> int:
    from ltpa.predict import PredictConfig, run_predict

    config = PredictConfig(
        top_k=args.top_k,
        gradcam_backend=args.gradcam_backend,
        display=args.display,
        alpha=args.alpha,
        device=args.device,
        which=args.which,
        out=args.out,
    )
    records = run_predict(args.checkpoint, args.images, config)
    width = max(len(entry["name"]) for record in records for entry in record["top"])
    for record in records:
        print(record["image"])
        for rank, entry in enumerate(record["top"], start=1):
            print(f"  {rank}. {entry['name']:<{width}}  {100 * entry['probability']:6.2f}%")
        for panel, figure in record["maps"].items():
            print(f"  {panel}: {figure}")
    return 0
