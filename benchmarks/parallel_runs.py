"""Two 1-thread trainings side by side against one 2-thread training, on the evidence study's workload.

Run by hand (not a test), on an otherwise idle machine:

    .venv/bin/python benchmarks/parallel_runs.py --images 3000 --epochs 1

It trains the study's model (width-1/8 ``vgg_att2_concat_pc`` on cluttered-fashion, the study's recipe) in
three ways, in one run, each on the same data and starting weights:

* *serial*: one training with 2 threads, then a second one (what a 2-thread runner does for two runs);
* *parallel*: two trainings at once, each in its own process with 1 thread.

It prints the wall time of each way and the ratio; ``ltpa.study`` trains two 1-thread runs side by side by default
(``--jobs 2 --threads 1``) because of it. ``--out docs/benchmarks.md`` replaces (or appends) that page's section
between the ``parallel_runs`` markers, with the machine and its load average at the start named.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_CHILD = """
import json, sys, torch
from ltpa.config import resolve_config
from ltpa.train import fit
over = json.loads(sys.argv[1])
fit(resolve_config(overrides=over))
"""


def _overrides(out: Path, threads: int, images: int, epochs: int, seed: int) -> dict[str, object]:
    from ltpa.study.design import DESIGN, arm

    over = DESIGN.train_overrides(arm("att2-pc"), seed, DESIGN.regimes[0], lr=0.05, epochs=epochs)
    over["data_options"] = {**over["data_options"], "num_train": images}  # type: ignore[dict-item]
    over.update(out=str(out), threads=threads, quiet=True, device="cpu")
    return over


def _launch(over: dict[str, object]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(over)])


def _wait(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"a training failed (exit {p.returncode})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--images", type=int, default=3000, help="training images per run (default 3000)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per run (default 1)")
    parser.add_argument("--out", help="Markdown page whose parallel_runs section is replaced (or appended)")
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # warm the dataset cache so neither way pays for generating the images
        _wait([_launch(_overrides(root / "warm", 2, 64, 1, 0))])
        start = time.perf_counter()
        for k in range(2):
            _wait([_launch(_overrides(root / f"serial{k}", 2, args.images, args.epochs, k))])
        serial = time.perf_counter() - start
        start = time.perf_counter()
        _wait([_launch(_overrides(root / f"parallel{k}", 1, args.images, args.epochs, k)) for k in range(2)])
        parallel = time.perf_counter() - start
    from ltpa.system import describe_device

    result = {
        "machine": describe_device("cpu"),
        "load_average_at_start": round(load, 2),
        "images": args.images,
        "epochs": args.epochs,
        "serial_2x2threads_s": round(serial, 1),
        "parallel_2x1thread_s": round(parallel, 1),
        "parallel_speedup": round(serial / parallel, 2),
    }
    print(json.dumps(result))
    if args.out:
        _write_section(Path(args.out), result, argv)
    return 0


BEGIN, END = "<!-- parallel_runs: begin -->", "<!-- parallel_runs: end -->"


def _write_section(page: Path, r: dict[str, object], argv: list[str] | None) -> None:
    command = " ".join(["benchmarks/parallel_runs.py", *(argv if argv is not None else sys.argv[1:])])
    section = "\n".join(
        [
            BEGIN,
            "## Two trainings side by side (the evidence study's scheduling)",
            "",
            f"Command: `.venv/bin/python {command}`, on {r['machine']}; load average "
            f"{r['load_average_at_start']} when it started (0 is an idle machine). Two runs of width-1/8 "
            f"`vgg_att2_concat_pc` on {r['images']:,} cluttered-fashion images, {r['epochs']} epoch(s) each, the "
            "study's recipe, one after the other with 2 threads each, then at once with 1 thread each:",
            "",
            "| schedule | wall time (s) |",
            "|---|---:|",
            f"| one after the other, 2 threads each | {r['serial_2x2threads_s']} |",
            f"| side by side, 1 thread each | {r['parallel_2x1thread_s']} |",
            f"| **speed-up of side by side** | **{r['parallel_speedup']}x** |",
            "",
            "`python -m ltpa.study` therefore trains `--jobs 2` runs of `--threads 1` by default.",
            END,
        ]
    )
    text = page.read_text() if page.exists() else ""
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    page.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
