"""The study runner: stages that pick up where they stopped, and records that outlive the run folders.

Two folders:

* ``records`` (committed, default ``docs/results/v3/records``): one gzipped JSON file per finished run, holding
  its settings, per-epoch history and per-image measurements, plus each replicate's test labels. A run is done
  when its record exists; the report is rebuilt from these files alone.
* ``out`` (not committed, default ``runs/study-v3``): ordinary ltpa run folders, kept so that a run stopped
  mid-way resumes from its last saved epoch.

Stages, in the order the budget is spent (and cut from the end): ``pilot`` (each arm's peak learning rate on
regime (i), grids extended until the best rate is interior, near-ties settled on a second replicate), ``main``
(regime (i) primary arms), ``double`` (the twice-the-epochs check), ``plain`` (regime (ii)), ``descriptive``.
Runs of a stage train ``jobs`` at a time, each in its own process with ``threads`` threads
(docs/benchmarks.md: two 1-thread trainings side by side beat one 2-thread training on this workload).
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from ltpa.errors import LTPAError
from ltpa.study.design import DESIGN, SMOKE, Arm, Design, Regime, arm, regime
from ltpa.utils import atomic_write

__all__ = [
    "LADDER",
    "STAGES",
    "Run",
    "Study",
    "ladder_step",
    "plateau",
    "read_history",
    "read_record",
    "read_timing",
    "write_record",
]

log = logging.getLogger("ltpa.study")

STAGES: tuple[str, ...] = ("pilot", "main", "double", "plain", "descriptive")


@dataclass(frozen=True)
class Run:
    """One training run of the study: which arm, where, which replicate, at what rate and for how long."""

    stage: str
    regime: str
    arm: str
    replicate: int
    lr: float
    epochs: int

    @property
    def key(self) -> str:
        if self.stage == "pilot":
            return f"pilot/{self.regime}/{self.arm}/lr{self.lr:g}-r{self.replicate}"
        return f"{self.stage}/{self.regime}/{self.arm}/r{self.replicate}"


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch rows of a run folder (empty when it has none yet).

    A last line cut short (a kill while it was written) is left out: that epoch is trained again on resume.

    Raises:
        LTPAError: for a damaged line before the last, naming the file.
    """
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except ValueError:
            if i == len(lines) - 1:
                break
            raise LTPAError(
                f"{path} is damaged at line {i + 1}; delete the run folder {run_dir} to train that run again"
            ) from None
    return rows


def _held_out(row: dict[str, Any]) -> float:
    for key in ("val_accuracy", "test_accuracy"):
        if key in row:
            return float(row[key])
    raise KeyError("a metrics row without a held-out accuracy")


def history_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The part of a run's history the records keep: per epoch the training loss and accuracy, the held-out
    accuracy and the learning rate."""
    return [
        {
            "epoch": int(r["epoch"]),
            "lr": round(float(r["lr"]), 8),
            "train_loss": round(float(r["train_loss"]), 5),
            "train_accuracy": round(float(r["train_accuracy"]), 5),
            "heldout_accuracy": round(_held_out(r), 5),
        }
        for r in rows
    ]


def plateau(history: list[dict[str, Any]], points: float) -> tuple[bool, float]:
    """The plateau rule: training accuracy moved less than ``points`` over the last fifth of the schedule.

    Returns:
        ``(holds, change)`` with ``change`` in points (last epoch minus the epoch a fifth of the schedule
        before it); ``(False, nan)`` for a run shorter than 2 epochs.
    """
    epochs = len(history)
    if epochs < 2:
        return False, math.nan
    back = max(1, math.ceil(epochs / 5))
    change = 100.0 * (history[-1]["train_accuracy"] - history[-1 - back]["train_accuracy"])
    return abs(change) < points, change


LADDER: tuple[float, ...] = tuple(round(m * 10.0**e, 10) for e in range(-5, 2) for m in (1.0, 3.0))
"""Learning rates the pilot may try: 1 and 3 times powers of ten (steps of about 3x)."""


def ladder_step(lr: float, direction: int) -> float:
    """The next rate of :data:`LADDER` below (``direction`` -1) or above (+1) ``lr``."""
    if direction < 0:
        below = [x for x in LADDER if x < lr * (1 - 1e-9)]
        if not below:
            raise ValueError(f"no learning rate below {lr:g} on the pilot's ladder")
        return below[-1]
    above = [x for x in LADDER if x > lr * (1 + 1e-9)]
    if not above:
        raise ValueError(f"no learning rate above {lr:g} on the pilot's ladder")
    return above[0]


def write_record(path: Path, record: dict[str, Any]) -> None:
    """Writes a gzipped JSON record atomically (never through a link), byte-identical for identical content
    (sorted keys, no timestamp in the gzip header)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as gz:
            gz.write(raw)

    atomic_write(path, write)


def read_record(path: Path) -> dict[str, Any]:
    """A record written by :func:`write_record`.

    Raises:
        LTPAError: for a damaged or truncated file, naming it and the fix.
    """
    try:
        with gzip.open(path, "rb") as f:
            record = json.loads(f.read())
    except (OSError, EOFError, ValueError) as err:
        raise LTPAError(
            f"study record {path} cannot be read ({err}); restore it from git (git checkout -- {path}) or delete "
            "it to run that run again"
        ) from None
    if not isinstance(record, dict):
        raise LTPAError(f"study record {path} is not a record; restore it from git or delete it")
    return record


def read_timing(path: Path) -> dict[str, Any]:
    """``timing.json`` (empty when missing).

    Raises:
        LTPAError: for a damaged file, naming it and the fix.
    """
    if not path.exists():
        return {}
    try:
        timing = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise LTPAError(f"{path} cannot be read ({err}); restore it from git or delete it") from None
    if not isinstance(timing, dict):
        raise LTPAError(f"{path} is not a timing record; restore it from git or delete it")
    return timing


# ------------------------------------------------------------------------------------------------ workers


def _train_and_measure(
    design: Design, run: Run, run_dir: str, records: str, threads: int, device: str
) -> dict[str, Any]:
    """Trains one run (resuming its folder), measures it, writes its record. Runs in a worker process."""
    import torch

    from ltpa.config import resolve_config
    from ltpa.train import fit

    torch.set_num_threads(threads)
    a, r = arm(run.arm, design), regime(run.regime, design)
    folder = Path(run_dir)
    overrides = design.train_overrides(a, run.replicate, r, lr=run.lr, epochs=run.epochs)
    overrides.update(out=str(folder), quiet=True, device=device, threads=threads)
    cfg = resolve_config(overrides=overrides)
    started = time.perf_counter()
    done = read_history(folder)
    if folder.exists() and done and max(int(x["epoch"]) for x in done) >= run.epochs:
        from ltpa.checkpoint import load_model

        model = load_model(folder, which="last")
    elif folder.exists() and (folder / "config.yaml").exists():
        # the run's own rate and length: a folder left by another design is refused, never resumed silently
        changes = {"quiet": True, "device": device, "lr": run.lr, "epochs": run.epochs}
        model = fit(cfg, resume=folder, changes=changes).model
    else:
        model = fit(cfg).model
    train_seconds = time.perf_counter() - started
    record: dict[str, Any] = {
        "run": asdict(run),
        "model": a.model,
        "kwargs": a.kwargs,
        "history": history_rows(read_history(folder)),
        "train_seconds": round(train_seconds, 1),
        "threads": threads,
        "runtime": _runtime(folder),
        "data": {},
    }
    if run.stage != "pilot":
        record["data"] = _measure(design, a, r, run.replicate, model, Path(records))
    write_record(Path(records) / f"{run.key}.json.gz", record)
    return record


def _runtime(folder: Path) -> dict[str, Any]:
    """The precision, memory format and threads the run resolved (its run.json), for the report."""
    try:
        return dict(json.loads((folder / "run.json").read_text()).get("runtime", {}))
    except (OSError, ValueError):
        return {}


_DATA_CACHE: dict[tuple[str, str, int], Any] = {}


def replicate_data(design: Design, r: Regime, replicate: int) -> tuple[Any, Any]:
    """The validation and test image sets of one replicate (validation is None for the plain regime)."""
    from ltpa.data import build_dataset, load_tensors
    from ltpa.study.measures import Split

    key = (design.name, r.name, replicate)
    if key in _DATA_CACHE:
        return _DATA_CACHE[key]  # type: ignore[no-any-return]
    opts = design.data_options(r, replicate)
    splits: list[Any] = []
    if r.data.startswith("cluttered"):
        for split in ("val", "test"):
            ds = build_dataset(r.data, root=design.root, split=split, **opts)
            x, y, m = load_tensors(ds, progress=False)
            splits.append(Split(x, y.long(), m))
    else:
        ds = build_dataset(r.data, root=design.root, split="test")
        x, y, _ = load_tensors(ds, 32, limit=design.num_test, progress=False)
        splits = [None, Split(x, y.long())]
    _DATA_CACHE[key] = (splits[0], splits[1])
    return splits[0], splits[1]


def _measure(design: Design, a: Arm, r: Regime, replicate: int, model: Any, records: Path) -> dict[str, Any]:
    from ltpa.study.measures import RunContext

    val, test = replicate_data(design, r, replicate)
    labels_path = records / "data" / f"{r.name}-r{replicate}.json.gz"
    if not labels_path.exists():
        write_record(labels_path, {"regime": r.name, "replicate": replicate, "labels": test.labels.tolist()})
    ctx = RunContext(model=model, arm=a, replicate=replicate, val=val, test=test, design=design)
    out: dict[str, Any] = {}
    for m in design.measures:
        if m.name not in r.measures or (m.name.startswith("map_") and not _has_maps(model)):
            continue
        key = m.measure.__name__
        if key not in out:
            out[key] = m.measure(ctx)
    return out


def _has_maps(model: Any) -> bool:
    return getattr(model, "map_kind", None) in ("attention", "cam")


@contextmanager
def _pool(jobs: int) -> Iterator[ProcessPoolExecutor]:
    """Worker processes for trainings. On an interruption or error, queued runs are cancelled and the workers
    are not waited for (each saves its resume state on the same Ctrl-C), so the stage stops at once."""
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"))
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


# ------------------------------------------------------------------------------------------------ the study


@dataclass
class Study:
    """The study: its design, where records and run folders go, and how runs share the machine."""

    records: Path
    out: Path
    design: Design = field(default_factory=lambda: DESIGN)
    jobs: int = 2
    threads: int = 1
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.records, self.out = Path(self.records), Path(self.out)

    # ------------------------------------------------------------------------------------------ plumbing

    def record_path(self, run: Run) -> Path:
        return self.records / f"{run.key}.json.gz"

    def run_dir(self, run: Run) -> Path:
        return self.out / run.key

    def done(self, run: Run) -> bool:
        return self.record_path(run).exists()

    def record(self, run: Run) -> dict[str, Any]:
        return read_record(self.record_path(run))

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Adds the wall time spent inside to ``records/timing.json`` under ``stage`` (also when interrupted)."""
        from ltpa.study.report import machine, source_commit

        start, commit, where = time.perf_counter(), source_commit(), machine()
        try:
            yield
        finally:
            path = self.records / "timing.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            timing = read_timing(path)
            entry = timing.setdefault(stage, {"seconds": 0.0, "commits": []})
            entry["seconds"] = round(entry["seconds"] + time.perf_counter() - start, 1)
            if commit not in entry["commits"]:
                entry["commits"].append(commit)
            machines = entry.setdefault("machines", [])
            if where not in machines:
                machines.append(where)
            text = json.dumps(timing, indent=1, sort_keys=True) + "\n"
            atomic_write(path, lambda tmp: Path(tmp).write_text(text))

    def execute(self, runs: list[Run]) -> None:
        """Trains and measures every run without a record, ``jobs`` at a time."""
        todo = [r for r in runs if not self.done(r)]
        if not todo:
            return
        for r in todo:
            log.info("queue %s (lr %g, %d epochs)", r.key, r.lr, r.epochs)
        args = [self._args(r) for r in todo]
        if self.jobs <= 1:
            for a in args:
                self._report_done(a[1], _train_and_measure(*a))
            return
        with _pool(self.jobs) as pool:
            futures = {pool.submit(_train_and_measure, *a): a[1] for a in args}
            for fut, r in futures.items():
                self._report_done(r, fut.result())

    def _args(self, run: Run) -> tuple[Any, ...]:
        return (self.design, run, str(self.run_dir(run)), str(self.records), self.threads, self.device)

    def _report_done(self, run: Run, record: dict[str, Any]) -> None:
        h = record["history"]
        log.info(
            "done %s in %.0f s: held-out %.2f%%, train %.2f%%",
            run.key,
            record["train_seconds"],
            100 * h[-1]["heldout_accuracy"],
            100 * h[-1]["train_accuracy"],
        )

    # ------------------------------------------------------------------------------------------ pilot

    def pilot_regime(self) -> Regime:
        return next(r for r in self.design.regimes if r.rates_from is None)

    def pilot_arms(self) -> list[Arm]:
        reg = self.pilot_regime().name
        return [a for a in self.design.arms if reg in a.regimes]

    def pilot_score(self, a: Arm, lr: float, replicates: tuple[int, ...]) -> float | None:
        """Mean final validation accuracy (points) of ``a`` at ``lr`` over ``replicates`` (None if missing)."""
        vals = []
        for k in replicates:
            run = Run("pilot", self.pilot_regime().name, a.name, k, lr, self.design.pilot_epochs)
            if not self.done(run):
                return None
            vals.append(100.0 * self.record(run)["history"][-1]["heldout_accuracy"])
        return sum(vals) / len(vals)

    def standard_error(self, accuracy: float) -> float:
        """One validation accuracy's standard error (points) at ``accuracy`` (points) on ``num_val`` images."""
        p = min(max(accuracy / 100.0, 0.0), 1.0)
        return 100.0 * math.sqrt(p * (1.0 - p) / self.design.num_val)

    def pilot_state(self, a: Arm) -> dict[str, Any]:
        """Where ``a``'s pilot stands: its grid so far, scores, the chosen rate (or what still has to run)."""
        grid = sorted(a.lr_grid)
        for _ in range(self.design.max_grid_extensions + 1):
            scores = {lr: self.pilot_score(a, lr, (0,)) for lr in grid}
            missing = [lr for lr, s in scores.items() if s is None]
            if missing:
                return {"grid": grid, "need": [(lr, 0) for lr in missing]}
            best = max(grid, key=lambda lr: (scores[lr], -lr))
            room = len(grid) < len(a.lr_grid) + self.design.max_grid_extensions
            if len(grid) > 1 and best in (grid[0], grid[-1]) and room:
                grid = sorted([*grid, ladder_step(best, -1 if best == grid[0] else 1)])
                continue
            break
        scores_r0 = {lr: self.pilot_score(a, lr, (0,)) for lr in grid}
        ranked = sorted(grid, key=lambda lr: (-(scores_r0[lr] or -1.0), lr))
        best = ranked[0]
        interior = len(grid) > 2 and grid[0] < best < grid[-1]
        state: dict[str, Any] = {"grid": grid, "scores": scores_r0, "interior": interior, "settled": False}
        if len(ranked) > 1:
            first, second = ranked[0], ranked[1]
            gap = (scores_r0[first] or 0.0) - (scores_r0[second] or 0.0)
            if gap < self.standard_error(scores_r0[first] or 0.0):
                need = [
                    (lr, 1)
                    for lr in (first, second)
                    if not self.done(
                        Run("pilot", self.pilot_regime().name, a.name, 1, lr, self.design.pilot_epochs)
                    )
                ]
                if need:
                    return {**state, "need": need}
                two = {lr: self.pilot_score(a, lr, (0, 1)) or 0.0 for lr in (first, second)}
                best = max((first, second), key=lambda lr: (two[lr], -lr))
                state.update(
                    settled=True, settled_scores=two, interior=len(grid) > 2 and grid[0] < best < grid[-1]
                )
        state.update(lr=best, need=[])
        return state

    def pilot_needs(self) -> list[Run]:
        """Pilot runs still needed, in the design's arm order (a grid extension or a second replicate of an
        earlier arm comes before the first runs of a later one)."""
        reg = self.pilot_regime().name
        return [
            Run("pilot", reg, a.name, k, lr, self.design.pilot_epochs)
            for a in self.pilot_arms()
            for lr, k in self.pilot_state(a)["need"]
        ]

    def pilot(self) -> dict[str, float]:
        """Runs pilots until every arm's rate is chosen; returns ``{arm: lr}``.

        A slot that frees up takes the first run still needed, so an arm's grid extension starts as soon as its
        grid so far has finished, instead of after every other arm's."""
        with self.timed("pilot"):
            if self.jobs <= 1:
                while need := self.pilot_needs():
                    self.execute(need[:1])
            else:
                with _pool(self.jobs) as pool:
                    inflight: dict[str, tuple[Run, Future[dict[str, Any]]]] = {}
                    while True:
                        for run in self.pilot_needs():
                            if len(inflight) >= self.jobs:
                                break
                            if run.key not in inflight:
                                log.info("start %s (lr %g, %d epochs)", run.key, run.lr, run.epochs)
                                inflight[run.key] = (run, pool.submit(_train_and_measure, *self._args(run)))
                        if not inflight:
                            break
                        finished, _ = wait([f for _, f in inflight.values()], return_when=FIRST_COMPLETED)
                        for key, (run, fut) in list(inflight.items()):
                            if fut in finished:
                                del inflight[key]
                                self._report_done(run, fut.result())
        rates = self.rates()
        if rates is None:  # pilot_needs() was empty, so every arm has a rate
            raise RuntimeError("the pilot ended without a rate for every arm")
        log.info("pilot rates: %s", rates)
        return rates

    def rates(self) -> dict[str, float] | None:
        """The chosen rates if every arm's pilot is complete (None otherwise)."""
        states = {a.name: self.pilot_state(a) for a in self.pilot_arms()}
        if any(s["need"] for s in states.values()):
            return None
        return {name: float(s["lr"]) for name, s in states.items()}

    # ------------------------------------------------------------------------------------------ stages

    def stage_runs(self, stage: str, rates: dict[str, float]) -> list[Run]:
        """The runs of a stage after the pilot, in training order (replicate by replicate, so that an
        interrupted stage leaves complete pairs)."""
        d = self.design
        pilot_reg = self.pilot_regime().name
        if stage == "main":
            arms = [a for a in d.arms if a.role == "primary" and pilot_reg in a.regimes]
            return [
                Run("main", pilot_reg, a.name, k, rates[a.name], d.epochs)
                for k in range(d.primary_replicates)
                for a in arms
            ]
        if stage == "double":
            return [
                Run("double", pilot_reg, name, k, rates[name], 2 * d.epochs)
                for k in range(d.double_replicates)
                for name in self.double_arms()
            ]
        if stage == "plain":
            runs = []
            for reg in d.regimes:
                if reg.rates_from is None:
                    continue
                arms = [a for a in d.arms if reg.name in a.regimes]
                runs += [
                    Run("main", reg.name, a.name, k, rates[a.name], d.epochs)
                    for k in range(d.primary_replicates)
                    for a in arms
                    if k < d.replicates(a)
                ]
            return runs
        if stage == "descriptive":
            arms = [a for a in d.arms if a.role != "primary" and pilot_reg in a.regimes]
            return [
                Run("main", pilot_reg, a.name, k, rates[a.name], d.epochs)
                for k in range(d.descriptive_replicates)
                for a in arms
            ]
        raise ValueError(f"unknown stage {stage!r}; choose from {', '.join(STAGES)}")

    def double_arms(self) -> list[str]:
        """pc, the best learned compatibility by the main stage's mean test accuracy (pc itself if it is best, or
        if the main stage is incomplete), and uniform pooling."""
        from ltpa.study.results import Records

        names = [a.name for a in self.design.arms]
        learned = [n for n in ("att2-pc", "att2-dp", "att2-add") if n in names]
        best = "att2-pc"
        recs = Records.load(self.records, self.design)
        means = {n: recs.mean_accuracy(self.pilot_regime().name, n) for n in learned}
        finite = {n: v for n, v in means.items() if v is not None}
        if finite:
            best = max(finite, key=lambda n: finite[n])
        out = [n for n in dict.fromkeys(["att2-pc", best, "att2-uniform"]) if n in names]
        return out

    def run(self, stages: tuple[str, ...] = STAGES) -> None:
        """Runs ``stages`` in order (each skips what its records show done)."""
        rates = self.pilot() if "pilot" in stages else self.rates()
        if rates is None:
            raise RuntimeError("the pilot stage has not finished; run it first")
        for stage in stages:
            if stage == "pilot":
                continue
            with self.timed(stage):
                self.execute(self.stage_runs(stage, rates))


def default_design(smoke: bool) -> Design:
    return SMOKE if smoke else DESIGN
