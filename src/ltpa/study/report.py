"""Writes docs/results.md, its CSVs and figures from the committed records alone (the ``report`` stage)."""

from __future__ import annotations

import json
import logging
import math
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.lines import Line2D

from ltpa.errors import LTPAError
from ltpa.study.design import Design, arm, measure
from ltpa.study.results import ComparisonResult, Records
from ltpa.study.stats import format_mean_std

__all__ = ["COMMAND", "headline", "machine", "source_commit", "write_report"]

COMMAND = "python -m ltpa.study"

log = logging.getLogger("ltpa.study")


def source_commit() -> str:
    """The checkout's commit, marked ``+dirty`` when tracked files differ from it."""
    root = Path(__file__).resolve().parents[3]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + ("+dirty" if dirty else "")


def machine() -> str:
    """CPU model, cores, native bf16 and the torch version, for the report's provenance."""
    import os

    import torch

    from ltpa.system import cpu_bf16_support

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    bf16 = "native bf16" if cpu_bf16_support() else "no native bf16"
    return f"{model}, {os.cpu_count()} cores ({bf16}), torch {torch.__version__}"


# ------------------------------------------------------------------------------------------------ helpers


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str = "") -> str:
    align = align or "l" + "r" * (len(headers) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _ms(values: Sequence[float], digits: int = 1) -> str:
    finite = [v for v in values if math.isfinite(v)]
    return format_mean_std(finite, digits) if finite else "-"


def _p(x: float) -> str:
    if not math.isfinite(x):
        return "-"
    return f"{x:.2g}" if x < 0.01 else f"{x:.3f}"


def _f(x: float, digits: int = 2) -> str:
    return "-" if not math.isfinite(x) else f"{x:+.{digits}f}"


def _save(fig: Any, path: Path) -> None:
    """A PNG that depends on the figure alone (no software version or date in its metadata)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Software": None})


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, axes


@dataclass
class _Out:
    docs: Path
    name: str

    def csv(self, stem: str, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
        from ltpa.evaluate import write_csv

        write_csv(self.docs / "results" / self.name / f"{stem}.csv", rows, columns)
        return f"results/{self.name}/{stem}.csv"

    def figure(self, stem: str) -> tuple[Path, str]:
        rel = f"figures/study_{self.name}_{stem}.png"
        return self.docs / rel, rel


# ------------------------------------------------------------------------------------------------ sections


def _status(recs: Records, design: Design) -> tuple[str, dict[str, tuple[int, int]]]:
    """Which stages are complete: ``(markdown, {stage: (done, planned)})``."""
    from ltpa.study.runner import STAGES, Study

    study = Study(recs.root, Path("."), design)
    rates = study.rates()
    counts: dict[str, tuple[int, int]] = {}
    pilot_done = len(recs.stage_runs("pilot"))
    counts["pilot"] = (
        pilot_done,
        pilot_done + sum(len(study.pilot_state(a)["need"]) for a in study.pilot_arms()),
    )
    for stage in STAGES[1:]:
        if rates is None:
            counts[stage] = (0, 0)
            continue
        runs = study.stage_runs(stage, rates)
        counts[stage] = (sum(study.done(r) for r in runs), len(runs))
    rows = []
    for stage, (done, planned) in counts.items():
        state = "complete" if planned and done == planned else ("not started" if done == 0 else "in progress")
        if stage != "pilot" and rates is None:
            state = "waits for the pilot"
        rows.append([f"`{stage}`", done, planned or "-", state])
    return _table(["stage", "runs recorded", "runs planned", "state"], rows, "lrrl"), counts


def _arms_section(design: Design) -> str:
    rows = []
    for a in design.arms:
        opts = ", ".join(f"{k}={v}" for k, v in a.kwargs.items()) or "-"
        rows.append(
            [f"`{a.name}`", f"`{a.model}`", opts, a.label, a.role, ", ".join(a.regimes),
             ", ".join(f"{x:g}" for x in a.lr_grid)]
        )  # fmt: skip
    regimes = "\n".join(
        f"* **{r.name}**: {r.label} (`{r.data}`); measures: {', '.join(r.measures)}"
        + (
            f"; learning rates taken from regime `{r.rates_from}`'s pilot, not tuned here"
            if r.rates_from
            else ""
        )
        for r in design.regimes
    )
    d = design
    recipe = (
        f"Every run: width-{d.width:g} VGG trunk at 32x32, {d.num_train:,} training images, SGD (momentum "
        f"{d.momentum:g}, weight decay {d.weight_decay:g}, batch {d.batch_size}), {d.warmup_epochs:g} warm-up epoch "
        f"then cosine to zero, horizontal flips, no dropout; {d.epochs} epochs in the main stage, {d.pilot_epochs} "
        f"in the pilot (half the schedule). Replicate k fixes the data sample, the batch order and the initial "
        f"weights (by layer name), so all arms of a replicate start from the same trunk. Validation: {d.num_val:,} "
        f"images from held-out Fashion-MNIST objects; test: {d.num_test:,} images."
    )
    return "\n".join(
        [
            "## Design\n",
            _table(
                ["arm", "model", "options", "what it is", "role", "regimes", "starting pilot grid"],
                rows,
                "lllllll",
            ),
            "",
            regimes,
            "",
            recipe,
            "",
        ]
    )


def _comparisons_table(design: Design) -> str:
    rows = [
        [c.key, c.family, c.regime, c.measure, f"`{c.arm_a}` vs `{c.arm_b}`", f"{c.delta:g}", c.isolates]
        for c in (*design.primary, *design.secondary)
    ]
    return _table(["key", "family", "regime", "measure", "comparison", "delta", "isolates"], rows, "lllllrl")


def _pilot_section(recs: Records, design: Design, out: _Out) -> str:
    from ltpa.study.runner import Study, plateau

    study = Study(recs.root, Path("."), design)
    rows, csv_rows = [], []
    fig, (ax,) = _figure(6.5, 3.6)
    for a in study.pilot_arms():
        state = study.pilot_state(a)
        scores = state.get("scores") or {lr: study.pilot_score(a, lr, (0,)) for lr in state["grid"]}
        cells = []
        xs, ys = [], []
        for lr in state["grid"]:
            s = scores.get(lr)
            cells.append(f"{lr:g}: {s:.1f}" if s is not None else f"{lr:g}: -")
            if s is not None:
                xs.append(lr)
                ys.append(s)
            for k in (0, 1):
                key = f"pilot/{study.pilot_regime().name}/{a.name}/lr{lr:g}-r{k}"
                if key in recs.runs:
                    h = recs.runs[key]["history"]
                    holds, change = plateau(h, design.plateau_points)
                    csv_rows.append(
                        {"arm": a.name, "lr": lr, "replicate": k, "val_accuracy": round(100 * h[-1]["heldout_accuracy"], 2),
                         "train_accuracy": round(100 * h[-1]["train_accuracy"], 2), "plateau": holds,
                         "last_fifth_change": round(change, 2)}
                    )  # fmt: skip
        if xs:
            ax.plot(xs, ys, marker="o", color=a.colour, label=a.name)
        chosen = state.get("lr")
        if chosen is None:
            verdict = "pending"
        else:
            verdict = "interior" if state.get("interior") else "**at the edge** (grid limit reached)"
        settled = ""
        if state.get("settled"):
            two = state["settled_scores"]
            settled = "near-tie settled on 2 replicates: " + ", ".join(
                f"{lr:g}: {v:.1f}" for lr, v in two.items()
            )
        rows.append(
            [f"`{a.name}`", "; ".join(cells), f"{chosen:g}" if chosen else "-", verdict, settled or "-"]
        )
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("validation accuracy (%), replicate 0")
    ax.set_title(f"Pilot: {design.pilot_epochs} epochs per rate, regime (i)")
    ax.legend(fontsize=7, ncols=2)
    path, rel = out.figure("pilot")
    _save(fig, path)
    csv = out.csv(
        "pilot",
        csv_rows,
        ["arm", "lr", "replicate", "val_accuracy", "train_accuracy", "plateau", "last_fifth_change"],
    )
    se = study.standard_error(80.0)
    return "\n".join(
        [
            "## Pilot: each arm's peak learning rate\n",
            f"Each arm trains {design.pilot_epochs} epochs (half the main schedule) on replicate 0 at every rate of "
            "its grid; the grid is extended by one rate (steps of about 3x) while the best rate sits at an edge, up "
            f"to {design.max_grid_extensions} times. When the two best rates are within one standard error of a "
            f"validation accuracy (about {se:.1f} points at 80% on {design.num_val:,} images), both run again on "
            "replicate 1 and the better mean wins. Validation accuracy (%) per rate:\n",
            _table(["arm", "grid (rate: val %)", "chosen", "optimum", "second replicate"], rows, "lllll"),
            "",
            f"![pilot grid]({rel})  \nPer-run values: [{csv}]({csv}).\n",
        ]
    )


def _curves_section(recs: Records, design: Design, out: _Out) -> str:
    from ltpa.study.runner import plateau

    rows, csv_rows = [], []
    regimes = [r.name for r in design.regimes]
    fig, axes = _figure(4.0 * len(regimes), 3.4, len(regimes))
    held = 0
    total = 0
    for stage in ("main", "double"):
        for key, rec in sorted(recs.stage_runs(stage)):
            h = rec["history"]
            holds, change = plateau(h, design.plateau_points)
            held += holds
            total += 1
            run = rec["run"]
            csv_rows.append(
                {"run": key, "epochs": len(h), "lr": run["lr"], "train_accuracy": round(100 * h[-1]["train_accuracy"], 2),
                 "heldout_accuracy": round(100 * h[-1]["heldout_accuracy"], 2), "last_fifth_change": round(change, 2),
                 "plateau": holds}
            )  # fmt: skip
            if stage == "main":
                a = arm(run["arm"], design)
                ax = axes[regimes.index(run["regime"])]
                ax.plot(
                    [r["epoch"] for r in h],
                    [100 * r["train_accuracy"] for r in h],
                    color=a.colour,
                    lw=0.8,
                    alpha=0.7,
                )
    for ax, name in zip(axes, regimes):
        ax.set_title(f"training accuracy, regime {name}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel("%")
    handles = [Line2D([], [], color=a.colour, label=a.name) for a in design.arms]
    axes[0].legend(handles=handles, fontsize=6)
    if csv_rows:
        path, rel = out.figure("curves")
        _save(fig, path)
        figure = f"![training curves]({rel})\n"
    else:
        figure = ""
    csv = out.csv(
        "runs",
        csv_rows,
        ["run", "epochs", "lr", "train_accuracy", "heldout_accuracy", "last_fifth_change", "plateau"],
    )
    failing = [r for r in csv_rows if not r["plateau"]]
    for r in failing[:20]:
        rows.append(
            [f"`{r['run']}`", r["epochs"], f"{r['train_accuracy']:.1f}", f"{r['last_fifth_change']:+.2f}"]
        )
    text = [
        "## Trained to a plateau?\n",
        f"Rule: a run has plateaued when its training accuracy moved less than {design.plateau_points:g} points over "
        f"the last fifth of its schedule. Budget rule: the main stage trains {design.epochs} epochs, twice the "
        "pilot's length (so every pilot ran half the final schedule), and no longer, since the whole study must fit "
        "about 8 hours of a 2-core CPU; where runs do not meet the plateau rule the verdicts hold at this budget "
        "only, and the twice-the-epochs check below tests whether longer training moves any of them.\n",
        f"**{held} of {total} recorded runs meet the rule.**"
        if total
        else "No main-stage run is recorded yet.",
        "",
    ]
    if rows:
        text += [
            "Runs that do not (first 20):\n",
            _table(["run", "epochs", "train %", "change (points)"], rows),
            "",
        ]
    text += [figure, f"Every run: [{csv}]({csv}).\n"]
    return "\n".join(text)


def _comparison_rows(
    results: list[ComparisonResult], design: Design
) -> tuple[list[list[Any]], list[dict[str, Any]]]:
    rows, csv_rows = [], []
    for item in results:
        c, r = item.comparison, item.result
        m = measure(c.measure, design)
        if r is None:
            rows.append([c.key, f"{m.label}: `{c.arm_a}` vs `{c.arm_b}`", c.isolates, len(item.a), "-", "-", "-",
                         "-", "-", "-", "too few pairs"])  # fmt: skip
            continue
        rows.append(
            [c.key, f"{m.label}: `{c.arm_a}` vs `{c.arm_b}`", c.isolates, r.n, f"{r.mean_a:.1f} vs {r.mean_b:.1f}",
             f"{_f(r.diff)} [{_f(r.ci_low)}, {_f(r.ci_high)}]", _f(r.hedges_g), _p(r.p), _p(item.p_sign_flip),
             _p(r.p_holm), f"**{r.verdict}**"]
        )  # fmt: skip
        csv_rows.append(
            {"key": c.key, "family": c.family, "regime": c.regime, "measure": c.measure, "arm_a": c.arm_a,
             "arm_b": c.arm_b, "n": r.n, "mean_a": r.mean_a, "mean_b": r.mean_b, "diff": r.diff, "ci_low": r.ci_low,
             "ci_high": r.ci_high, "hedges_g": r.hedges_g, "p_t": r.p, "p_sign_flip": item.p_sign_flip,
             "p_holm": r.p_holm, "p_tost_holm": r.p_tost_holm, "verdict": r.verdict,
             "replicates": " ".join(map(str, item.replicates))}
        )  # fmt: skip
    return rows, csv_rows


_HEADERS = ["key", "comparison", "isolates", "n", "A vs B", "A - B [95% CI]", "g", "p (t)", "p (sign-flip)",
            "p (Holm)", "verdict"]  # fmt: skip
_CSV = ["key", "family", "regime", "measure", "arm_a", "arm_b", "n", "mean_a", "mean_b", "diff", "ci_low",
        "ci_high", "hedges_g", "p_t", "p_sign_flip", "p_holm", "p_tost_holm", "verdict", "replicates"]  # fmt: skip


def _primary_section(recs: Records, design: Design, out: _Out) -> tuple[str, dict[str, ComparisonResult]]:
    text = ["## Primary comparisons\n",
            "Fixed in `ltpa.study.design` before the main stage ran. Holm within each family; the verdict reads the "
            "Holm-adjusted paired t: **better**/**worse** (significant), **equivalent** (TOST within the smallest "
            "effect of interest: no effect), **inconclusive** (neither: too little data). The exact sign-flip p "
            f"is distribution-free (its floor is 2/2^n: {2 / 2**design.primary_replicates:.3f} at n = "
            f"{design.primary_replicates}).\n"]  # fmt: skip
    found: dict[str, ComparisonResult] = {}
    all_csv = []
    for family in dict.fromkeys(c.family for c in design.primary):
        comps = tuple(c for c in design.primary if c.family == family)
        results = recs.family(comps)
        found.update({r.comparison.key: r for r in results})
        rows, csv_rows = _comparison_rows(results, design)
        all_csv += csv_rows
        text += [f"### Family ({family})\n", _table(_HEADERS, rows, "lllrlrrrrrl"), ""]
    csv = out.csv("primary", all_csv, _CSV)
    text.append(f"Values: [{csv}]({csv}).\n")
    return "\n".join(text), found


def _double_section(recs: Records, design: Design, out: _Out, primary: dict[str, ComparisonResult]) -> str:
    text = ["## Twice the epochs\n",
            f"pc, the best learned compatibility and uniform pooling re-run at {2 * design.epochs} epochs on "
            f"{design.double_replicates} replicates. Each comparison among them is tested again on these runs; "
            "a verdict *moves* when its sign or significance changes.\n"]  # fmt: skip
    runs = recs.stage_runs("double")
    if not runs:
        return "\n".join([*text, "Not run yet.\n"])
    arms_done = sorted({r["run"]["arm"] for _, r in runs})
    comps = tuple(
        c for c in design.primary if c.arm_a in arms_done and c.arm_b in arms_done and c.regime == "cluttered"
    )
    results = recs.family(comps, stage="double")
    rows, csv_rows = _comparison_rows(results, design)
    moved = []
    for item in results:
        base = primary.get(item.comparison.key)
        if item.result is None or base is None or base.result is None:
            continue
        same_sign = (item.result.diff > 0) == (base.result.diff > 0)
        moved.append([item.comparison.key, base.result.verdict, item.result.verdict,
                      "no" if same_sign and item.result.verdict == base.result.verdict else "**yes**"])  # fmt: skip
    csv = out.csv("double", csv_rows, _CSV)
    text += [_table(_HEADERS, rows, "lllrlrrrrrl"), ""]
    if moved:
        text += [
            _table(["key", f"verdict at {design.epochs} epochs", f"at {2 * design.epochs}", "moved"], moved),
            "",
        ]
    text.append(f"Values: [{csv}]({csv}).\n")
    return "\n".join(text)


def _measure_sections(recs: Records, design: Design, out: _Out) -> str:
    parts = []
    for title in dict.fromkeys(m.section for m in design.measures):
        members = [m for m in design.measures if m.section == title]
        text = [f"## {title}\n"]
        for reg in design.regimes:
            ms = [m for m in members if m.name in reg.measures]
            ms = [
                m for i, m in enumerate(ms) if m.summary not in [x.summary for x in ms[:i]]
            ]  # one table each
            if not ms:
                continue
            columns: list[str] = []
            per_arm: dict[str, dict[str, list[float]]] = {}
            for a in design.arms:
                for k in recs.replicates(reg.name, a.name):
                    rec = recs.run(reg.name, a.name, k)
                    for m in ms:
                        if m.measure.__name__ not in rec["data"]:
                            continue
                        for col, v in m.summary(rec, recs.labels(reg.name, k)).items():
                            if col not in columns:
                                columns.append(col)
                            per_arm.setdefault(a.name, {}).setdefault(col, []).append(v)
            if not per_arm:
                continue
            rows = [
                [f"`{name}`", len(next(iter(cols.values())))] + [_ms(cols.get(c, [])) for c in columns]
                for name, cols in per_arm.items()
            ]
            text += [
                f"Regime {reg.name} (mean ± std over replicates):\n",
                _table(["arm", "n", *columns], rows),
                "",
            ]
        if len(text) > 1:
            parts.append("\n".join(text))
    return "\n".join(parts)


def _descriptive_section(recs: Records, design: Design, out: _Out) -> str:
    if not design.secondary:
        return ""
    results = recs.family(design.secondary)
    rows, csv_rows = _comparison_rows(results, design)
    csv = out.csv("descriptive", csv_rows, _CSV)
    return "\n".join(
        ["## Descriptive comparisons\n",
         "Reported with their intervals; Holm across this family, and no claim rests on them.\n",
         _table(_HEADERS, rows, "lllrlrrrrrl"), "", f"Values: [{csv}]({csv}).\n"]
    )  # fmt: skip


def _provenance(recs: Records, design: Design) -> str:
    rows = []
    stages = sorted(
        {key.split("/", 1)[0] for key in recs.runs}
        | {k for k, v in recs.timing.items() if isinstance(v, dict)}
    )
    for stage in stages:
        runs = [r for key, r in recs.runs.items() if key.startswith(stage + "/")]
        seconds = sum(float(r.get("train_seconds", 0.0)) for r in runs)
        entry = recs.timing.get(stage, {}) if isinstance(recs.timing.get(stage), dict) else {}
        wall = f"{entry['seconds'] / 3600:.2f} h" if entry.get("seconds") else "-"
        rows.append([f"`{stage}`", len(runs), f"{seconds / 3600:.2f} h", wall, ", ".join(entry.get("commits", [])) or "-",
                     "; ".join(entry.get("machines", [])) or "-"])  # fmt: skip
    threads = sorted(
        {(r.get("threads"), json.dumps(r.get("runtime", {}), sort_keys=True)) for r in recs.runs.values()}
    )
    settings = "; ".join(f"{t} thread(s), {rt}" for t, rt in threads)
    return "\n".join(
        ["## Provenance\n",
         f"Command: `{COMMAND}` (each stage resumes; `{COMMAND} report` rebuilds this page from the records alone). "
         f"Records: [results/{design.name}/records/](results/{design.name}/records/), one gzipped JSON file per run "
         "(settings, per-epoch history, per-image predictions, attacked predictions and map scores). *Run time* adds "
         "up each run's training and measuring time (runs train side by side, so it exceeds the wall time); "
         "*wall time* is what the stage's invocations recorded on exit.\n",
         _table(["stage", "runs", "run time", "wall time", "code at commit", "machine"], rows, "lrrrll") if rows
         else "No runs yet.", "", f"Per-run settings: {settings}.\n" if settings else ""]
    )  # fmt: skip


def headline(found: dict[str, ComparisonResult], design: Design) -> str:
    lines = []
    for c in design.primary:
        item = found.get(c.key)
        if item is None or item.result is None:
            continue
        r = item.result
        m = measure(c.measure, design)
        lines.append(
            f"* ({c.key}) {m.label}, `{c.arm_a}` vs `{c.arm_b}` ({c.isolates}): **{r.verdict}**, {_f(r.diff, 1)} "
            f"points [{_f(r.ci_low, 1)}, {_f(r.ci_high, 1)}], n = {r.n}."
        )
    return (
        "\n".join(lines)
        if lines
        else "* No primary comparison has two paired replicates yet: see the status table."
    )


def write_report(records: Path, docs: Path, design: Design) -> Path:
    """Regenerates ``docs/results.md`` (with ``docs/results/<name>/*.csv`` and ``docs/figures/study_<name>_*``)
    from the records under ``records`` alone."""
    recs = Records.load(Path(records), design)
    if not recs.runs:
        raise LTPAError(f"no study records under {records}; run `{COMMAND}` first")
    out = _Out(Path(docs), design.name)
    status, _ = _status(recs, design)
    primary, found = _primary_section(recs, design, out)
    d = design
    parts = [
        "# Results: when does trainable attention help? A paired study on a 2-core CPU\n",
        f"<!-- Generated by `{COMMAND} report` from docs/results/{d.name}/records alone. Do not edit by hand. -->\n",
        f"A CPU-scale test of the paper's mechanism (design `{d.name}`): width-{d.width:g} VGGs on "
        f"{d.num_train:,} training images, {d.primary_replicates} paired replicates per primary arm, each arm at its "
        "own tuned learning rate. It is not a reproduction of the paper's numbers (those need full-width models "
        "and GPU-scale training: [recipes/README.md](../recipes/README.md)). What each comparison isolates is "
        "stated beside it; under `pc` with a softmax the map ignores the global feature (method §1.7), so `pc` "
        "against uniform pooling tests query-free learned pooling, and learning is credited only where learned "
        "beats frozen.\n",
        "## Status\n",
        status,
        "",
        "## What the study found (primary comparisons)\n",
        headline(found, design) + "\n",
        _arms_section(design),
        "### Pre-registered comparisons\n",
        _comparisons_table(design) + "\n",
        _pilot_section(recs, design, out),
        primary,
        _curves_section(recs, design, out),
        _double_section(recs, design, out, found),
        _measure_sections(recs, design, out),
        _descriptive_section(recs, design, out),
        _provenance(recs, design),
    ]
    path = out.docs / "results.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
    log.info("wrote %s", path)
    return path
