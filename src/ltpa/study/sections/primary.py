"""The pre-registered comparisons: five primaries (Holm across them) and the paper-literal secondary family."""

from __future__ import annotations

from collections.abc import Sequence

from ltpa.study.design import PRIMARY, SECONDARY, Comparison
from ltpa.study.results import Results
from ltpa.study.sections import Output, md_table
from ltpa.study.stats import PairedResult, holm, paired_test, result_row

__all__ = ["family_results", "section"]


def family_results(res: Results, family: Sequence[Comparison]) -> list[tuple[Comparison, PairedResult]]:
    """Paired tests of every comparison with at least two common replicates, Holm-adjusted together."""
    done: list[tuple[Comparison, PairedResult]] = []
    for comp in family:
        a, b, common = res.paired(comp)
        if len(common) < 2:
            continue
        done.append(
            (comp, paired_test(a, b, name=comp.key, delta=comp.delta, higher_is_better=comp.higher_is_better))
        )
    adjusted = holm([r for _, r in done])
    return [(comp, r) for (comp, _), r in zip(done, adjusted)]


def _fmt(x: float, digits: int = 2) -> str:
    return "-" if x != x else f"{x:.{digits}f}"


def _p(x: float) -> str:
    return "-" if x != x else (f"{x:.2g}" if x >= 0.001 else "<0.001")


def table(rows: list[tuple[Comparison, PairedResult]]) -> str:
    body = []
    for comp, r in rows:
        unit = "pts"
        body.append(
            [
                f"({comp.key}) {comp.question}",
                r.n,
                f"{_fmt(r.mean_a, 1)} vs {_fmt(r.mean_b, 1)}",
                f"{r.diff:+.2f} [{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]",
                _fmt(r.hedges_g),
                _p(r.p),
                _p(r.p_holm),
                f"±{comp.delta:g} {unit}: {_p(r.p_tost_holm)}",
                f"**{r.verdict}**" + (f" ({r.note})" if r.note else ""),
            ]
        )
    headers = [
        "comparison",
        "n",
        "means (A vs B)",
        "A - B [95% CI]",
        "Hedges' g",
        "p",
        "p Holm",
        "TOST (Holm)",
        "verdict",
    ]
    return md_table(headers, body, "lrrrrrrrl")


def _csv_rows(rows: list[tuple[Comparison, PairedResult]], family: str) -> list[dict[str, object]]:
    out = []
    for comp, r in rows:
        row: dict[str, object] = {
            "family": family,
            "question": comp.question,
            "arm_a": comp.arm_a,
            "arm_b": comp.arm_b,
        }
        row.update(result_row(r, digits=4))
        out.append(row)
    return out


def section(res: Results, out: Output) -> str:
    primary = family_results(res, PRIMARY)
    secondary = family_results(res, SECONDARY)
    rows = _csv_rows(primary, "primary") + _csv_rows(secondary, "secondary")
    link = out.csv("comparisons.csv", rows, list(rows[0]) if rows else ["family"])
    missing = [c.key for c in PRIMARY if c.key not in {comp.key for comp, _ in primary}]
    note = f"\n\nNot computed (fewer than two paired replicates): {', '.join(missing)}." if missing else ""
    return (
        "## Primary comparisons\n\n"
        "Paired over replicates (same data, batch order and initial trunk weights in both arms). "
        "Differences in points (percentage points of the metric); the 95% CI is the paired t interval; "
        "Hedges' g is g_av (mean difference over the mean of the two arms' standard deviations, small-sample "
        "corrected); p is the two-sided paired t-test, Holm-adjusted across the five primaries; TOST tests "
        "equivalence within the pre-registered smallest effect (Holm-adjusted too).\n\n"
        f"{table(primary)}{note}\n\n"
        "### Secondary family: the paper's own comparison, against the baseline VGG\n\n"
        "Holm within this family only; these compare different networks, so they cannot isolate attention.\n\n"
        f"{table(secondary)}\n\nAll numbers: [{link}]({link}).\n"
    )
