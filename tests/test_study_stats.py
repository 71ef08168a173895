"""Paired statistics of the replicate study (ltpa.study.stats) against values worked out by hand.

The expected numbers come from the textbook formulas written out here with ``math`` (and the t
distribution's ``sf``/``ppf`` from scipy), never from calling the function under test a second time.
"""

import math
import random

import pytest
from scipy.stats import t as t_dist

from ltpa.study.stats import (
    PairedResult,
    format_mean_std,
    hedges_g_av,
    holm,
    holm_adjust,
    mean_std,
    paired_test,
    result_row,
    tost_paired,
)

# The worked example: d = a - b = [-0.5, -0.1, -0.9, -0.2, -0.8], mean -0.5, deviations 0, .4, -.4, .3, -.3,
# sum of squares 0.5, variance 0.125, se = sqrt(0.125 / 5) = 0.05 ** 0.5, t = -0.5 / se = -sqrt(10), df = 4.
A = [1.0, 2.0, 3.0, 4.0, 5.0]
B = [1.5, 2.1, 3.9, 4.2, 5.8]
SE = math.sqrt(0.125 / 5)
T = -math.sqrt(10.0)


def test_paired_t_matches_textbook_formula():
    r = paired_test(A, B, name="ex", delta=0.1)
    assert isinstance(r, PairedResult)
    assert r.n == 5
    assert r.mean_a == pytest.approx(3.0)
    assert r.mean_b == pytest.approx(3.5)
    assert r.diff == pytest.approx(-0.5)
    assert math.isclose(-0.5 / SE, T)
    p_expected = 2 * t_dist.sf(abs(T), 4)
    assert r.p == pytest.approx(p_expected, rel=1e-9)
    assert r.p == pytest.approx(0.0341094, abs=1e-6)
    half = t_dist.ppf(0.975, 4) * SE
    assert r.ci_low == pytest.approx(-0.5 - half, rel=1e-9)
    assert r.ci_high == pytest.approx(-0.5 + half, rel=1e-9)
    assert (r.ci_low, r.ci_high) == pytest.approx((-0.9389945, -0.0610055), abs=1e-6)
    assert math.isnan(r.p_holm) and math.isnan(r.p_tost_holm)
    # Significant and a > b is wanted, but a < b: worse. delta 0.1 is well inside the CI: no equivalence.
    assert r.verdict == "worse"
    assert r.note == ""
    assert paired_test(B, A, name="ex", delta=0.1).verdict == "better"
    assert paired_test(A, B, name="ex", delta=0.1, higher_is_better=False).verdict == "better"


def test_hedges_g_av_by_hand():
    # sd_a = sqrt(2.5); b has mean 3.5, deviations -2, -1.4, .4, .7, 2.3, SS 11.9, var 2.975.
    sd_a, sd_b = math.sqrt(2.5), math.sqrt(2.975)
    d_av = -0.5 / ((sd_a + sd_b) / 2)
    # Exact correction for df = 4: Gamma(2) / (sqrt(2) Gamma(3/2)) = 1 / (sqrt(2) sqrt(pi) / 2) = sqrt(2/pi).
    j = math.gamma(2.0) / (math.sqrt(2.0) * math.gamma(1.5))
    assert j == pytest.approx(math.sqrt(2 / math.pi))
    expected = j * d_av
    assert expected == pytest.approx(-0.2413474, abs=1e-6)
    assert hedges_g_av(A, B) == pytest.approx(expected, rel=1e-9)
    assert paired_test(A, B, name="g", delta=1.0).hedges_g == pytest.approx(expected, rel=1e-9)
    # The 1 - 3/(4 df - 1) approximation would give a measurably different value.
    assert hedges_g_av(A, B) != pytest.approx(0.8 * d_av, rel=1e-4)
    # Sign follows a - b; no spread in either arm: undefined.
    assert hedges_g_av(B, A) == pytest.approx(-expected, rel=1e-9)
    assert math.isnan(hedges_g_av([2.0, 2.0, 2.0], [1.0, 1.0, 1.0]))


def test_tost_known_values():
    d = [a - b for a, b in zip(A, B)]
    # Bounds +-1: the lower one-sided test has t = (-0.5 + 1) / se = sqrt(10); the upper one is tiny.
    p_lower = t_dist.sf((-0.5 + 1.0) / SE, 4)
    p_upper = t_dist.cdf((-0.5 - 1.0) / SE, 4)
    assert p_upper < p_lower
    assert tost_paired(d, 1.0) == pytest.approx(p_lower, rel=1e-9)
    # Mirrored differences, margin 0.6: now the upper test, t = (0.5 - 0.6) / se, is the larger p.
    neg = [-x for x in d]
    p_upper = t_dist.cdf((0.5 - 0.6) / SE, 4)
    assert p_upper > t_dist.sf((0.5 + 0.6) / SE, 4)
    assert tost_paired(neg, 0.6) == pytest.approx(p_upper, rel=1e-9)
    assert tost_paired(neg, 0.6) == pytest.approx(0.2808, abs=1e-3)
    with pytest.raises(ValueError, match="delta"):
        tost_paired(d, 0.0)
    with pytest.raises(ValueError, match="delta"):
        tost_paired(d, -1.0)
    with pytest.raises(ValueError, match="at least 2"):
        tost_paired([0.1], 1.0)


def test_equivalent_when_interval_well_inside_delta():
    # Dyadic numbers so that d = a - b is exact: d = [1/16, -1/16, 1/32, -1/32, 0], mean exactly 0.
    a = [90.0, 90.25, 89.75, 90.5, 90.0]
    d = [0.0625, -0.0625, 0.03125, -0.03125, 0.0]
    b = [x - y for x, y in zip(a, d)]
    r = paired_test(a, b, name="eq", delta=0.5)
    assert r.diff == 0.0
    assert r.p == pytest.approx(1.0)
    se = math.sqrt((2 * 0.0625**2 + 2 * 0.03125**2) / 4 / 5)
    assert r.p_tost == pytest.approx(t_dist.sf(0.5 / se, 4), rel=1e-9)
    assert r.p_tost < 1e-4
    # Equivalently, the 90% interval lies inside (-delta, delta).
    assert t_dist.ppf(0.95, 4) * se < 0.5
    assert r.verdict == "equivalent"
    # A margin narrower than the 90% interval's half-width (2.13 * se = 0.047) is not established.
    assert paired_test(a, b, name="eq", delta=0.03).verdict == "inconclusive"


def test_large_effect_respects_direction():
    # Fooling rate: lower is better. Arm a fools far less often than arm b.
    a = [0.10, 0.12, 0.11, 0.09, 0.10]
    b = [0.40, 0.42, 0.38, 0.41, 0.39]
    low = paired_test(a, b, name="fool", delta=0.02, higher_is_better=False)
    assert low.diff == pytest.approx(-0.296)
    assert low.p < 1e-5
    assert low.verdict == "better"
    assert paired_test(b, a, name="fool", delta=0.02, higher_is_better=False).verdict == "worse"
    assert paired_test(a, b, name="acc", delta=0.02, higher_is_better=True).verdict == "worse"
    assert paired_test(b, a, name="acc", delta=0.02, higher_is_better=True).verdict == "better"


def test_noisy_small_sample_is_inconclusive():
    r = paired_test([70.0, 80.0, 60.0], [72.0, 65.0, 71.0], name="noisy", delta=1.0)
    # d = [-2, 15, -11], mean 2/3: neither a difference nor equivalence within +-1 can be shown.
    assert r.diff == pytest.approx(2 / 3)
    assert r.p > 0.5 and r.p_tost > 0.4
    assert r.verdict == "inconclusive"
    assert r.note == ""


def test_significant_but_within_delta_is_flagged():
    # p = 0.034 < 0.05 and the TOST against +-1 gives 0.017 < 0.05: detectable yet below the SESOI.
    r = paired_test(A, B, name="small", delta=1.0)
    assert r.p_tost == pytest.approx(t_dist.sf(math.sqrt(10.0), 4), rel=1e-9)
    assert r.verdict == "worse"
    assert "within ±delta" in r.note


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ([1.0, 2.0, 3.0], [0.0, 1.0, 2.0]),  # every difference exactly 1
        ([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]),  # every difference exactly 0
        ([0.3, 0.7, 1.1], [0.2, 0.6, 1.0]),  # every difference 0.1 up to float round-off
    ],
)
def test_zero_variance_differences_are_inconclusive_with_note(a, b):
    r = paired_test(a, b, name="flat", delta=0.5)
    assert math.isnan(r.p) and math.isnan(r.p_tost)
    assert math.isnan(r.ci_low) and math.isnan(r.ci_high)
    assert r.verdict == "inconclusive"
    assert "zero variance" in r.note
    assert math.isnan(tost_paired([x - y for x, y in zip(a, b)], 0.5))
    # Holm keeps the nan and the note.
    (h,) = holm([r])
    assert math.isnan(h.p_holm) and math.isnan(h.p_tost_holm)
    assert h.verdict == "inconclusive" and "zero variance" in h.note


def test_invalid_inputs_raise():
    with pytest.raises(ValueError, match="same length"):
        paired_test([1.0, 2.0, 3.0], [1.0, 2.0], name="x", delta=1.0)
    with pytest.raises(ValueError, match="at least 2"):
        paired_test([1.0], [2.0], name="x", delta=1.0)
    with pytest.raises(ValueError, match="non-finite"):
        paired_test([1.0, math.nan, 3.0], [1.0, 2.0, 3.0], name="x", delta=1.0)
    with pytest.raises(ValueError, match="non-finite"):
        paired_test([1.0, 2.0, 3.0], [1.0, math.inf, 3.0], name="x", delta=1.0)
    with pytest.raises(ValueError, match="delta"):
        paired_test(A, B, name="x", delta=0.0)
    with pytest.raises(ValueError, match="delta"):
        paired_test(A, B, name="x", delta=math.nan)
    with pytest.raises(ValueError, match="alpha"):
        paired_test(A, B, name="x", delta=1.0, alpha=1.5)
    with pytest.raises(ValueError):
        paired_test(["a", "b"], [1.0, 2.0], name="x", delta=1.0)


def test_holm_hand_worked():
    # Sorted: .005*4 = .02, .01*3 = .03, .03*2 = .06, .04*1 = .04 -> running max keeps .06.
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # Cap at 1: .5*2 = 1.0, .6*1 = .6 -> running max 1.0.
    assert holm_adjust([0.5, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm_adjust([0.3, 0.4, 0.02]) == pytest.approx([0.6, 0.6, 0.06])
    # nan is left out of the family (m = 2, not 3) and stays nan.
    out = holm_adjust([0.01, math.nan, 0.04])
    assert out[0] == pytest.approx(0.02) and out[2] == pytest.approx(0.04) and math.isnan(out[1])
    assert holm_adjust([]) == []
    with pytest.raises(ValueError):
        holm_adjust([0.1, 1.2])


def test_holm_monotone_capped_and_not_below_raw():
    rng = random.Random(0)
    for _ in range(50):
        p = [rng.random() ** 3 for _ in range(rng.randint(1, 9))]
        adj = holm_adjust(p)
        for i in range(len(p)):
            assert p[i] <= adj[i] <= 1.0
            for j in range(len(p)):
                if p[i] <= p[j]:
                    assert adj[i] <= adj[j]
        assert min(adj) == pytest.approx(min(1.0, len(p) * min(p)))


def test_holm_on_results_recomputes_verdicts():
    first = paired_test(A, B, name="one", delta=0.1)
    second = paired_test(A, B, name="two", delta=0.1, higher_is_better=False)
    flat = paired_test([1.0, 2.0, 3.0], [0.0, 1.0, 2.0], name="flat", delta=0.1)
    assert (first.verdict, second.verdict) == ("worse", "better")
    out = holm([first, flat, second])
    assert [r.name for r in out] == ["one", "flat", "two"]
    # Two finite p's, both 0.0341: each becomes 2 * 0.0341 = 0.068 > 0.05 (the nan one is not counted).
    for r in (out[0], out[2]):
        assert r.p_holm == pytest.approx(2 * first.p, rel=1e-9)
        assert r.p_tost_holm == pytest.approx(min(1.0, 2 * first.p_tost), rel=1e-9)
        assert r.verdict == "inconclusive"
        assert r.p == first.p  # raw values untouched
    assert math.isnan(out[1].p_holm)
    # Inputs are not modified.
    assert math.isnan(first.p_holm) and first.verdict == "worse"


def test_holm_equivalence_uses_adjusted_tost():
    # Alone: p = 0.034 and p_tost = 0.017 against +-1, so "worse" (flagged as within delta). In a family of
    # two such comparisons Holm gives p_holm = 2 * 0.034 = 0.068 (not significant) and
    # p_tost_holm = 2 * 0.017 = 0.034 < 0.05: equivalent.
    first = paired_test(A, B, name="one", delta=1.0)
    second = paired_test(A, B, name="two", delta=1.0)
    assert first.verdict == "worse"
    for r in holm([first, second]):
        assert r.p_holm == pytest.approx(2 * 2 * t_dist.sf(math.sqrt(10.0), 4), rel=1e-9)
        assert r.p_tost_holm == pytest.approx(2 * t_dist.sf(math.sqrt(10.0), 4), rel=1e-9)
        assert r.verdict == "equivalent"
        assert r.note == ""
    # A stricter family-wise alpha removes the equivalence too.
    assert all(r.verdict == "inconclusive" for r in holm([first, second], alpha=0.01))


def test_mean_std_and_format():
    # [93.0, 93.5, 93.1]: mean 93.2, deviations -.2, .3, -.1, SS .14, var .07.
    mean, std = mean_std([93.0, 93.5, 93.1])
    assert mean == pytest.approx(93.2)
    assert std == pytest.approx(math.sqrt(0.07))
    assert format_mean_std([93.0, 93.5, 93.1]) == "93.2 ± 0.3"
    assert format_mean_std([93.0, 93.5, 93.1], digits=2) == "93.20 ± 0.26"
    m1, s1 = mean_std([5.0])
    assert m1 == 5.0 and math.isnan(s1)
    assert format_mean_std([5.0]) == "5.0 (n=1)"
    with pytest.raises(ValueError):
        mean_std([])
    with pytest.raises(ValueError):
        mean_std([1.0, math.nan])


def test_result_row():
    row = result_row(paired_test(A, B, name="ex", delta=0.1))
    assert list(row) == [
        "name",
        "n",
        "mean_a",
        "mean_b",
        "diff",
        "ci",
        "p",
        "p_holm",
        "g",
        "delta",
        "p_tost",
        "p_tost_holm",
        "verdict",
        "note",
    ]
    assert row["name"] == "ex" and row["n"] == 5
    assert row["mean_a"] == 3.0 and row["mean_b"] == 3.5 and row["diff"] == -0.5
    assert row["ci"] == "[-0.94, -0.06]"
    assert row["p"] == 0.034  # two significant figures, not two decimals
    assert math.isnan(row["p_holm"])
    assert row["g"] == -0.24
    assert row["delta"] == 0.1
    assert row["verdict"] == "worse"
    assert result_row(paired_test(A, B, name="ex", delta=0.1), digits=3)["ci"] == "[-0.939, -0.061]"
