"""Section 1: training to convergence (learning curves, convergence flags, the pilot)."""

from __future__ import annotations

from ltpa.study.design import ARMS
from ltpa.study.figures import learning_curves
from ltpa.study.results import Results
from ltpa.study.sections import Output, md_table, mean_cell

__all__ = ["pilot_section", "section"]


def pilot_section(res: Results) -> str:
    if not res.pilot:
        return "## Pilot\n\nNo pilot results.\n"
    runs = res.pilot["runs"]
    rates = sorted({r["lr"] for r in runs})
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    body = []
    for arm in arms:
        cells = {r["lr"]: 100 * r["val_accuracy"] for r in runs if r["arm"] == arm}
        body.append([ARMS[arm].label, *(f"{cells[lr]:.1f}" for lr in rates)])
    chosen = ", ".join(f"{family}: {lr:g}" for family, lr in res.pilot["lr"].items())
    d = res.study.design
    return (
        "## Pilot: choosing the peak learning rate on validation\n\n"
        f"Replicate 0, {d.pilot_epochs} epochs (the same warm-up-then-cosine shape), validation accuracy (%) "
        "per peak rate. Each family takes the rate with the best mean over its primary arms (the attention "
        "family: att2-pc and att2-uniform, so the learned and uniform arms share one rate).\n\n"
        + md_table(["arm", *(f"lr {lr:g}" for lr in rates)], body)
        + f"\n\nChosen: {chosen}.\n"
    )


def section(res: Results, out: Output) -> str:
    path, link = out.figure("study_learning_curves.png")
    learning_curves(res, path)
    body, rows = [], []
    for arm in res.arms:
        reps = [k for k in res.replicates(arm) if (arm, k) in res.histories]
        finals = [100 * res.histories[(arm, k)][-1]["test_accuracy"] for k in reps]
        train = [100 * res.histories[(arm, k)][-1]["train_accuracy"] for k in reps]
        flags = [res.evals[(arm, k)]["converged"] for k in reps]
        secs = [sum(r["seconds"] for r in res.histories[(arm, k)]) for k in reps]
        body.append(
            [ARMS[arm].label, len(reps), mean_cell(train), mean_cell(finals), f"{sum(flags)}/{len(flags)}",
             f"{sum(secs) / max(len(secs), 1) / 60:.1f}"]
        )  # fmt: skip
        for k, fin, tr, fl, sec in zip(reps, finals, train, flags, secs):
            rows.append({"arm": arm, "replicate": k, "train_accuracy": tr, "val_accuracy": fin, "converged": fl,
                         "train_seconds": sec})  # fmt: skip
    link_csv = out.csv(
        "training.csv",
        rows,
        ["arm", "replicate", "train_accuracy", "val_accuracy", "converged", "train_seconds"],
    )
    unconverged = [f"{r['arm']} r{r['replicate']}" for r in rows if not r["converged"]]
    changes = [
        100 * (h[-1]["test_accuracy"] - h[-3]["test_accuracy"]) for h in res.histories.values() if len(h) >= 3
    ]
    d = res.study.design
    p = sum(r["val_accuracy"] for r in rows) / max(len(rows), 1) / 100
    se = 100 * (p * (1 - p) / d.num_val) ** 0.5
    trend = (
        f" Over the last two epochs validation accuracy moved by {sum(changes) / len(changes):+.2f} points on "
        f"average (from {min(changes):+.2f} to {max(changes):+.2f}); one validation accuracy on "
        f"{d.num_val:,} images has a standard error of about {se:.1f} points, so the rule also flags noise. "
        "Where the mean change is clearly positive the runs were still improving when the cosine schedule "
        "ended: the comparisons below are at an equal training budget, not at a plateau."
        if changes
        else ""
    )
    flag = (
        f"Runs not converged by this rule: {', '.join(unconverged)}."
        if unconverged
        else "Every run converged by this rule."
    )
    return (
        "## 1. Training and convergence\n\n"
        f"![learning curves]({link})\n\n"
        f"A run counts as converged when its validation accuracy changed by less than {d.converge_points} "
        f"points over its last two epochs. {flag}{trend}\n\n"
        + md_table(
            ["arm", "runs", "final train acc (%)", "final val acc (%)", "converged", "minutes per run"], body
        )
        + f"\n\nPer run: [{link_csv}]({link_csv}).\n"
    )
