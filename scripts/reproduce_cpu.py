"""The paper's findings, measured on a 2-core CPU in about 1.5 hours on real offline data.

"Learn To Pay Attention" (Jetley et al., ICLR 2018, https://arxiv.org/abs/1804.02391) claims that attention
VGGs classify better than the baseline, that their maps find the object (and segment it better than other CNN
maps), that they resist FGSM better, and that their features transfer better (method §4.1-4.5). This script
tests each claim at CPU scale, through the ``ltpa`` command line only, in three stages:

    python scripts/reproduce_cpu.py train   # 51 training runs: 2 suites x models x 3 seeds
    python scripts/reproduce_cpu.py eval    # ltpa attack / localize / segment / transfer on them
    python scripts/reproduce_cpu.py report  # docs/results.md, docs/results/*.csv, docs/figures/results_*.png

``scripts/reproduce_cpu.sh`` runs all three. Every stage skips work whose output already exists, so an
interrupted reproduction continues where it stopped. Each command is logged with its output under
``<out>/logs``; ``<out>/commands.txt`` lists every command in the order it finished.

Suites (both at width 1/8 of the paper's VGG, one pass over the data with AdamW and a cosine schedule):

* ``fashion``: Fashion-MNIST padded to 32x32, the first 20,000 training images, all 10,000 test images.
  Accuracy, FGSM/PGD, transfer to the cluttered sets, and the compute-matched baseline.
* ``cluttered``: ``cluttered-fashion`` (one Fashion-MNIST item among clutter, with its mask), 16,000
  generated training and 2,000 test images. Accuracy, localisation and segmentation against CAM and
  Grad-CAM, FGSM, and transfer to Fashion-MNIST and cluttered digits.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SEEDS = (0, 1, 2)
WIDTH = 0.125
# the baseline VGG at this width costs the same FLOPs per image as the attention VGG at WIDTH (1.02x)
MATCHED_WIDTH = 0.4375

# label -> (registered model, width)
MODELS: dict[str, tuple[str, float]] = {
    "vgg": ("vgg", WIDTH),
    "vgg-matched": ("vgg", MATCHED_WIDTH),
    "gap": ("vgg_gap", WIDTH),
    "pan": ("vgg_pan", WIDTH),
    "att2-pc": ("vgg_att2_concat_pc", WIDTH),
    "att2-dp": ("vgg_att2_concat_dp", WIDTH),
    "att2-add": ("vgg_att2_concat_add", WIDTH),
    "att3-pc": ("vgg_att3_concat_pc", WIDTH),
    "att3-dp": ("vgg_att3_concat_dp", WIDTH),
}

# the training recipe of every run: the demo's, which reaches its accuracy in one or a few passes on a CPU
# (the paper's Torch-dampened SGD needs hundreds of epochs; recipes/README.md has it for GPU users)
RECIPE = """\
optimizer: adamw
lr: 0.003
weight_decay: 0.0005
lr_schedule: cosine
warmup: 0.25
lr_decay: 0.0
lr_milestones: []
lr_factors: []
augment: none
batch_size: 64
epochs: 1
model_kwargs: {drop_scale: 0.0}
"""

CLUTTERED_OPTIONS = ["num_train=16000", "num_test=2000", "seed=0"]


@dataclass(frozen=True)
class Suite:
    """One training set and the models trained on it."""

    name: str
    data: str
    train_args: tuple[str, ...]
    models: tuple[str, ...]
    description: str


SUITES: dict[str, Suite] = {
    "fashion": Suite(
        "fashion",
        "fashion-mnist",
        ("--subset", "20000"),
        tuple(MODELS),
        "Fashion-MNIST (28x28 padded to 32x32, grey as RGB): first 20,000 training images, all 10,000 test images",
    ),
    "cluttered": Suite(
        "cluttered",
        "cluttered-fashion",
        tuple(a for o in CLUTTERED_OPTIONS for a in ("--data-option", o)),
        tuple(m for m in MODELS if m != "vgg-matched"),
        "cluttered-fashion (one Fashion-MNIST item at 38-55% of a 32x32 canvas among fragments of other "
        "classes, with its mask): 16,000 generated training and 2,000 test images (data seed 0)",
    ),
}

# evaluation settings (images are the first N of each test split)
ATTACK_LIMIT = 500
FGSM_EPS = "0,1,2,4,8"
PGD_EPS = "1,2,4"
PGD_STEPS = 5
MAP_LIMIT = 1000
TRANSFER_LIMIT = 1000
TRANSFER_CS = "0.01,0.1,1,10"
TRANSFER_FOLDS = 3
TRANSFER_TARGETS = {
    "fashion": ("cluttered-fashion", "cluttered-digits"),
    "cluttered": ("fashion-mnist", "cluttered-digits"),
}


@dataclass
class Task:
    """One ``ltpa`` command, its output (present = done) and a rough cost for scheduling."""

    name: str
    args: list[str]
    done_file: Path
    cost: float
    env: dict[str, str] = field(default_factory=dict)


def run_dir(out: Path, suite: str, label: str, seed: int) -> Path:
    return out / suite / f"{label}-s{seed}"


def train_tasks(out: Path, ltpa: str, seeds: Sequence[int], scale: float) -> list[Task]:
    recipe = out / "recipe.yaml"
    tasks = []
    for suite in SUITES.values():
        for label in suite.models:
            model, width = MODELS[label]
            for seed in seeds:
                folder = run_dir(out, suite.name, label, seed)
                args = [ltpa, "train", "--config", str(recipe), "--model", model, "--width", str(width)]
                args += ["--data", suite.data, *_scaled(suite.train_args, scale)]
                args += ["--seed", str(seed), "--out", str(folder), "--quiet"]
                cost = 1.0 if label != "vgg" else 0.2
                tasks.append(Task(f"train {suite.name}/{folder.name}", args, folder / "last.json", cost))
    return tasks


def _scaled(args: Sequence[str], scale: float) -> list[str]:
    """Training-set sizes times ``scale`` (``--quick`` smoke runs)."""
    if scale == 1.0:
        return list(args)
    out = []
    for a in args:
        if a.isdigit():
            a = str(max(64, int(int(a) * scale)))
        elif a.startswith(("num_train=", "num_test=")):
            k, v = a.split("=")
            a = f"{k}={max(64, int(int(v) * scale))}"
        out.append(a)
    return out


def eval_tasks(out: Path, ltpa: str, seeds: Sequence[int], scale: float) -> list[Task]:
    def lim(n: int, least: int = 32) -> str:
        return str(max(least, int(n * scale)))

    tasks = []
    for suite in SUITES.values():
        opts = (
            [a for o in CLUTTERED_OPTIONS for a in ("--data-option", o)] if suite.name == "cluttered" else []
        )
        attack = ["--data", suite.data, *opts, "--limit", lim(ATTACK_LIMIT)]
        targets = [a for t in TRANSFER_TARGETS[suite.name] for a in ("--data", t)]
        maps = ["--data", suite.data, *opts, "--limit", lim(MAP_LIMIT)]
        for seed in seeds:
            base = out / "eval" / suite.name
            jobs: list[tuple[str, list[str], str, float]] = [  # (kind, command + args, output, cost)
                ("fgsm", ["attack", *attack, "--method", "fgsm", "--eps", FGSM_EPS], "attack.csv", 1.0)
            ]
            if suite.name == "fashion":
                pgd = ["--method", "pgd", "--eps", PGD_EPS, "--steps", str(PGD_STEPS)]
                jobs.append(("pgd", ["attack", *attack, *pgd], "attack.csv", 4.0))
            probe = ["--limit", lim(TRANSFER_LIMIT, 300), "--C", TRANSFER_CS, "--folds", str(TRANSFER_FOLDS)]
            cache = ["--cache", str(base / f"features-s{seed}")]
            jobs.append(("transfer", ["transfer", *targets, *probe, *cache], "transfer.csv", 1.5))
            if suite.name == "cluttered":
                jobs.append(("localize", ["localize", *maps, "--gradcam"], "localize.csv", 0.7))
                jobs.append(("segment", ["segment", *maps], "segment.csv", 0.7))
            runs = [str(run_dir(out, suite.name, label, seed)) for label in suite.models]
            for kind, (command, *rest), done, cost in jobs:
                folder = base / f"{kind}-s{seed}"
                argv = [ltpa, command, *runs, *rest, "--out", str(folder), "--quiet"]
                tasks.append(Task(f"{kind} {suite.name} s{seed}", argv, folder / done, cost))
    return tasks


def run_tasks(tasks: list[Task], out: Path, jobs: int) -> int:
    """Runs the tasks whose output is missing, ``jobs`` at a time, one CPU thread each; returns failures."""
    todo = sorted((t for t in tasks if not t.done_file.exists()), key=lambda t: -t.cost)
    skipped = len(tasks) - len(todo)
    print(f"{len(todo)} commands to run, {skipped} already done, {jobs} at a time", flush=True)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()

    def one(task: Task) -> tuple[Task, int, float]:
        log = logs / (task.name.replace(" ", "_").replace("/", "_") + ".log")
        args = task.args
        if args[1] == "train" and (task.done_file.parent / "resume.safetensors").exists():
            # stopped before it finished: continue it (ltpa refuses to start a new run over a resumable one)
            args = [args[0], "train", "--resume", str(task.done_file.parent), "--quiet"]
        t = time.perf_counter()
        with open(log, "w") as fh:
            fh.write("$ " + shlex.join(args) + "\n")
            fh.flush()
            rc = subprocess.call(args, stdout=fh, stderr=subprocess.STDOUT, env={**env, **task.env}, cwd=ROOT)
        return task, rc, time.perf_counter() - t

    failures = 0
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(one, t) for t in todo]
        for i, future in enumerate(as_completed(futures), 1):
            task, rc, seconds = future.result()
            status = "ok" if rc == 0 else f"FAILED (exit {rc}, see {out / 'logs'})"
            elapsed = time.perf_counter() - start
            print(
                f"[{i}/{len(todo)} {elapsed / 60:5.1f} min] {task.name}: {status} in {seconds:.0f} s",
                flush=True,
            )
            with lock, open(out / "commands.txt", "a") as fh:
                fh.write(f"# {task.name}: exit {rc}, {seconds:.1f} s\n{shlex.join(task.args)}\n")
            failures += rc != 0
    return failures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("stage", choices=("train", "eval", "report", "all"))
    parser.add_argument("--out", default="runs/reproduce_cpu", help="run folder (default runs/reproduce_cpu)")
    parser.add_argument("--docs", default="docs", help="where report writes results.md (default docs)")
    parser.add_argument("--jobs", type=int, default=2, help="commands at once, one thread each (default 2)")
    parser.add_argument("--seeds", type=int, default=len(SEEDS), help="seeds per model (default 3)")
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="fraction of the images (e.g. 0.02 for a smoke run; default 1)",
    )
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.seeds < 1 or not 0 < args.scale <= 1:
        parser.error("--jobs and --seeds must be >= 1 and --scale in (0, 1]")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.yaml").write_text(RECIPE)
    ltpa = str(Path(sys.executable).with_name("ltpa"))
    seeds = list(range(args.seeds))
    failures = 0
    if args.stage in ("train", "all"):
        failures += run_tasks(train_tasks(out, ltpa, seeds, args.scale), out, args.jobs)
    if args.stage in ("eval", "all"):
        failures += run_tasks(eval_tasks(out, ltpa, seeds, args.scale), out, args.jobs)
    if args.stage in ("report", "all"):
        from reproduce_report import write_report  # the report stage only

        write_report(out, Path(args.docs), seeds=seeds, scale=args.scale)
    if failures:
        print(f"{failures} command(s) failed; their logs are in {out / 'logs'}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
