"""Section 5: transfer of frozen features to other data by linear probes at equal dimension."""

from __future__ import annotations

from ltpa.study.design import ARMS
from ltpa.study.evaluate import TRANSFER_TARGETS
from ltpa.study.results import Results
from ltpa.study.sections import Output, md_table, mean_cell

__all__ = ["section"]


def section(res: Results, out: Output, dim: int) -> str:
    body, rows = [], []
    for ref in ("pixels", "random att2-pc"):
        vals = {t: res.reference_values(("transfer", ref, t)) for t in TRANSFER_TARGETS}
        body.append([f"reference: {ref}", *(mean_cell(vals[t]) for t in TRANSFER_TARGETS)])
        for k, r in sorted(res.references.items()):
            rows.append(
                {"features": ref, "replicate": k, **{t: r["transfer"][ref][t] for t in TRANSFER_TARGETS}}
            )
    for arm in res.arms:
        body.append(
            [ARMS[arm].label, *(mean_cell(res.values(arm, ("transfer", t))) for t in TRANSFER_TARGETS)]
        )
        for k in res.replicates(arm):
            rows.append({"features": arm, "replicate": k, **res.evals[(arm, k)]["transfer"]})
    link = out.csv("transfer.csv", rows, ["features", "replicate", *TRANSFER_TARGETS])
    d = res.study.design
    return (
        "## 5. Transfer\n\n"
        "Frozen pre-logit features (the classifier's input) of each trained model, standardised, reduced by PCA "
        f"to {dim} dimensions (the narrowest arm's width, so that no arm wins by width), then a logistic "
        f"regression trained on {d.transfer_train:,} and tested on {d.transfer_test:,} images of each target: "
        "*cluttered-digits* (sklearn digits in the same kind of clutter), *fashion-mnist* (the plain items, "
        "padded to 32x32) and *shifted* (cluttered-fashion with small objects). References: raw pixels and an "
        "untrained att2-pc (same initial weights as replicate k). Test accuracy (%), mean ± std.\n\n"
        + md_table(["features", *TRANSFER_TARGETS], body)
        + f"\n\nPer replicate: [{link}]({link}).\n"
    )
