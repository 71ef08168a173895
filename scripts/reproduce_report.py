"""The report stage of ``scripts/reproduce_cpu.py``: reads its runs and ``ltpa`` outputs, writes
``docs/results.md``, the per-run tables in ``docs/results/`` and the figures ``docs/figures/results_*.png``.

Every number in the report is computed here from the run folders; nothing is typed in. Statistics: mean and
sample standard deviation over seeds; a comparison is Welch's two-sided t-test over the per-seed values. With
three seeds a test has little power, so "not significant" means "not shown", not "no difference".
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from reproduce_cpu import (
    ATTACK_LIMIT,
    FGSM_EPS,
    MAP_LIMIT,
    MATCHED_WIDTH,
    MODELS,
    PGD_EPS,
    PGD_STEPS,
    RECIPE,
    SUITES,
    TRANSFER_CS,
    TRANSFER_FOLDS,
    TRANSFER_LIMIT,
    TRANSFER_TARGETS,
    WIDTH,
)

from ltpa.evaluate._results import write_csv

ATTENTION = ("att2-pc", "att2-dp", "att2-add", "att3-pc", "att3-dp")
ALPHA = 0.05
# published Fashion-MNIST test accuracies (github.com/zalandoresearch/fashion-mnist, README benchmark table)
FASHION_PUBLISHED = (
    ("2 conv + pooling + BN (README table)", 0.934),
    ("WRN-40-4 (README table)", 0.967),
)
NAMES = {
    "vgg": "VGG (baseline)",
    "vgg-matched": f"VGG, width {MATCHED_WIDTH:g} (compute-matched)",
    "gap": "VGG-GAP",
    "pan": "PAN",
    "att2-pc": "(VGG-att2)-concat-pc",
    "att2-dp": "(VGG-att2)-concat-dp",
    "att2-add": "(VGG-att2)-concat-add",
    "att3-pc": "(VGG-att3)-concat-pc",
    "att3-dp": "(VGG-att3)-concat-dp",
}


# ---------------------------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Stat:
    """Values over seeds."""

    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        n = len(self.values)
        if n < 2:
            return math.nan
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (n - 1))

    def fmt(self, scale: float = 100.0, digits: int = 1) -> str:
        if not self.values:
            return "-"
        if len(self.values) == 1:
            return f"{self.mean * scale:.{digits}f}"
        return f"{self.mean * scale:.{digits}f} ± {self.std * scale:.{digits}f}"


def welch_p(a: Stat, b: Stat) -> float:
    """Two-sided Welch t-test p-value of ``a`` vs ``b`` (nan when it cannot be computed)."""
    from scipy import stats

    if len(a.values) < 2 or len(b.values) < 2:
        return math.nan
    if math.isclose(a.mean, b.mean, rel_tol=1e-12, abs_tol=1e-12):
        return 1.0
    if a.std == 0 and b.std == 0:
        return 0.0
    with warnings.catch_warnings():  # near-identical samples: scipy warns, the p-value is still usable
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(a.values, b.values, equal_var=False).pvalue)


def lower_is_better(s: Stat) -> Stat:
    """``s`` negated, so that :func:`compare` reads a smaller value (a fooling rate) as better."""
    return Stat(tuple(-v for v in s.values))


def compare(a: Stat, b: Stat) -> str:
    """``a`` against ``b``: one of ``better``, ``better (n.s.)``, ``worse (n.s.)``, ``worse``, ``n/a``."""
    p = welch_p(a, b)
    if math.isnan(p) or math.isnan(a.mean) or math.isnan(b.mean):
        return "n/a"
    side = "better" if a.mean > b.mean else "worse"
    return side if p < ALPHA else f"{side} (n.s.)"


def diff_cell(a: Stat, b: Stat, scale: float = 100.0) -> str:
    p = welch_p(a, b)
    ptxt = "" if math.isnan(p) else f" (p={p:.2g})"
    return f"{(a.mean - b.mean) * scale:+.1f}{ptxt}"


def verdict(outcomes: Sequence[str]) -> str:
    """A claim's verdict from its comparisons: held when most are significantly better."""
    n = len(outcomes)
    better = sum(o == "better" for o in outcomes)
    worse = sum(o == "worse" for o in outcomes)
    if n and better * 2 > n:
        return f"held ({better} of {n} comparisons significantly better)"
    if n and worse * 2 > n:
        return f"contradicted ({worse} of {n} comparisons significantly worse)"
    ahead = sum(o.startswith("better") for o in outcomes)
    return f"not shown ({better} of {n} significantly better, {worse} significantly worse, {ahead} ahead on the mean)"


# ---------------------------------------------------------------------------------------------- reading


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _split(run: str) -> tuple[str, int]:
    """``att2-pc-s1`` -> (``att2-pc``, 1)."""
    label, _, seed = run.rpartition("-s")
    return label, int(seed)


class Results:
    """Everything the runs wrote, keyed by suite, model label and seed."""

    def __init__(self, out: Path, seeds: Sequence[int]) -> None:
        self.out = out
        self.seeds = list(seeds)
        self.train: dict[tuple[str, str, int], dict[str, Any]] = {}
        self.missing: list[str] = []
        for suite in SUITES.values():
            for label in suite.models:
                for seed in self.seeds:
                    folder = out / suite.name / f"{label}-s{seed}"
                    if not (folder / "last.json").exists():
                        self.missing.append(str(folder))
                        continue
                    last = _csv(folder / "metrics.csv")[-1]
                    info = json.loads((folder / "run.json").read_text())
                    self.train[suite.name, label, seed] = {
                        "test_accuracy": float(last["test_accuracy"]),
                        "train_seconds": sum(float(r["seconds"]) for r in _csv(folder / "metrics.csv")),
                        "images_per_s": float(last["images_per_s"]),
                        "params": int(info["params"]),
                        "train_images": int(info["train_images"]),
                        "test_images": int(info["test_images"]),
                        "epochs": int(last["epoch"]),
                    }
        self.rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for kind in ("fgsm", "pgd", "localize", "segment", "transfer"):
            for suite in SUITES:
                for seed in self.seeds:
                    name = "attack.csv" if kind in ("fgsm", "pgd") else f"{kind}.csv"
                    path = out / "eval" / suite / f"{kind}-s{seed}" / name
                    if not path.exists():
                        continue
                    for row in _csv(path):
                        row = {"suite": suite, "seed": seed, **row}
                        if row["model"] != "baseline":
                            row["label"] = _split(row["model"])[0]
                        self.rows[kind].append(row)

    def stat(self, suite: str, label: str, key: str) -> Stat:
        return Stat(
            tuple(self.train[suite, label, s][key] for s in self.seeds if (suite, label, s) in self.train)
        )

    def eval_stat(self, kind: str, match: Callable[[dict[str, Any]], bool], key: str) -> Stat:
        """Values of ``key`` over seeds among rows of ``kind`` that ``match`` (one per seed expected)."""
        by_seed: dict[int, float] = {}
        for row in self.rows[kind]:
            if match(row):
                by_seed[row["seed"]] = float(row[key])
        return Stat(tuple(by_seed[s] for s in sorted(by_seed)))


# ---------------------------------------------------------------------------------------------- cost


def model_cost(label: str) -> dict[str, float]:
    """Parameters, forward and training-step (forward + backward) GFLOP per image, and the side of the map
    Grad-CAM explains (its target layer's output on a 32x32 image)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    import ltpa
    from ltpa.evaluate import gradcam_target_layer

    name, width = MODELS[label]
    model = ltpa.create_model(name, width=width, num_classes=10)
    x = torch.rand(2, 3, 32, 32)
    model.eval()
    with FlopCounterMode(display=False) as fwd, torch.no_grad():
        model(x)
    model.train()
    with FlopCounterMode(display=False) as step:
        F.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    sides: list[int] = []
    hook = gradcam_target_layer(model).register_forward_hook(lambda m, i, o: sides.append(int(o.shape[-1])))
    with torch.no_grad():
        model(x)
    hook.remove()
    return {
        "params": float(sum(p.numel() for p in model.parameters())),
        "gflop_forward": fwd.get_total_flops() / 2 / 1e9,
        "gflop_train": step.get_total_flops() / 2 / 1e9,
        "gradcam_side": float(sides[0]),
    }


# ---------------------------------------------------------------------------------------------- tables


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(header) - 1)
    marks = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """``rows`` under the union of their keys (a missing key is an empty cell), through ltpa's writer."""
    if rows:
        keys = list(dict.fromkeys(k for r in rows for k in r))
        write_csv(path, [{k: r.get(k, "") for k in keys} for r in rows], keys)


# ---------------------------------------------------------------------------------------------- figures


def _bars(
    ax: Any, labels: Sequence[str], stats: Sequence[Stat], scale: float = 100.0, colour: Any = None
) -> None:
    xs = range(len(labels))
    means = [s.mean * scale for s in stats]
    errs = [0.0 if math.isnan(s.std) else s.std * scale for s in stats]
    ax.bar(xs, means, yerr=errs, capsize=3, color=colour)
    for x, s in zip(xs, stats, strict=True):
        ax.scatter([x] * len(s.values), [v * scale for v in s.values], s=8, color="black", zorder=3)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)


def _colours(labels: Sequence[str]) -> list[str]:
    return [
        "tab:orange" if lab in ATTENTION else "tab:grey" if lab.startswith("vgg") else "tab:blue"
        for lab in labels
    ]


def _map_colours(labels: Sequence[str]) -> list[str]:
    """Bar colours of map labels such as ``"att2-pc attn"``, ``"pan attn"``, ``"gap CAM"``, ``"vgg Grad-CAM"``."""
    out = []
    for lab in labels:
        if lab.replace("\n", " ").endswith("attn"):
            out.append("tab:green" if lab.startswith("pan") else "tab:orange")
        elif lab.replace("\n", " ").endswith(" CAM") and "Grad" not in lab:
            out.append("tab:blue")
        else:
            out.append("tab:grey")
    return out


# ---------------------------------------------------------------------------------------------- report


def write_report(out: Path, docs: Path, *, seeds: Sequence[int], scale: float = 1.0) -> Path:
    """Writes ``docs/results.md``, ``docs/results/*.csv`` and ``docs/figures/results_*.png``; returns the page."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from ltpa.system import describe_device

    res = Results(out, seeds)
    if not res.train:
        raise SystemExit(f"report: no finished runs under {out}; run the train and eval stages first")
    tables = docs / "results"
    figures = docs / "figures"
    tables.mkdir(parents=True, exist_ok=True)
    figures.mkdir(parents=True, exist_ok=True)
    md: list[str] = []
    claims: list[tuple[str, str, str]] = []  # (claim, verdict, evidence)

    # per-run tables, for anyone who wants other statistics
    _write_csv(
        tables / "training.csv",
        [{"suite": k[0], "model": k[1], "seed": k[2], **v} for k, v in sorted(res.train.items())],
    )
    for kind, rows in res.rows.items():
        keep = [r for r in rows if r.get("class", "mean") == "mean"]
        _write_csv(tables / f"{kind}.csv", keep)
    commands = out / "commands.txt"
    if commands.exists():
        shutil.copyfile(commands, tables / "commands.txt")

    costs = {label: model_cost(label) for label in MODELS}
    fashion, cluttered = SUITES["fashion"], SUITES["cluttered"]

    def acc(suite: str, label: str) -> Stat:
        return res.stat(suite, label, "test_accuracy")

    # ------------------------------------------------------------------ 1. accuracy
    md.append("## 1. Classification accuracy\n")
    md.append(
        "Test accuracy (%), mean ± std over seeds; Δ is against the baseline VGG of the same suite, with Welch's "
        "p. The compute-matched VGG trains only in the Fashion-MNIST suite.\n"
    )
    rows = []
    outcomes_base, outcomes_matched = [], []
    for label in MODELS:
        f, c = acc("fashion", label), acc("cluttered", label)
        rows.append(
            [
                NAMES[label],
                f.fmt(),
                diff_cell(f, acc("fashion", "vgg")) if label != "vgg" else "",
                c.fmt() if label in cluttered.models else "-",
                diff_cell(c, acc("cluttered", "vgg")) if label in cluttered.models and label != "vgg" else "",
            ]
        )
        if label in ATTENTION:
            outcomes_base += [compare(f, acc("fashion", "vgg")), compare(c, acc("cluttered", "vgg"))]
            outcomes_matched.append(compare(f, acc("fashion", "vgg-matched")))
    md.append(table(["model", "Fashion-MNIST", "Δ vs VGG", "cluttered-fashion", "Δ vs VGG"], rows))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, suite in zip(axes, (fashion, cluttered), strict=True):
        labels = list(suite.models)
        _bars(ax, labels, [acc(suite.name, lab) for lab in labels], colour=_colours(labels))
        means = [acc(suite.name, lab).mean * 100 for lab in labels]
        finite = [m for m in means if not math.isnan(m)]
        if finite:
            ax.set_ylim(max(0.0, min(finite) - 5), min(100.0, max(finite) + 2))
        ax.set_title(f"{suite.data}: test accuracy (%)")
    fig.tight_layout()
    fig.savefig(figures / "results_accuracy.png", dpi=110)
    plt.close(fig)
    md.append("\n![accuracy](figures/results_accuracy.png)\n")
    v = verdict(outcomes_base)
    md.append(f"**Claim: attention beats the baseline VGG.** Verdict: {v}; 5 attention models x 2 suites.\n")
    claims.append(
        ("Attention models classify better than the baseline VGG (method §4.1)", v, "5 models x 2 suites")
    )

    # ------------------------------------------------------------------ 2. cost
    md.append("## 2. Cost, and a compute-matched baseline\n")
    md.append(
        "FLOPs are counted by `torch.utils.flop_counter` on a 32x32 image; a training step is forward + "
        "backward. Training time is the Fashion-MNIST run's one pass over its training images, one thread per "
        "run with two runs side by side on the 2-core machine (so read it as a ratio). The attention VGG "
        "removes two max-pools (method §2.2), so its trunk runs at 4x and 16x the baseline's resolution in its "
        f"last blocks; the compute-matched VGG is the baseline at width {MATCHED_WIDTH:g} instead of {WIDTH:g}, "
        "which costs the same FLOPs per image, so it gets the same training FLOPs in the same number of steps.\n"
    )
    rows = []
    base_flops = costs["vgg"]["gflop_train"]
    for label in MODELS:
        c = costs[label]
        t = res.stat("fashion", label, "train_seconds")
        ips = res.stat("fashion", label, "images_per_s")
        rows.append(
            [
                NAMES[label],
                f"{c['params'] / 1e6:.2f} M",
                f"{c['gflop_forward'] * 1e3:.1f}",
                f"{c['gflop_train'] / base_flops:.1f}x",
                t.fmt(1.0, 0),
                ips.fmt(1.0, 0),
            ]
        )
    md.append(
        table(
            [
                "model",
                "params",
                "MFLOP/image (forward)",
                "training FLOPs vs VGG",
                "training time (s)",
                "images/s",
            ],
            rows,
        )
    )
    rows = []
    for label in ATTENTION:
        f = acc("fashion", label)
        rows.append(
            [
                NAMES[label],
                f.fmt(),
                diff_cell(f, acc("fashion", "vgg-matched")),
                compare(f, acc("fashion", "vgg-matched")),
            ]
        )
    md.append("\nAttention models against the compute-matched VGG on Fashion-MNIST (accuracy %):\n")
    md.append(table(["model", "accuracy", "Δ vs compute-matched VGG", "outcome"], rows, "lrrl"))
    fig, ax = plt.subplots(figsize=(6, 4))
    for label in fashion.models:
        a = acc("fashion", label)
        flops = costs[label]["gflop_train"] * res.train.get(("fashion", label, 0), {}).get("train_images", 0)
        ax.errorbar(
            [flops / 1e3],
            [a.mean * 100],
            yerr=[0 if math.isnan(a.std) else a.std * 100],
            fmt="o",
            color=_colours([label])[0],
            capsize=3,
        )
        ax.annotate(label, (flops / 1e3, a.mean * 100), fontsize=7, xytext=(4, 2), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("training TFLOP per run (log)")
    ax.set_ylabel("Fashion-MNIST test accuracy (%)")
    ax.set_title("accuracy against training compute")
    fig.tight_layout()
    fig.savefig(figures / "results_cost.png", dpi=110)
    plt.close(fig)
    md.append("\n![cost](figures/results_cost.png)\n")
    v = verdict(outcomes_matched)
    md.append(f"**Is the gain attention or compute?** Attention models vs the compute-matched VGG: {v}.\n")
    claims.append(
        (
            "... accuracy: and still when the baseline gets the same training FLOPs",
            v,
            "5 models, Fashion-MNIST",
        )
    )
    md.append(
        "A second control, in both suites: VGG-GAP has the attention VGG's trunk (the same two max-pools "
        "removed, the same FLOPs) and pools it globally instead of attending (method §2.5). Attention models "
        "against it (accuracy %, Δ with Welch's p):\n"
    )
    rows = []
    outcomes_trunk = []
    for label in ATTENTION:
        cells = []
        for suite in ("fashion", "cluttered"):
            a, g = acc(suite, label), acc(suite, "gap")
            cells.append(diff_cell(a, g))
            outcomes_trunk.append(compare(a, g))
        rows.append([NAMES[label], *cells])
    md.append(table(["model", "Δ vs VGG-GAP, Fashion-MNIST", "Δ vs VGG-GAP, cluttered-fashion"], rows))
    v = verdict(outcomes_trunk)
    md.append(f"\nAttention against the same trunk without attention: {v}.\n")
    claims.append(
        ("... accuracy: against the same trunk without attention (VGG-GAP)", v, "5 models x 2 suites")
    )

    # ------------------------------------------------------------------ 3. Fashion-MNIST vs published
    md.append("## 3. Fashion-MNIST against published figures\n")
    n_train = res.train.get(("fashion", "att2-pc", seeds[0]), {}).get("train_images", 0)
    md.append(
        f"Our budget: {n_train:,} training images seen once (one epoch), no augmentation, width {WIDTH:g}, on "
        "a 2-core CPU in a few minutes per model. The published figures train on all 60,000 images for many "
        "epochs; they are a ceiling, not a like-for-like comparison.\n"
    )
    best = max(fashion.models, key=lambda lab: acc("fashion", lab).mean if acc("fashion", lab).values else -1)
    rows = [[name, f"{value * 100:.1f}", "published"] for name, value in FASHION_PUBLISHED]
    rows += [
        [NAMES["vgg"], acc("fashion", "vgg").fmt(), "this run"],
        [f"{NAMES[best]} (best here)", acc("fashion", best).fmt(), "this run"],
    ]
    md.append(table(["model", "test accuracy (%)", "source"], rows, "lrl"))

    # ------------------------------------------------------------------ 4. localisation
    md.append("\n## 4. Where the maps look: localisation on cluttered-fashion\n")
    md.append(
        f"`ltpa localize` on the first {MAP_LIMIT} test images. *Mass in box*: the share of the (upsampled, "
        "sum-normalised) map inside the object's bounding box; *pointing*: how often the map's maximum falls "
        "on the object mask. Attention rows use the mean of a model's levels (per level below); CAM is the GAP "
        "model's class activation map; Grad-CAM is computed on each model's last conv block. The uniform and "
        "centred-Gaussian maps are what a map that ignores the image scores.\n"
    )

    def loc(label: str, level: str, key: str) -> Stat:
        return res.eval_stat("localize", lambda r: r.get("label") == label and r["level"] == level, key)

    def loc_base(level: str, key: str) -> Stat:
        return res.eval_stat("localize", lambda r: r["model"] == "baseline" and r["level"] == level, key)

    attn_level = {lab: "mean" for lab in (*ATTENTION, "pan")}
    attn_level["gap"] = "conv13"
    rows = []
    loc_rows: list[tuple[str, Stat, Stat]] = []
    for label in cluttered.models:
        if label in attn_level:
            kind = "CAM" if label == "gap" else "attention (mean of levels)"
            m, p = (
                loc(label, attn_level[label], "mass_in_box"),
                loc(label, attn_level[label], "pointing_accuracy"),
            )
            rows.append([NAMES[label], kind, m.fmt(), p.fmt()])
            loc_rows.append((f"{label}\n{'CAM' if label == 'gap' else 'attn'}", m, p))
        m, p = loc(label, "gradcam", "mass_in_box"), loc(label, "gradcam", "pointing_accuracy")
        rows.append([NAMES[label], "Grad-CAM", m.fmt(), p.fmt()])
        loc_rows.append((f"{label}\nGrad-CAM", m, p))
    for level in ("uniform", "gaussian"):
        m, p = loc_base(level, "mass_in_box"), loc_base(level, "pointing_accuracy")
        rows.append([f"{level} map", "-", m.fmt(), p.fmt()])
        loc_rows.append((level, m, p))
    md.append(table(["model", "map", "mass in box (%)", "pointing (%)"], rows, "llrr"))
    level_rows = []
    for label in (*ATTENTION, "pan"):
        levels = sorted(
            {r["level"] for r in res.rows["localize"] if r.get("label") == label} - {"gradcam", "mean"}
        )
        for level in levels:
            level_rows.append(
                [
                    NAMES[label],
                    level,
                    loc(label, level, "mass_in_box").fmt(),
                    loc(label, level, "pointing_accuracy").fmt(),
                ]
            )
    md.append("\nPer attention level:\n")
    md.append(table(["model", "level", "mass in box (%)", "pointing (%)"], level_rows, "llrr"))
    fig, ax = plt.subplots(figsize=(11, 3.8))
    labels = [r[0] for r in loc_rows]
    cols = _map_colours(labels)
    _bars(ax, labels, [r[1] for r in loc_rows], colour=cols)
    ax.set_xticklabels([lab.replace("\n", " ") for lab in labels], rotation=40, ha="right", fontsize=7)
    ax.set_ylabel("map mass inside the object box (%)")
    ax.set_title(
        "localisation on cluttered-fashion (orange: attention, green: PAN, blue: CAM, grey: Grad-CAM, priors)"
    )
    fig.tight_layout()
    fig.savefig(figures / "results_localize.png", dpi=110)
    plt.close(fig)
    md.append("\n![localisation](figures/results_localize.png)\n")
    outcomes = []
    vs_gradcam = []
    for label in ATTENTION:
        for key in ("mass_in_box", "pointing_accuracy"):
            a = loc(label, "mean", key)
            outcomes.append(compare(a, loc("gap", "conv13", key)))
            vs_gradcam.append(compare(a, loc("vgg", "gradcam", key)))
    md.append(
        f"Grad-CAM explains a model's last conv block: {costs['vgg']['gradcam_side']:.0f}x"
        f"{costs['vgg']['gradcam_side']:.0f} in the baseline VGG (four max-pools precede it) and "
        f"{costs['att2-pc']['gradcam_side']:.0f}x{costs['att2-pc']['gradcam_side']:.0f} in the GAP and attention "
        "trunk, so the baseline's Grad-CAM is close to a uniform map here. The GAP model's CAM, on the same trunk "
        "as the attention models, is the like-for-like comparison.\n"
    )
    v_gradcam = verdict(vs_gradcam)
    v = verdict(outcomes)
    md.append(
        f"**Claim: attention maps highlight the object better than other CNN maps.** Attention (mean of levels) "
        f"against the GAP model's CAM, on mass in box and pointing: {v}. Against the baseline's Grad-CAM: "
        f"{v_gradcam}.\n"
    )
    claims.append(
        (
            "Attention maps find the object better than the baseline's Grad-CAM (method §4.3, §4.5)",
            v_gradcam,
            "5 models x 2 metrics",
        )
    )
    claims.append(
        (
            "... localisation: and better than CAM on the same trunk (VGG-GAP)",
            v,
            "5 models x 2 metrics",
        )
    )

    # ------------------------------------------------------------------ 5. segmentation
    md.append("## 5. Weakly supervised segmentation: Jaccard on cluttered-fashion\n")
    md.append(
        f"`ltpa segment` on the first {MAP_LIMIT} test images: each map upsampled, min-max scaled, binarised and "
        "compared with the object's mask (intersection over union, mean over classes). *Fixed*: threshold "
        "0.5; *Otsu*: per-image Otsu threshold; *oracle*: the best threshold per class (an upper bound). "
        "Otsu is the primary rule: it needs no tuning on the masks.\n"
    )

    def seg(label: str, kind: str, level: str | None, rule: str) -> Stat:
        return res.eval_stat(
            "segment",
            lambda r: (
                r.get("label") == label
                and r["map"] == kind
                and (level is None or r["level"] == level)
                and r["threshold_rule"] == rule
                and r["class"] == "mean"
            ),
            "jaccard",
        )

    def seg_base(kind: str, rule: str) -> Stat:
        return res.eval_stat(
            "segment",
            lambda r: (
                r["model"] == "baseline"
                and r["map"] == kind
                and r["threshold_rule"] == rule
                and r["class"] == "mean"
            ),
            "jaccard",
        )

    rules = ("fixed", "otsu", "oracle")
    rows = []
    seg_rows: list[tuple[str, Stat]] = []
    for label in cluttered.models:
        if label in (*ATTENTION, "pan"):
            rows.append(
                [NAMES[label], "attention (mean)", *(seg(label, "attention", "mean", r).fmt() for r in rules)]
            )
            seg_rows.append((f"{label} attn", seg(label, "attention", "mean", "otsu")))
        if label == "gap":
            rows.append([NAMES[label], "CAM", *(seg(label, "cam", None, r).fmt() for r in rules)])
            seg_rows.append(("gap CAM", seg(label, "cam", None, "otsu")))
        rows.append([NAMES[label], "Grad-CAM", *(seg(label, "gradcam", None, r).fmt() for r in rules)])
        seg_rows.append((f"{label} Grad-CAM", seg(label, "gradcam", None, "otsu")))
    for kind in ("uniform", "gaussian"):
        rows.append([f"{kind} map", "-", *(seg_base(kind, r).fmt() for r in rules)])
        seg_rows.append((kind, seg_base(kind, "otsu")))
    md.append(
        table(["model", "map", "Jaccard fixed (%)", "Jaccard Otsu (%)", "Jaccard oracle (%)"], rows, "llrrr")
    )
    level_rows = []
    for label in (*ATTENTION, "pan"):
        levels = sorted(
            {r["level"] for r in res.rows["segment"] if r.get("label") == label and r["map"] == "attention"}
            - {"mean"}
        )
        for level in levels:
            level_rows.append(
                [NAMES[label], level, *(seg(label, "attention", level, r).fmt() for r in rules)]
            )
    md.append("\nPer attention level:\n")
    md.append(table(["model", "level", "fixed (%)", "Otsu (%)", "oracle (%)"], level_rows, "llrrr"))
    fig, ax = plt.subplots(figsize=(11, 3.8))
    labels = [r[0] for r in seg_rows]
    cols = _map_colours(labels)
    _bars(ax, labels, [r[1] for r in seg_rows], colour=cols)
    ax.set_ylabel("Jaccard, Otsu threshold (%)")
    ax.set_title(
        "segmentation on cluttered-fashion (orange: attention, green: PAN, blue: CAM, grey: Grad-CAM, priors)"
    )
    fig.tight_layout()
    fig.savefig(figures / "results_segment.png", dpi=110)
    plt.close(fig)
    md.append("\n![segmentation](figures/results_segment.png)\n")
    example = out / "eval" / "cluttered" / f"segment-s{seeds[0]}" / f"segment_att2-pc-s{seeds[0]}.png"
    if example.exists():
        shutil.copyfile(example, figures / "results_segment_examples.png")
        md.append(
            f"Examples (seed {seeds[0]}, (VGG-att2)-concat-pc; written by `ltpa segment`):\n\n"
            "![segmentation examples](figures/results_segment_examples.png)\n"
        )
    outcomes, vs_gradcam = [], []
    for label in ATTENTION:
        a = seg(label, "attention", "mean", "otsu")
        outcomes.append(compare(a, seg("gap", "cam", None, "otsu")))
        vs_gradcam.append(compare(a, seg("vgg", "gradcam", None, "otsu")))
    v, v_gradcam = verdict(outcomes), verdict(vs_gradcam)
    md.append(
        f"**Claim: binarised attention maps segment better than other CNN maps.** Attention (mean of levels, "
        f"Otsu) against the baseline's Grad-CAM: {v_gradcam}. Against CAM on the same trunk: {v}.\n"
    )
    claims.append(
        (
            "Binarised attention maps segment better than the baseline's Grad-CAM (method §4.3)",
            v_gradcam,
            "5 models, Otsu",
        )
    )
    claims.append(("... segmentation: and better than CAM on the same trunk (VGG-GAP)", v, "5 models, Otsu"))

    # ------------------------------------------------------------------ 6. robustness
    md.append("## 6. Robustness to FGSM and PGD\n")
    md.append(
        f"`ltpa attack` on the first {ATTACK_LIMIT} test images; budgets ε in 1/255 of the [0, 1] pixel range "
        f"(normalisation is inside the model). FGSM at ε = {FGSM_EPS}; PGD with {PGD_STEPS} steps and a random "
        f"start at ε = {PGD_EPS} (Fashion-MNIST only). Accuracy (%) under attack.\n"
    )

    def att(suite: str, method: str, label: str, eps: float, key: str = "accuracy") -> Stat:
        return res.eval_stat(
            method,
            lambda r: r["suite"] == suite and r.get("label") == label and float(r["eps"]) == eps,
            key,
        )

    fgsm_eps = [float(e) for e in FGSM_EPS.split(",")]
    pgd_eps = [float(e) for e in PGD_EPS.split(",")]
    panels = [("fashion", "fgsm", fgsm_eps), ("fashion", "pgd", pgd_eps), ("cluttered", "fgsm", fgsm_eps)]
    outcomes: list[str] = []
    fooling: list[str] = []
    vs_gap: list[str] = []
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (suite, method, grid) in zip(axes, panels, strict=True):
        rows = []
        for label in SUITES[suite].models:
            stats = [att(suite, method, label, e) for e in grid]
            rows.append([NAMES[label], *(s.fmt() for s in stats)])
            means = [s.mean * 100 for s in stats]
            errs = [0 if math.isnan(s.std) else s.std * 100 for s in stats]
            style = "-" if label in ATTENTION else "--"
            ax.errorbar(
                grid,
                means,
                yerr=errs,
                fmt=style,
                marker="o",
                ms=3,
                capsize=2,
                label=label,
                color=None if label in ATTENTION else ("black" if label == "vgg" else None),
            )
            if label in ATTENTION:
                outcomes += [
                    compare(s, att(suite, method, "vgg", e))
                    for s, e in zip(stats, grid, strict=True)
                    if e > 0
                ]
                vs_gap += [
                    compare(s, att(suite, method, "gap", e))
                    for s, e in zip(stats, grid, strict=True)
                    if e > 0
                ]
                fooling += [
                    compare(
                        lower_is_better(att(suite, method, label, e, "fooling_rate")),
                        lower_is_better(att(suite, method, "vgg", e, "fooling_rate")),
                    )
                    for e in grid
                    if e > 0
                ]
        md.append(f"\n{SUITES[suite].data}, {method.upper()}:\n")
        md.append(table(["model", *(f"ε={e:g}" for e in grid)], rows))
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlabel("ε (1/255)")
        ax.set_ylabel("accuracy under attack (%)")
        ax.set_title(f"{SUITES[suite].data}: {method.upper()}")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(figures / "results_attack.png", dpi=110)
    plt.close(fig)
    md.append("\n![attacks](figures/results_attack.png)\n")
    v = verdict(outcomes)
    md.append(
        f"**Claim: attention models are more robust to FGSM.** Accuracy under attack, each attention model "
        f"against the baseline VGG at each ε > 0 (FGSM on both suites, PGD on Fashion-MNIST): {v}. Clean "
        "accuracy differs between models, so a curve that starts higher may stay higher without being more "
        "robust.\n"
    )
    claims.append(
        ("Attention models are more robust to FGSM (and PGD) (method §4.4)", v, "5 models x eps grid")
    )
    v = verdict(fooling)
    md.append(
        "By fooling rate instead (the share of images whose prediction the attack changes, which does not "
        f"reward a higher clean accuracy; lower is more robust), the same comparisons: {v}.\n"
    )
    claims.append(("... robustness: measured by fooling rate instead of accuracy", v, "5 models x eps grid"))
    v = verdict(vs_gap)
    md.append(f"Accuracy under attack against VGG-GAP (the same trunk without attention) instead: {v}.\n")
    claims.append(
        ("... robustness: against the same trunk without attention (VGG-GAP)", v, "5 models x eps grid")
    )

    # ------------------------------------------------------------------ 7. transfer
    md.append("## 7. Transfer: linear probes on frozen features\n")
    md.append(
        f"`ltpa transfer`: each trained model's penultimate features (the attention descriptors for attention "
        f"models) on the first {TRANSFER_LIMIT} images of each split of an unseen dataset, a logistic "
        f"regression on standardised features fitted on the train split, C chosen from {{{TRANSFER_CS}}} by "
        f"{TRANSFER_FOLDS}-fold cross-validation; accuracy (%) on the test split.\n"
    )

    def tr(suite: str, label: str, data: str) -> Stat:
        return res.eval_stat(
            "transfer",
            lambda r: r["suite"] == suite and r.get("label") == label and r["dataset"] == data,
            "accuracy",
        )

    outcomes = []
    vs_gap = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, suite in zip(axes, (fashion, cluttered), strict=True):
        targets = TRANSFER_TARGETS[suite.name]
        rows = []
        for label in suite.models:
            rows.append([NAMES[label], *(tr(suite.name, label, t).fmt() for t in targets)])
            if label in ATTENTION:
                outcomes += [compare(tr(suite.name, label, t), tr(suite.name, "vgg", t)) for t in targets]
                vs_gap += [compare(tr(suite.name, label, t), tr(suite.name, "gap", t)) for t in targets]
        md.append(f"\nTrained on {suite.data}:\n")
        md.append(table(["model", *targets], rows))
        width = 0.8 / len(targets)
        labels = list(suite.models)
        for i, t in enumerate(targets):
            stats = [tr(suite.name, lab, t) for lab in labels]
            ax.bar(
                [x + i * width for x in range(len(labels))],
                [s.mean * 100 for s in stats],
                width,
                yerr=[0 if math.isnan(s.std) else s.std * 100 for s in stats],
                capsize=2,
                label=t,
            )
        ax.set_xticks([x + width * (len(targets) - 1) / 2 for x in range(len(labels))])
        ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
        ax.set_ylabel("probe accuracy (%)")
        ax.set_title(f"features of models trained on {suite.data}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(figures / "results_transfer.png", dpi=110)
    plt.close(fig)
    md.append("\n![transfer](figures/results_transfer.png)\n")
    v = verdict(outcomes)
    md.append(
        f"**Claim: attention features transfer better.** Each attention model against the baseline on each target: {v}.\n"
    )
    claims.append(
        ("Attention features transfer better to unseen datasets (method §4.2)", v, "5 models x 4 targets")
    )
    v = verdict(vs_gap)
    md.append(f"Against VGG-GAP (the same trunk without attention) instead: {v}.\n")
    claims.append(
        ("... transfer: against the same trunk without attention (VGG-GAP)", v, "5 models x 4 targets")
    )

    # ------------------------------------------------------------------ assemble
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    seconds = _stage_seconds(commands)
    head = [
        "# Results: the paper's claims measured on a 2-core CPU\n",
        "<!-- Generated by `bash scripts/reproduce_cpu.sh` (scripts/reproduce_report.py). Do not edit by hand: "
        "every number, table and figure here is recomputed from the runs. -->\n",
        '"Learn To Pay Attention" (Jetley et al., ICLR 2018) makes four claims beyond its accuracy tables. '
        "This page tests each at CPU scale on real data available offline. It is **not** a reproduction of "
        "the paper's numbers: those need the full-width models and hundreds of GPU epochs "
        "([recipes/README.md](../recipes/README.md) has one command per table row). Read the verdicts as "
        "evidence about the mechanism at small scale.\n",
        "## Which claims held\n",
        table(["claim", "verdict here", "comparisons"], claims, "lll"),
        "",
        f"A comparison is *significant* when Welch's two-sided t-test over {len(seeds)} seeds gives p < {ALPHA}; "
        "a claim *held* when most of its comparisons are significantly better, was *contradicted* when most are "
        "significantly worse, and is otherwise *not shown*. With 3 seeds per model a test detects only large "
        "effects, and the comparisons are not corrected for multiplicity: treat single significant cells "
        "with care and the verdicts as the summary.\n",
        "## Set-up\n",
        f"* Run {stamp} by `bash scripts/reproduce_cpu.sh` on {describe_device('cpu')}, torch {torch.__version__}; "
        f"each command ran on one thread, two at a time. Wall time: {_stage_wall(out / 'reproduce.log')}; command time summed per stage: {seconds}. Every "
        "command with its exit status and duration: [results/commands.txt](results/commands.txt); per-run "
        "numbers: [results/](results/).",
        f"* Seeds {', '.join(map(str, seeds))} for every model (the seed sets initialisation and batch order; "
        "the data are the same for every seed)."
        + (f" **Smoke run at scale {scale:g}: not evidence.**" if scale != 1 else ""),
        *(f"* Suite `{s.name}`: {s.description}." for s in SUITES.values()),
        f"* Models at width {WIDTH:g} of the paper's VGG (method §2.1-2.5), dropout off, the paper's layouts "
        "otherwise (attention VGGs and GAP/PAN drop two max-pools). Recipe, one pass over the training set:\n",
        "```yaml\n" + RECIPE + "```\n",
    ]
    if res.missing:
        head.append(
            f"**Missing runs** (not finished when the report was written): {', '.join(res.missing)}\n"
        )
    tail = [
        "## Caveats\n",
        "* Width 1/8 and one pass over 16,000-20,000 images are far from the paper's full-width, 300-epoch "
        "training; effects that need capacity or long training may not show here, and small-scale effects may "
        "not survive scale. The GPU recipes are where the paper's numbers are tested.",
        "* One training recipe (AdamW, cosine) for every model, not tuned per model; the paper's "
        "Torch-dampened SGD needs far more steps than a CPU budget allows (see the demo's notes in the README).",
        "* Cluttered-fashion is a synthetic stand-in for Object Discovery: objects are small and the clutter is "
        "made of other classes' fragments. It has exact masks, which Object Discovery also has, but it is not "
        "natural-image data.",
        "* Transfer targets are near neighbours of the training data (the same garments in clutter, or digits), "
        "not the paper's six natural-image datasets.",
        "",
    ]
    page = docs / "results.md"
    page.write_text("\n".join([*head, *md, *tail]))
    print(f"wrote {page}, {tables}/ and {figures}/results_*.png")
    return page


def _stage_wall(log: Path) -> str:
    """Wall time per stage from the runner's log (``reproduce_cpu.sh`` tees it to ``<out>/reproduce.log``)."""
    if not log.exists():
        return "not recorded"
    stages: list[float] = []
    for line in log.read_text().splitlines():
        if " commands to run, " in line:
            stages.append(0.0)
        elif line.startswith("[") and " min] " in line and stages:
            stages[-1] = float(line.split("]")[0].split()[-2])
    names = ["training", "evaluation"] + [f"stage {i}" for i in range(3, len(stages) + 1)]
    # a rerun that found everything done adds a zero stage; keep the stages that ran something
    ran = [(n, m) for n, m in zip(names, [m for m in stages if m > 0], strict=False)]
    return ", ".join(f"{n} {m:.0f} min" for n, m in ran) or "not recorded"


def _stage_seconds(commands: Path) -> str:
    if not commands.exists():
        return "unknown"
    totals: dict[str, float] = defaultdict(float)
    for line in commands.read_text().splitlines():
        if line.startswith("# ") and ": exit " in line:
            name, _, rest = line[2:].partition(": exit ")
            stage = "training" if name.startswith("train ") else "evaluation"
            totals[stage] += float(rest.split(", ")[1].rstrip(" s"))
    return ", ".join(f"{k} {v / 3600:.2f} h" for k, v in totals.items())
