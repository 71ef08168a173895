"""The committed records of a study, loaded once for the report: runs, replicate labels, timing, and the paired
values and statistics of every comparison. Nothing here reads a run folder."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ltpa.study.design import Comparison, Design, measure
from ltpa.study.runner import read_record, read_timing
from ltpa.study.stats import PairedResult, holm, paired_test, sign_flip_p

__all__ = ["ComparisonResult", "Records"]


@dataclass
class ComparisonResult:
    """A comparison's paired values, its test (with Holm within its family) and the exact sign-flip p."""

    comparison: Comparison
    a: list[float]
    b: list[float]
    replicates: list[int]
    result: PairedResult | None  # None with fewer than 2 pairs
    p_sign_flip: float


@dataclass
class Records:
    """Every record under ``root`` for ``design``."""

    root: Path
    design: Design
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> record
    labels_by: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    timing: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path, design: Design) -> Records:
        recs = cls(Path(root), design)
        if not recs.root.exists():
            return recs
        for path in sorted(recs.root.rglob("*.json.gz")):
            rel = path.relative_to(recs.root).as_posix().removesuffix(".json.gz")
            rec = read_record(path)
            if rel.startswith("data/"):
                recs.labels_by[(rec["regime"], int(rec["replicate"]))] = [int(v) for v in rec["labels"]]
            else:
                recs.runs[rel] = rec
        recs.timing = read_timing(recs.root / "timing.json")
        return recs

    # ------------------------------------------------------------------------------------------ lookups

    def run(self, regime: str, arm: str, replicate: int, stage: str = "main") -> dict[str, Any]:
        return self.runs[f"{stage}/{regime}/{arm}/r{replicate}"]

    def has(self, regime: str, arm: str, replicate: int, stage: str = "main") -> bool:
        return f"{stage}/{regime}/{arm}/r{replicate}" in self.runs

    def labels(self, regime: str, replicate: int) -> list[int]:
        return self.labels_by[(regime, replicate)]

    def replicates(self, regime: str, arm: str, stage: str = "main") -> list[int]:
        prefix = f"{stage}/{regime}/{arm}/r"
        return sorted(int(k.removeprefix(prefix)) for k in self.runs if k.startswith(prefix))

    def stage_runs(self, stage: str) -> list[tuple[str, dict[str, Any]]]:
        return [(k, r) for k, r in self.runs.items() if k.startswith(stage + "/")]

    def mean_accuracy(self, regime: str, arm: str, stage: str = "main") -> float | None:
        from ltpa.study.measures import accuracy_of

        vals = [
            accuracy_of(self.run(regime, arm, k, stage), self.labels(regime, k))
            for k in self.replicates(regime, arm, stage)
        ]
        return sum(vals) / len(vals) if vals else None

    # ------------------------------------------------------------------------------------------ comparisons

    def paired(self, comp: Comparison, stage: str = "main") -> tuple[list[float], list[float], list[int]]:
        """Both arms' values of ``comp`` on the replicates both have, where both are finite."""
        common = sorted(
            set(self.replicates(comp.regime, comp.arm_a, stage))
            & set(self.replicates(comp.regime, comp.arm_b, stage))
        )
        m = measure(comp.measure, self.design)
        view = self if stage == "main" else _StageView(self, stage)
        a, b, keep = [], [], []
        for k in common:
            va, vb = m.value(view, comp, k)
            if math.isfinite(va) and math.isfinite(vb):
                a.append(va)
                b.append(vb)
                keep.append(k)
        return a, b, keep

    def family(self, comps: tuple[Comparison, ...], stage: str = "main") -> list[ComparisonResult]:
        """Every comparison of one family, tested, with Holm across those that have at least 2 pairs."""
        out = []
        tested: list[PairedResult] = []
        for comp in comps:
            a, b, ks = self.paired(comp, stage)
            m = measure(comp.measure, self.design)
            if len(a) >= 2:
                r = paired_test(a, b, name=comp.key, delta=comp.delta, higher_is_better=m.higher_is_better)
                tested.append(r)
            else:
                r = None
            diffs = [x - y for x, y in zip(a, b)]
            out.append(
                ComparisonResult(comp, a, b, ks, r, sign_flip_p(diffs) if len(diffs) >= 2 else math.nan)
            )
        adjusted = iter(holm(tested)) if tested else iter(())
        for item in out:
            if item.result is not None:
                item.result = next(adjusted)
        return out


@dataclass
class _StageView:
    """``Records`` as seen by a measure's ``value`` function, reading another stage's runs."""

    records: Records
    stage: str

    @property
    def design(self) -> Design:
        return self.records.design

    def run(self, regime: str, arm: str, replicate: int) -> dict[str, Any]:
        return self.records.run(regime, arm, replicate, self.stage)

    def labels(self, regime: str, replicate: int) -> list[int]:
        return self.records.labels(regime, replicate)
