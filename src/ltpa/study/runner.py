"""The study runner: resumable stages (pilot, train, evaluate, report), each picking up where the last ended.

Layout under the output folder (default ``runs/study``)::

    pilot/<arm>/lr<rate>/   short runs that choose each family's peak learning rate (pilot.json)
    train/<arm>/r<k>/       the study's training runs (ordinary ltpa run folders)
    eval/<arm>-r<k>.json    per-run measurements; eval/<arm>-r<k>.pt per-image results used for pairing
    timing.json             wall seconds per stage, summed over invocations
    study.log               what ran, when

Stopping at any point (Ctrl-C, a killed job) loses at most the run in progress, which resumes from its last
saved epoch.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ltpa.study.design import ARMS, PILOT_ARMS, PRIMARY_ARMS, Design

__all__ = ["Study", "completed_epochs", "read_history"]

log = logging.getLogger("ltpa.study")


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch rows of a run folder (empty when it has none yet)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def completed_epochs(run_dir: Path) -> int:
    rows = read_history(run_dir)
    return max((int(r["epoch"]) for r in rows), default=0)


@dataclass
class Study:
    """The study in ``out``; ``design`` fixes its size (``ltpa.study.design.Design``)."""

    out: Path
    design: Design = field(default_factory=Design)
    threads: int | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.out.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------------------------------- plumbing

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Adds the wall time spent inside to ``timing.json[stage]`` (also when interrupted)."""
        from ltpa.study.sections.method import source_commit

        start, commit = time.perf_counter(), source_commit()
        try:
            yield
        finally:
            path = self.out / "timing.json"
            timing = json.loads(path.read_text()) if path.exists() else {}
            timing[stage] = round(timing.get(stage, 0.0) + time.perf_counter() - start, 1)
            commits = timing.setdefault("commits", {}).setdefault(stage, [])
            if commit not in commits:
                commits.append(commit)
            path.write_text(json.dumps(timing, indent=1))

    def _fit(self, arm: str, replicate: int, lr: float, epochs: int, run_dir: Path) -> None:
        from ltpa.config import resolve_config
        from ltpa.train import fit

        if completed_epochs(run_dir) >= epochs:
            return
        overrides = self.design.train_overrides(arm, replicate, lr, epochs)
        overrides.update(out=str(run_dir), quiet=True, device=self.device, threads=self.threads)
        cfg = resolve_config(overrides=overrides)
        started = time.perf_counter()
        if run_dir.exists():
            log.info("resume %s (epoch %d of %d)", run_dir, completed_epochs(run_dir), epochs)
            fit(cfg, resume=run_dir, changes={"quiet": True, "device": self.device})
        else:
            log.info("train %s: %s, lr %g, %d epochs", run_dir, ARMS[arm].model, lr, epochs)
            fit(cfg)
        rows = read_history(run_dir)
        log.info(
            "done %s in %.0f s: val %.2f%% (train %.2f%%)",
            run_dir,
            time.perf_counter() - started,
            100 * rows[-1]["test_accuracy"],
            100 * rows[-1]["train_accuracy"],
        )

    # ------------------------------------------------------------------------------------------- stages

    def pilot(self) -> dict[str, float]:
        """Short runs (replicate 0, ``pilot_epochs``) over the learning-rate grid; returns the rate per family.

        Each family takes the rate whose final validation accuracy, averaged over the family's primary arms,
        is highest (ties: the smaller rate). Result in ``pilot.json``.
        """
        path = self.out / "pilot.json"
        if path.exists():
            return dict(json.loads(path.read_text())["lr"])
        d = self.design
        rows = []
        with self.timed("pilot"):
            for arm in PILOT_ARMS:
                for lr in d.lr_grid:
                    run_dir = self.out / "pilot" / arm / f"lr{lr:g}"
                    self._fit(arm, 0, lr, d.pilot_epochs, run_dir)
                    hist = read_history(run_dir)
                    rows.append({"arm": arm, "lr": lr, "val_accuracy": hist[-1]["test_accuracy"]})
        chosen: dict[str, float] = {}
        for family in sorted({ARMS[a].lr_family for a in PILOT_ARMS}):
            members = [a for a in PILOT_ARMS if ARMS[a].lr_family == family]
            score = {
                lr: sum(r["val_accuracy"] for r in rows if r["lr"] == lr and r["arm"] in members)
                / len(members)
                for lr in d.lr_grid
            }
            chosen[family] = max(sorted(score), key=lambda lr: score[lr])
        path.write_text(json.dumps({"lr": chosen, "runs": rows}, indent=1))
        log.info("pilot chose %s", chosen)
        return chosen

    def runs(self, arms: Sequence[str] | None = None) -> list[tuple[str, int]]:
        """``(arm, replicate)`` pairs in the order they train: primaries replicate by replicate, then the rest."""
        arms = list(arms or self.design.arms)
        order = [(a, k) for k in range(self.design.primary_replicates) for a in arms if a in PRIMARY_ARMS]
        order += [
            (a, k) for k in range(self.design.descriptive_replicates) for a in arms if a not in PRIMARY_ARMS
        ]
        return order

    def run_dir(self, arm: str, replicate: int) -> Path:
        return self.out / "train" / arm / f"r{replicate}"

    def train(self, arms: Sequence[str] | None = None) -> None:
        """Trains every ``(arm, replicate)`` not yet complete, at the pilot's rates."""
        rates = self.pilot()
        todo = self.runs(arms)
        with self.timed("train"):
            for i, (arm, k) in enumerate(todo):
                run_dir = self.run_dir(arm, k)
                if completed_epochs(run_dir) >= self.design.epochs:
                    continue
                log.info("[%d/%d] %s replicate %d", i + 1, len(todo), arm, k)
                self._fit(arm, k, rates[ARMS[arm].lr_family], self.design.epochs, run_dir)

    def converged(self, arm: str, replicate: int) -> bool:
        """Validation accuracy moved less than ``converge_points`` over the run's last two epochs."""
        rows = read_history(self.run_dir(arm, replicate))
        if len(rows) < 3:
            return False
        change = 100 * abs(rows[-1]["test_accuracy"] - rows[-3]["test_accuracy"])
        return change < self.design.converge_points
