"""Paired statistics for the pre-registered replicate study.

Each comparison has two arms, ``a`` and ``b``, run for the same ``k`` replicates (seeds); replicate ``i`` of
``a`` is paired with replicate ``i`` of ``b``. Everything here works on the per-replicate differences
``d = a - b``.

What is computed for one comparison (:func:`paired_test`):

* ``diff``: the mean of ``d``; ``ci_low``/``ci_high``: its two-sided 95% t-interval (df = n - 1).
* ``p``: the two-sided paired t-test (:func:`scipy.stats.ttest_rel`).
* ``p_tost``: the two one-sided tests (TOST) equivalence p-value against the bounds ``±delta``, where
  ``delta > 0`` is the pre-registered smallest effect of interest (:func:`tost_paired`). ``p_tost < alpha``
  is the same as the ``1 - 2 alpha`` (90% for alpha = 0.05) t-interval lying inside ``(-delta, +delta)``.
* ``hedges_g``: Hedges' g_av (Lakens 2013, eq. 10 with the small-sample correction): ``d_av = diff /
  ((sd_a + sd_b) / 2)`` times the *exact* correction ``J(df) = Γ(df/2) / (sqrt(df/2) Γ((df-1)/2))`` with
  ``df = n - 1`` (not the ``1 - 3/(4 df - 1)`` approximation; the two agree within 0.5% for df >= 4).
  ``nan`` when ``sd_a + sd_b == 0``.

Across the family of pre-registered comparisons, :func:`holm` applies the Holm (1979) step-down correction,
separately to the difference p-values (``p_holm``) and to the TOST p-values (``p_tost_holm``). ``nan``
p-values are left out of the family size and stay ``nan``.

Verdict rule (``alpha = 0.05`` unless told otherwise). With ``P`` the difference p-value and ``T`` the TOST
p-value -- the Holm-adjusted ones after :func:`holm`, the raw ones for a single :func:`paired_test`:

* ``"better"``: ``P < alpha`` and the difference favours ``a`` (``diff > 0`` when ``higher_is_better``,
  ``diff < 0`` otherwise, e.g. for a fooling rate);
* ``"worse"``: ``P < alpha`` and the difference favours ``b``;
* ``"equivalent"``: ``P >= alpha`` and ``T < alpha`` (no detectable difference, and any difference is
  within ``±delta``);
* ``"inconclusive"``: anything else, i.e. too little data to tell an effect from no effect (including
  undefined p-values).

A significant difference whose interval nonetheless lies within ``±delta`` is still "better"/"worse" (it is
detectable), but ``note`` then says it is smaller than the smallest effect of interest.

Zero variance: when every replicate gives the same difference (sample sd of ``d`` is 0, up to float
round-off), the t statistic is 0/0 or ±inf and the t-test is not defined. Then ``p``, ``p_tost`` and the
confidence interval are ``nan``, the verdict is ``"inconclusive"`` and ``note`` says why; nothing is
guessed from a degenerate sample.

statsmodels is not installed in this project, so everything uses scipy (:func:`scipy.stats.ttest_rel`,
:func:`scipy.stats.ttest_1samp`, :func:`scipy.special.gammaln`); Holm is the few lines of the textbook
step-down procedure (scipy has no Holm).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import special, stats

__all__ = [
    "FloatSeq",
    "PairedResult",
    "format_mean_std",
    "hedges_g_av",
    "holm",
    "holm_adjust",
    "mean_std",
    "paired_test",
    "result_row",
    "sign_flip_p",
    "tost_paired",
]

#: A one-dimensional run of numbers: a list/tuple of floats or a 1-D numpy array.
FloatSeq = Sequence[float] | np.ndarray

_NAN = float("nan")
# Relative size of sd(d) / max|d| below which the differences count as all equal (float round-off level).
_ZERO_SD_RTOL = 1e-12


@dataclass(frozen=True)
class PairedResult:
    """One paired comparison of arm ``a`` against arm ``b``.

    Attributes:
        name: The comparison's name.
        n: Number of paired replicates.
        mean_a: Mean of arm ``a``.
        mean_b: Mean of arm ``b``.
        diff: Mean of the paired differences ``a - b``.
        ci_low: Lower end of the 95% t-interval of ``diff`` (``nan`` if undefined).
        ci_high: Upper end of the 95% t-interval of ``diff`` (``nan`` if undefined).
        p: Two-sided paired t-test p-value (``nan`` if undefined).
        p_holm: Holm-adjusted ``p`` over the family (``nan`` until :func:`holm` is applied).
        hedges_g: Hedges' g_av with the exact small-sample correction (``nan`` if undefined).
        delta: Smallest effect of interest (> 0), in the units of the metric.
        p_tost: TOST equivalence p-value against ``±delta`` (``nan`` if undefined).
        p_tost_holm: Holm-adjusted ``p_tost`` over the family (``nan`` until :func:`holm` is applied).
        higher_is_better: Whether larger metric values are better.
        verdict: One of ``"better"``, ``"worse"``, ``"equivalent"``, ``"inconclusive"`` (for ``a``).
        note: Why a value is undefined or a caveat on the verdict; empty when there is none.
    """

    name: str
    n: int
    mean_a: float
    mean_b: float
    diff: float
    ci_low: float
    ci_high: float
    p: float
    p_holm: float
    hedges_g: float
    delta: float
    p_tost: float
    p_tost_holm: float
    higher_is_better: bool
    verdict: str
    note: str


def _as_finite_array(values: FloatSeq, what: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be a sequence of numbers: {err}") from None
    if arr.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contains non-finite values (nan or inf): {arr.tolist()}")
    return arr


def _check_alpha(alpha: float) -> None:
    if not (isinstance(alpha, numbers.Real) and 0.0 < float(alpha) < 1.0):
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def _check_delta(delta: float) -> None:
    if not (isinstance(delta, numbers.Real) and math.isfinite(float(delta)) and float(delta) > 0):
        raise ValueError(f"delta (smallest effect of interest) must be a finite number > 0, got {delta!r}")


def _zero_sd(d: np.ndarray) -> bool:
    scale = float(np.max(np.abs(d)))
    return bool(np.ptp(d) == 0.0 or float(np.std(d, ddof=1)) <= _ZERO_SD_RTOL * scale)


def mean_std(values: FloatSeq) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1).

    Args:
        values: Finite numbers, at least one.

    Returns:
        ``(mean, std)``; ``std`` is ``nan`` for a single value.

    Raises:
        ValueError: If ``values`` is empty or has non-finite entries.
    """
    arr = _as_finite_array(values, "values")
    if arr.size == 0:
        raise ValueError("values is empty")
    std = float(np.std(arr, ddof=1)) if arr.size >= 2 else _NAN
    return float(np.mean(arr)), std


def format_mean_std(values: FloatSeq, digits: int = 1) -> str:
    """Format values as ``"mean ± std"``, e.g. ``"93.2 ± 0.4"``.

    Args:
        values: Finite numbers, at least one.
        digits: Decimal places for both numbers.

    Returns:
        ``"mean ± std"``, or ``"mean (n=1)"`` for a single value (no spread to show).
    """
    mean, std = mean_std(values)
    if math.isnan(std):
        return f"{mean:.{digits}f} (n=1)"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def hedges_g_av(a: FloatSeq, b: FloatSeq) -> float:
    """Hedges' g_av for paired samples (Lakens 2013).

    ``d_av = mean(a - b) / ((sd_a + sd_b) / 2)`` times ``J(df) = Γ(df/2) / (sqrt(df/2) Γ((df-1)/2))`` with
    ``df = n - 1`` (exact correction; ``J(1) = 0``).

    Args:
        a: Values of arm ``a``.
        b: Values of arm ``b``, paired with ``a``.

    Returns:
        g_av, or ``nan`` when ``sd_a + sd_b == 0``.
    """
    xa, xb = _check_pair(a, b)
    n = xa.size
    sd_sum = float(np.std(xa, ddof=1) + np.std(xb, ddof=1))
    if sd_sum == 0.0:
        return _NAN
    d_av = float(np.mean(xa - xb)) / (sd_sum / 2.0)
    df = n - 1
    j = math.exp(
        float(special.gammaln(df / 2.0) - 0.5 * math.log(df / 2.0) - special.gammaln((df - 1) / 2.0))
    )
    return j * d_av


def tost_paired(diffs: FloatSeq, delta: float) -> float:
    """TOST equivalence p-value for paired differences against the bounds ``±delta``.

    The larger of the one-sided one-sample t-test p-values for ``H0: mean <= -delta`` and
    ``H0: mean >= +delta`` (:func:`scipy.stats.ttest_1samp`).

    Args:
        diffs: Paired differences ``a - b``, at least two, finite.
        delta: Equivalence margin (> 0).

    Returns:
        The TOST p-value, or ``nan`` when all differences are equal (zero variance: test undefined).

    Raises:
        ValueError: If ``delta`` is not > 0, fewer than two differences, or non-finite entries.
    """
    _check_delta(delta)
    d = _as_finite_array(diffs, "diffs")
    if d.size < 2:
        raise ValueError(f"need at least 2 differences, got {d.size}")
    if _zero_sd(d):
        return _NAN
    p_low = float(stats.ttest_1samp(d, -delta, alternative="greater").pvalue)
    p_high = float(stats.ttest_1samp(d, delta, alternative="less").pvalue)
    return max(p_low, p_high)


def _check_pair(a: FloatSeq, b: FloatSeq) -> tuple[np.ndarray, np.ndarray]:
    xa = _as_finite_array(a, "a")
    xb = _as_finite_array(b, "b")
    if xa.size != xb.size:
        raise ValueError(
            f"a and b must have the same length (paired by replicate), got {xa.size} and {xb.size}"
        )
    if xa.size < 2:
        raise ValueError(f"need at least 2 paired replicates, got {xa.size}")
    return xa, xb


def _verdict(diff: float, p: float, p_tost: float, higher_is_better: bool, alpha: float) -> str:
    if math.isnan(p):
        return "inconclusive"
    if p < alpha:
        favours_a = diff > 0 if higher_is_better else diff < 0
        return "better" if favours_a else "worse"
    if not math.isnan(p_tost) and p_tost < alpha:
        return "equivalent"
    return "inconclusive"


def _note(verdict: str, zero_sd: bool, p_tost: float, alpha: float) -> str:
    if zero_sd:
        return (
            "all paired differences are equal (zero variance): the t-test and TOST are undefined, "
            "so p, p_tost and the CI are nan"
        )
    if verdict in ("better", "worse") and not math.isnan(p_tost) and p_tost < alpha:
        return (
            "significant, but the difference is within ±delta (smaller than the smallest effect of interest)"
        )
    return ""


def paired_test(
    a: FloatSeq,
    b: FloatSeq,
    *,
    name: str,
    delta: float,
    higher_is_better: bool = True,
    alpha: float = 0.05,
) -> PairedResult:
    """Paired t-test, 95% CI, Hedges' g_av and TOST for one comparison of arm ``a`` against arm ``b``.

    Args:
        a: Per-replicate values of arm ``a``.
        b: Per-replicate values of arm ``b``, paired with ``a`` by replicate.
        name: Name of the comparison.
        delta: Smallest effect of interest (> 0), the TOST equivalence margin.
        higher_is_better: Whether larger values of the metric are better (False for e.g. a fooling rate).
        alpha: Significance level for the verdict.

    Returns:
        The result, with ``p_holm``/``p_tost_holm`` ``nan`` and the verdict from the raw p-values.

    Raises:
        ValueError: If the lengths differ, ``n < 2``, any value is non-finite, ``delta <= 0`` or ``alpha``
            is outside (0, 1).
    """
    xa, xb = _check_pair(a, b)
    _check_delta(delta)
    _check_alpha(alpha)
    n = int(xa.size)
    d = xa - xb
    diff = float(np.mean(d))
    zero_sd = _zero_sd(d)
    if zero_sd:
        p = ci_low = ci_high = p_tost = _NAN
    else:
        res = stats.ttest_rel(xa, xb)
        p = float(res.pvalue)
        ci = res.confidence_interval(confidence_level=0.95)
        ci_low, ci_high = float(ci.low), float(ci.high)
        p_tost = tost_paired(d, delta)
    verdict = _verdict(diff, p, p_tost, higher_is_better, alpha)
    return PairedResult(
        name=name,
        n=n,
        mean_a=float(np.mean(xa)),
        mean_b=float(np.mean(xb)),
        diff=diff,
        ci_low=ci_low,
        ci_high=ci_high,
        p=p,
        p_holm=_NAN,
        hedges_g=hedges_g_av(xa, xb),
        delta=float(delta),
        p_tost=p_tost,
        p_tost_holm=_NAN,
        higher_is_better=higher_is_better,
        verdict=verdict,
        note=_note(verdict, zero_sd, p_tost, alpha),
    )


def holm_adjust(pvalues: FloatSeq) -> list[float]:
    """Holm (1979) step-down adjusted p-values.

    With the ``m`` finite p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted value of
    ``p_(i)`` is ``min(1, max_{j <= i} (m - j + 1) p_(j))``: monotone in the raw order and capped at 1.
    ``nan`` entries are not counted in ``m`` and stay ``nan``.

    Args:
        pvalues: Raw p-values in [0, 1] or ``nan``.

    Returns:
        Adjusted p-values, in the input order.

    Raises:
        ValueError: If a p-value is outside [0, 1] or infinite.
    """
    p = np.asarray(pvalues, dtype=float)
    finite = ~np.isnan(p)
    if np.any((p[finite] < 0) | (p[finite] > 1)):
        raise ValueError(f"p-values must lie in [0, 1] (or be nan), got {p.tolist()}")
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(finite)
    m = idx.size
    if m:
        order = idx[np.argsort(p[idx], kind="stable")]
        scaled = (m - np.arange(m)) * p[order]
        out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return [float(x) for x in out]


def holm(results: Sequence[PairedResult], alpha: float = 0.05) -> list[PairedResult]:
    """Apply the Holm correction across a family of comparisons and recompute the verdicts.

    The difference p-values and the TOST p-values are adjusted separately (each over the results whose
    value is not ``nan``), and each verdict is recomputed from ``p_holm`` and ``p_tost_holm``.

    Args:
        results: The family of pre-registered comparisons (from :func:`paired_test`).
        alpha: Family-wise significance level for the verdicts.

    Returns:
        New results, in the same order, with ``p_holm``, ``p_tost_holm``, ``verdict`` and ``note`` set.
    """
    _check_alpha(alpha)
    p_holm = holm_adjust([r.p for r in results])
    p_tost_holm = holm_adjust([r.p_tost for r in results])
    out = []
    for r, ph, pth in zip(results, p_holm, p_tost_holm, strict=True):
        verdict = _verdict(r.diff, ph, pth, r.higher_is_better, alpha)
        note = _note(verdict, math.isnan(r.p), pth, alpha)
        out.append(replace(r, p_holm=ph, p_tost_holm=pth, verdict=verdict, note=note))
    return out


def _sig(x: float, digits: int) -> float:
    return x if math.isnan(x) else float(f"{x:.{digits}g}")


def result_row(r: PairedResult, digits: int = 2) -> dict[str, object]:
    """One table row (CSV or markdown) for a result.

    Means, difference, CI, g and delta are rounded to ``digits`` decimal places; p-values to ``digits``
    significant figures (so small p-values are not rounded to 0).

    Args:
        r: The result.
        digits: Precision, see above.

    Returns:
        A dict with keys ``name, n, mean_a, mean_b, diff, ci, p, p_holm, g, delta, p_tost, p_tost_holm,
        verdict, note``; ``ci`` is the string ``"[lo, hi]"``.
    """
    return {
        "name": r.name,
        "n": r.n,
        "mean_a": round(r.mean_a, digits),
        "mean_b": round(r.mean_b, digits),
        "diff": round(r.diff, digits),
        "ci": f"[{r.ci_low:.{digits}f}, {r.ci_high:.{digits}f}]",
        "p": _sig(r.p, digits),
        "p_holm": _sig(r.p_holm, digits),
        "g": round(r.hedges_g, digits),
        "delta": r.delta,
        "p_tost": _sig(r.p_tost, digits),
        "p_tost_holm": _sig(r.p_tost_holm, digits),
        "verdict": r.verdict,
        "note": r.note,
    }


def sign_flip_p(diffs: FloatSeq) -> float:
    """Exact two-sided sign-flip (paired permutation) p-value of the mean difference.

    Under the null of no effect each paired difference is as likely to have either sign; the p-value is the
    share of all ``2^n`` sign assignments whose mean is at least as far from zero as the observed one
    (``scipy.stats.permutation_test`` with ``permutation_type="samples"``, enumerated exactly). Its smallest
    possible value is ``2 / 2^n``: 0.0625 for n = 5, 0.03125 for n = 6.

    Raises:
        ValueError: with fewer than 2 differences or a non-finite one.
    """
    d = _as_finite_array(diffs, "diffs")
    if d.size < 2:
        raise ValueError(f"a sign-flip test needs at least 2 paired differences, got {d.size}")
    if np.all(d == 0):
        return 1.0
    res = stats.permutation_test(
        (d,),
        lambda x, axis: np.mean(x, axis=axis),
        permutation_type="samples",
        n_resamples=2 ** int(d.size),
        alternative="two-sided",
        vectorized=True,
    )
    return float(res.pvalue)
