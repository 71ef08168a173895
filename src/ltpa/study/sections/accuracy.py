"""Section 2: accuracy on the i.i.d. test set, under a clutter dose-response and on shifted objects."""

from __future__ import annotations

import numpy as np

from ltpa.study.design import ARMS, DOSE_FRAGMENTS
from ltpa.study.figures import dose_response
from ltpa.study.results import Results
from ltpa.study.sections import Output, md_table, mean_cell
from ltpa.study.stats import paired_test

__all__ = ["section"]


def _diff_cell(a: list[float], b: list[float]) -> str:
    if len(a) < 2:
        return "-"
    r = paired_test(a, b, name="", delta=1.0)
    if r.ci_low != r.ci_low:
        return f"{r.diff:+.1f}"
    return f"{r.diff:+.1f} [{r.ci_low:+.1f}, {r.ci_high:+.1f}]"


def _common(res: Results, a: str, b: str) -> list[int]:
    return sorted(set(res.replicates(a)) & set(res.replicates(b)))


def section(res: Results, out: Output) -> str:
    path, fig_link = out.figure("study_dose_response.png")
    dose_response(res, path)
    body, rows = [], []
    for arm in res.arms:
        dose = {f: res.values(arm, ("dose", str(f))) for f in DOSE_FRAGMENTS}
        body.append(
            [ARMS[arm].label, len(res.replicates(arm)), mean_cell(res.values(arm, ("val_accuracy",))),
             mean_cell(res.values(arm, ("test_accuracy",))), *(mean_cell(dose[f]) for f in DOSE_FRAGMENTS),
             mean_cell(res.values(arm, ("shift_accuracy",)))]
        )  # fmt: skip
        for k in res.replicates(arm):
            e = res.evals[(arm, k)]
            row = {"arm": arm, "replicate": k, "val_accuracy": e["val_accuracy"], "test_accuracy": e["test_accuracy"],
                   "shift_accuracy": e["shift_accuracy"]}  # fmt: skip
            row.update({f"fragments_{f}": e["dose"][str(f)] for f in DOSE_FRAGMENTS})
            rows.append(row)
    columns = ["arm", "replicate", "val_accuracy", "test_accuracy", *(f"fragments_{f}" for f in DOSE_FRAGMENTS),
               "shift_accuracy"]  # fmt: skip
    link = out.csv("accuracy.csv", rows, columns)
    d = res.study.design
    headers = [
        "arm",
        "n",
        "val",
        "test (i.i.d.)",
        *(f"{f} fragments" for f in DOSE_FRAGMENTS),
        "small objects",
    ]
    text = [
        "## 2. Accuracy\n",
        f"Accuracy (%), mean ± std over replicates. *test*: {d.num_test:,} images like the training ones (4 "
        f"fragments); *k fragments*: {d.num_dose:,} test images with k fragments (same objects at the same "
        f"places for every k); *small objects*: {d.num_shift:,} test images whose object is "
        f"{d.shift_scale[0]:.0%}-{d.shift_scale[1]:.0%} of the canvas (training: 38-55%).\n",
        md_table(headers, body),
        f"\n![dose-response]({fig_link})\n",
    ]
    pairs = [("att2-pc", "att2-uniform"), ("att2-pc", "vgg-gap"), ("att2-uniform", "vgg-gap")]
    diff_rows = []
    for a, b in pairs:
        common = _common(res, a, b)
        if len(common) < 2:
            continue
        cells = []
        for f in DOSE_FRAGMENTS:
            va = [res.evals[(a, k)]["dose"][str(f)] for k in common]
            vb = [res.evals[(b, k)]["dose"][str(f)] for k in common]
            cells.append(_diff_cell(va, vb))
        slopes_a = [np.polyfit(DOSE_FRAGMENTS, [res.evals[(a, k)]["dose"][str(f)] - res.evals[(b, k)]["dose"][str(f)]
                                                for f in DOSE_FRAGMENTS], 1)[0] for k in common]  # fmt: skip
        slope = paired_test(slopes_a, [0.0] * len(slopes_a), name="slope", delta=0.25)
        slope_cell = f"{slope.diff:+.2f} [{slope.ci_low:+.2f}, {slope.ci_high:+.2f}]"
        diff_rows.append([f"{ARMS[a].label} - {ARMS[b].label}", len(common), *cells, slope_cell])
    if diff_rows:
        text += [
            "\nDoes an advantage grow with clutter? Paired differences (points, 95% CI) per clutter level, and "
            "the per-replicate slope of the difference against the number of fragments (points per fragment). "
            "Descriptive: outside the pre-registered families, no multiplicity correction.\n",
            md_table(
                ["difference", "n", *(f"{f} fragments" for f in DOSE_FRAGMENTS), "slope per fragment"],
                diff_rows,
            ),
        ]
    text.append(f"\nPer run: [{link}]({link}).\n")
    return "\n".join(text)
