"""``python -m ltpa.study``: run the evidence study's stages (see ``ltpa.study.runner``)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ltpa.errors import LTPAError

STAGES = ("pilot", "train", "evaluate", "report")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ltpa.study",
        description="The paired evidence study of learned attention on cluttered-fashion: pilot, train, "
        "evaluate, report. Every stage resumes where it stopped; run it again after an interruption.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "stages", nargs="*", choices=[*STAGES, "all"], default=["all"], help="stages to run (default: all)"
    )
    parser.add_argument("--out", default="runs/study", help="study folder (default: runs/study)")
    parser.add_argument("--docs", default="docs", help="where results.md and results/ go (default: docs)")
    parser.add_argument("--threads", type=int, help="CPU threads per training (default: the idle cores)")
    parser.add_argument("--device", default="cpu", help="device for training and evaluation (default: cpu)")
    parser.add_argument(
        "--smoke", action="store_true", help="a tiny version of the design, for checking the pipeline"
    )
    parser.add_argument(
        "--arms", nargs="+", help="train and evaluate only these arms (default: all arms of the design)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ltpa.study.design import ARMS, SMOKE, Design
    from ltpa.study.runner import Study

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stderr), logging.FileHandler(out / "study.log")],
    )
    stages = STAGES if "all" in args.stages else [s for s in STAGES if s in args.stages]
    unknown = sorted(set(args.arms or ()) - set(ARMS))
    if unknown:
        print(f"error: unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}", file=sys.stderr)
        return 2
    study = Study(out, SMOKE if args.smoke else Design(), threads=args.threads, device=args.device)
    try:
        for stage in stages:
            if stage == "pilot":
                study.pilot()
            elif stage == "train":
                study.train(args.arms)
            elif stage == "evaluate":
                from ltpa.study.evaluate import evaluate_all

                evaluate_all(study, args.arms)
            else:
                from ltpa.study.report import write_report

                write_report(study, Path(args.docs))
    except LTPAError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: run the same command again to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
