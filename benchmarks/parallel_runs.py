"""Two 1-thread trainings side by side against one 2-thread training, on the evidence study's workload.

Run by hand (not a test), on an otherwise idle machine:

    .venv/bin/python benchmarks/parallel_runs.py --images 3000 --epochs 1

It trains the study's model (width-1/8 ``vgg_att2_concat_pc`` on cluttered-fashion, the study's recipe) in
three ways, in one run, each on the same data and starting weights:

* *serial*: one training with 2 threads, then a second one (what a 2-thread runner does for two runs);
* *parallel*: two trainings at once, each in its own process with 1 thread.

It prints the wall time of each way and the ratio; ``ltpa.study`` schedules two 1-thread trainings side by side
when the ratio favours it (``--parallel``). The figure belongs in docs/benchmarks.md with the machine named.
"""

from __future__ import annotations

import argparse
import json
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
    args = parser.parse_args(argv)
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

    print(
        json.dumps(
            {
                "machine": describe_device("cpu"),
                "images": args.images,
                "epochs": args.epochs,
                "serial_2x2threads_s": round(serial, 1),
                "parallel_2x1thread_s": round(parallel, 1),
                "parallel_speedup": round(serial / parallel, 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
