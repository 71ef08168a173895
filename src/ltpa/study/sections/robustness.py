"""Section 4: robustness to FGSM (and PGD-10 as a check against gradient masking)."""

from __future__ import annotations

from ltpa.study.design import ARMS, EPS_GRID
from ltpa.study.figures import fooling_curves
from ltpa.study.results import Results
from ltpa.study.sections import Output, md_table, mean_cell
from ltpa.study.stats import paired_test

__all__ = ["section"]

PAIRS = (("att2-pc", "att2-uniform"), ("att2-pc", "vgg-gap"), ("att2-pc", "vgg"))


def section(res: Results, out: Output) -> str:
    path, fig_link = out.figure("study_fgsm.png")
    fooling_curves(res, path)
    d = res.study.design
    acc_body = []
    pgd_eps = sorted({float(e) for (arm, k) in res.evals for e in res.evals[(arm, k)]["pgd10_accuracy"]})
    for arm in res.arms:
        acc_body.append(
            [ARMS[arm].label, *(mean_cell(res.values(arm, ("fgsm_accuracy", str(e)))) for e in EPS_GRID),
             *(mean_cell(res.values(arm, ("pgd10_accuracy", str(e)))) for e in pgd_eps)]
        )  # fmt: skip
    fool_body, rows = [], []
    for a, b in PAIRS:
        common = sorted(set(res.replicates(a)) & set(res.replicates(b)))
        if len(common) < 2:
            continue
        cells = []
        for eps in EPS_GRID:
            va, vb, ns = zip(*(res.fooling(a, b, k, eps) for k in common))
            for k, ra, rb, n in zip(common, va, vb, ns):
                rows.append({"arm_a": a, "arm_b": b, "replicate": k, "eps_255": eps, "fooling_a": ra,
                             "fooling_b": rb, "both_correct": n})  # fmt: skip
            ok = [i for i in range(len(va)) if va[i] == va[i] and vb[i] == vb[i]]
            if len(ok) < 2:
                cells.append("-")
                continue
            r = paired_test(
                [va[i] for i in ok], [vb[i] for i in ok], name="", delta=3.0, higher_is_better=False
            )
            cells.append(
                f"{r.mean_a:.1f} vs {r.mean_b:.1f} ({r.diff:+.1f} [{r.ci_low:+.1f}, {r.ci_high:+.1f}])"
            )
        fool_body.append([f"{ARMS[a].label} vs {ARMS[b].label}", len(common), *cells])
    link = out.csv(
        "fooling.csv",
        rows,
        ["arm_a", "arm_b", "replicate", "eps_255", "fooling_a", "fooling_b", "both_correct"],
    )
    return (
        "## 4. Robustness to adversarial noise\n\n"
        f"Accuracy (%) under FGSM on the first {d.num_attack:,} test images, and under PGD-10 (random start, step "
        f"2.5 eps / 10) on the first {d.num_pgd:,}, eps in 1/255 units (images in [0, 1]). If PGD-10 is not far "
        "below FGSM the gradient may be masked.\n\n"
        + md_table(["arm", *(f"FGSM {e:g}" for e in EPS_GRID), *(f"PGD-10 {e:g}" for e in pgd_eps)], acc_body)
        + f"\n\n![FGSM]({fig_link})\n\n"
        "Fooling rate (%): among the images **both** compared models classify correctly when clean, the share "
        "each misclassifies after its own FGSM attack; A vs B (A - B, 95% paired CI). Lower is more robust. "
        "eps 2/255 of the first row is primary comparison (d); the rest is descriptive.\n\n"
        + md_table(["pair", "n", *(f"eps {e:g}" for e in EPS_GRID)], fool_body)
        + f"\n\nPer replicate: [{link}]({link}).\n"
    )
