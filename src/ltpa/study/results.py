"""Everything a study folder holds, loaded once for the report: per-run evaluations, references, learning
curves, the pilot, timings, and the paired values each comparison needs."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch

from ltpa.study.design import ARMS, FOOLING_EPS, Comparison
from ltpa.study.runner import Study, read_history

__all__ = ["Results", "load_results"]


@dataclass
class Results:
    study: Study
    evals: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    references: dict[int, dict[str, Any]] = field(default_factory=dict)
    histories: dict[tuple[str, int], list[dict[str, Any]]] = field(default_factory=dict)
    pilot: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, Any] = field(default_factory=dict)

    @property
    def arms(self) -> list[str]:
        """Arms with at least one evaluated run, in the design's order."""
        return [a for a in self.study.design.arms if any(arm == a for arm, _ in self.evals)]

    def replicates(self, arm: str) -> list[int]:
        return sorted(k for a, k in self.evals if a == arm)

    def values(self, arm: str, path: tuple[str, ...]) -> list[float]:
        """One value per evaluated replicate of ``arm``, read at ``path`` in its evaluation."""
        out = []
        for k in self.replicates(arm):
            node: Any = self.evals[(arm, k)]
            for key in path:
                node = node[key]
            out.append(float(node))
        return out

    def reference_values(self, path: tuple[str, ...]) -> list[float]:
        out = []
        for k in sorted(self.references):
            node: Any = self.references[k]
            for key in path:
                node = node[key]
            out.append(float(node))
        return out

    def attack_record(self, arm: str, replicate: int) -> dict[str, Any]:
        return _load_record(self.study.out / "eval" / f"{arm}-r{replicate}.pt")

    def fooling(
        self, arm_a: str, arm_b: str, replicate: int, eps: float, attack: str = "fgsm"
    ) -> tuple[float, float, int]:
        """Fooling rates (%) of both arms over the images both classify correctly when clean."""
        ra, rb = self.attack_record(arm_a, replicate), self.attack_record(arm_b, replicate)
        n = min(len(ra[attack][eps]), len(rb[attack][eps]))
        both = ra["clean"][:n] & rb["clean"][:n]
        count = int(both.sum())
        if count == 0:
            return float("nan"), float("nan"), 0
        rate_a = 100.0 * float((~ra[attack][eps][:n][both]).float().mean())
        rate_b = 100.0 * float((~rb[attack][eps][:n][both]).float().mean())
        return rate_a, rate_b, count

    def paired(self, comp: Comparison) -> tuple[list[float], list[float], list[int]]:
        """The two arms' values of ``comp`` on the replicates both have (and where both are defined: a fooling
        rate needs images both models classify correctly), with those replicates."""
        common = sorted(set(self.replicates(comp.arm_a)) & set(self.replicates(comp.arm_b)))
        a, b = [], []
        for k in common:
            if comp.metric == "fooling":
                ra, rb, _ = self.fooling(comp.arm_a, comp.arm_b, k, FOOLING_EPS)
                a.append(ra)
                b.append(rb)
            else:
                a.append(_metric(self.evals[(comp.arm_a, k)], comp.metric, comp.map_a))
                b.append(_metric(self.evals[(comp.arm_b, k)], comp.metric, comp.map_b))
        keep = [i for i in range(len(common)) if math.isfinite(a[i]) and math.isfinite(b[i])]
        return [a[i] for i in keep], [b[i] for i in keep], [common[i] for i in keep]


def _metric(result: dict[str, Any], metric: str, map_name: str) -> float:
    if metric == "test_accuracy":
        return float(result["test_accuracy"])
    if metric in ("pointing", "ap", "auc", "iou"):
        return float(result["maps"][map_name][metric])
    if metric.startswith("transfer_"):
        return float(result["transfer"][metric.removeprefix("transfer_")])
    raise KeyError(metric)


@cache
def _load_record(path: Path) -> dict[str, Any]:
    return dict(torch.load(path, weights_only=True))


def load_results(study: Study) -> Results:
    """Reads every evaluation, reference, history, the pilot and timings of ``study``."""
    res = Results(study)
    eval_dir = study.out / "eval"
    for arm, k in study.runs():
        path = eval_dir / f"{arm}-r{k}.json"
        if path.exists():
            res.evals[(arm, k)] = json.loads(path.read_text())
        hist = read_history(study.run_dir(arm, k))
        if hist:
            res.histories[(arm, k)] = hist
    for path in sorted(eval_dir.glob("reference-r*.json")):
        ref = json.loads(path.read_text())
        res.references[int(ref["replicate"])] = ref
    if (study.out / "pilot.json").exists():
        res.pilot = json.loads((study.out / "pilot.json").read_text())
    if (study.out / "timing.json").exists():
        res.timing = json.loads((study.out / "timing.json").read_text())
    unknown = sorted({a for a, _ in res.evals} - set(ARMS))
    if unknown:
        raise KeyError(f"evaluations of unknown arms: {unknown}")
    return res
