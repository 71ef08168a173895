"""Section 3: do the maps find the object? Metrics that do not reward sharpness, against reference maps."""

from __future__ import annotations

from ltpa.study.design import ARMS
from ltpa.study.figures import map_examples
from ltpa.study.results import Results
from ltpa.study.sections import Output, md_table, mean_cell
from ltpa.study.stats import paired_test

__all__ = ["section"]

METRICS = ("pointing", "auc", "ap", "iou")
REFERENCES = {"uniform": "uniform map", "gaussian": "centred Gaussian", "intensity": "image intensity"}


def _beats(res: Results, arm: str, map_name: str, metric: str, ref: str) -> bool | None:
    """Whether the arm's map is significantly better than a reference map (paired over replicates, p < 0.05)."""
    common = sorted(set(res.replicates(arm)) & set(res.references))
    if len(common) < 2:
        return None
    a = [res.evals[(arm, k)]["maps"][map_name][metric] for k in common]
    b = [res.references[k]["maps"][ref][metric] for k in common]
    r = paired_test(a, b, name="", delta=1.0)
    return r.p == r.p and r.p < 0.05 and r.diff > 0


def section(res: Results, out: Output) -> str:
    body, rows = [], []
    for kind, label in REFERENCES.items():
        vals = {m: res.reference_values(("maps", kind, m)) for m in METRICS}
        area = res.reference_values(("maps", kind, "area"))
        body.append(
            [
                f"reference: {label}",
                *(mean_cell(vals[m]) for m in METRICS),
                f"{100 * area[0]:.0f}%" if area else "-",
                "",
            ]
        )
    for arm in res.arms:
        first = res.evals[(arm, res.replicates(arm)[0])]
        for map_name in first["maps"]:
            vals = {m: res.values(arm, ("maps", map_name, m)) for m in METRICS}
            areas = res.values(arm, ("maps", map_name, "area"))
            beats = [
                _beats(res, arm, map_name, m, ref)
                for m in ("pointing", "ap")
                for ref in ("gaussian", "intensity")
            ]
            verdict = "yes" if all(beats) else ("-" if any(b is None for b in beats) else "no")
            body.append([f"{ARMS[arm].label}: {map_name}", *(mean_cell(vals[m]) for m in METRICS),
                         f"{100 * min(areas):.0f}-{100 * max(areas):.0f}%", verdict])  # fmt: skip
            for k in res.replicates(arm):
                m = res.evals[(arm, k)]["maps"][map_name]
                rows.append(
                    {"map": f"{arm}:{map_name}", "replicate": k, **{c: m[c] for c in (*METRICS, "area")}}
                )
    for k, ref in sorted(res.references.items()):
        for kind in REFERENCES:
            m = ref["maps"][kind]
            rows.append({"map": f"reference:{kind}", "replicate": k, **{c: m[c] for c in (*METRICS, "area")}})
    link = out.csv("maps.csv", rows, ["map", "replicate", *METRICS, "area"])
    path, fig_link = out.figure("study_maps.png")
    map_examples(res, path)
    return (
        "## 3. Attention maps and localisation\n\n"
        "Per test image, maps are upsampled to 32x32 and scored against the object's mask: *pointing* (the "
        "map's maximum lies on the object; a constant map scores the object's area share), *pixel ROC-AUC* and "
        "*average precision* (the map's values ranking object pixels above the rest: insensitive to how peaked "
        "the map is), and *IoU* after keeping each map's top pixels at one area per map type, chosen on the "
        "validation images (so every map covers the same area whatever its sharpness). Means ± std over "
        "replicates, in %. Maps per model: its attention levels (conv10, conv13), VGG-GAP's class activation "
        "map (*cam*), and Grad-CAM of the predicted class at conv13 of the same network (*gradcam*). "
        "*Localises* = significantly better (paired p < 0.05) than both the centred "
        "Gaussian and the image-intensity map on both pointing and AP.\n\n"
        + md_table(["map", "pointing", "ROC-AUC", "AP", "IoU @ area", "area", "localises"], body, "lrrrrrl")
        + f"\n\nThe same test images under each arm's map (replicate 0; conv13 for attention models, CAM for "
        f"VGG-GAP, Grad-CAM for VGG; white: the object's outline):\n\n![maps]({fig_link})\n\n"
        f"Per replicate: [{link}]({link}).\n"
    )
