"""``python -m ltpa.study``: run the evidence study's stages (``ltpa.study.runner``) and write its report."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ltpa.errors import LTPAError

STAGE_CHOICES = ("pilot", "main", "double", "plain", "descriptive", "report")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ltpa.study",
        description="The paired evidence study of trainable attention (docs/results.md): pilot, main, double, "
        "plain, descriptive, then report. Each stage skips the runs whose records exist and resumes a run "
        "stopped mid-way from its last epoch: run the same command again after an interruption.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "stages",
        nargs="*",
        metavar="STAGE",
        help=f"stages to run, in order ({', '.join(STAGE_CHOICES)}; default: all of them)",
    )
    parser.add_argument(
        "--records",
        help="committed records folder (default: docs/results/v3/records, or runs/study-smoke/records with --smoke)",
    )
    parser.add_argument(
        "--out", help="run folders (default: runs/study-v3, or runs/study-smoke with --smoke)"
    )
    parser.add_argument("--docs", help="where results.md, results/ and figures/ go (default: docs)")
    parser.add_argument(
        "--jobs", type=int, default=2, help="trainings side by side, one process each (default: 2)"
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per training (default: 1)")
    parser.add_argument("--device", default="cpu", help="device for training and evaluation (default: cpu)")
    parser.add_argument(
        "--smoke", action="store_true", help="a tiny version of the design, for checking the pipeline"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    unknown = [s for s in args.stages if s not in STAGE_CHOICES]
    if unknown:
        print(
            f"error: unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGE_CHOICES)}",
            file=sys.stderr,
        )
        return 2
    if args.jobs < 1 or args.threads < 1:
        print("error: --jobs and --threads must be at least 1", file=sys.stderr)
        return 2
    from ltpa.study.runner import STAGES, Study, default_design

    base = Path("runs/study-smoke" if args.smoke else "runs/study-v3")
    records = Path(args.records or (base / "records" if args.smoke else "docs/results/v3/records"))
    out = Path(args.out or base)
    docs = Path(args.docs or (base / "docs" if args.smoke else "docs"))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"error: cannot create {out}: {err.strerror}; choose another --out", file=sys.stderr)
        return 1
    if records.exists() and not records.is_dir():
        print(f"error: --records {records} is a file; give a folder", file=sys.stderr)
        return 1
    from ltpa.utils import NoFollowFileHandler

    try:
        log_file = NoFollowFileHandler(out / "study.log")
    except (OSError, LTPAError) as err:
        print(f"error: cannot write {out / 'study.log'}: {err}", file=sys.stderr)
        return 1
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(message)s",
        datefmt="%H:%M:%S",
        handlers=[logging.StreamHandler(sys.stderr), log_file],
    )
    stages = tuple(args.stages or STAGE_CHOICES)
    study = Study(
        records, out, default_design(args.smoke), jobs=args.jobs, threads=args.threads, device=args.device
    )
    try:
        train_stages = tuple(s for s in STAGES if s in stages)
        if train_stages:
            study.run(train_stages)
        if "report" in stages:
            from ltpa.study.report import write_report

            write_report(records, docs, study.design)
    except (LTPAError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: run the same command again to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
