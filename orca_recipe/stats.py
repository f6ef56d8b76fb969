"""Small-sample statistics for pass@1: one proportion, and two checkpoints on the same problems.

Standard library only. Two checkpoints scored on the same eval set are paired data: a
problem both solve (or both miss) says nothing about which is better, so the comparison
rests on the discordant problems, and comparing two independent Wilson intervals would
throw that pairing away (and call many real gains noise).
"""

from __future__ import annotations

import math
from fractions import Fraction


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion; sane at 0 and n (the Wald interval is not)."""
    if n == 0:
        return 0.0, 0.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: min(1, 2 P(X <= min(b, c))), X ~ Bin(b + c, 1/2).

    b and c are the discordant counts (right only under A, right only under B). Exact because
    eval sets are small and b + c often is in the single digits, where the chi-square
    approximation is poor. Computed with integers, so it is exact for any size.
    """
    _check_counts(b, c)
    m = b + c
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, k) for k in range(min(b, c) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**m)))


def mcnemar_one_sided(b: int, c: int) -> float:
    """One-sided exact McNemar p for "B is better than A": P(X >= c), X ~ Bin(b + c, 1/2).

    The planned comparisons of a run (base -> SFT, SFT -> each iteration, base -> last) each
    ask one direction, so each is tested one-sided; `holm` then adjusts the family.
    """
    _check_counts(b, c)
    m = b + c
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, k) for k in range(c, m + 1))
    return float(Fraction(tail, 2**m))


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment (1979): controls the family-wise error rate at any alpha
    for any dependence between the tests, and is uniformly more powerful than Bonferroni.
    Returns the adjusted p-values in the input order."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def paired_difference(b: int, c: int, n: int, z: float = 1.96) -> tuple[float, float, float]:
    """(diff, lo, hi): pB - pA = (c - b) / n for paired proportions, with Tango's score interval.

    Tango (1998, Stat Med 17:891) inverts the score test of H0: pB - pA = d, using the
    constrained maximum-likelihood estimate of the discordant cell. It needs only b, c and n
    (Newcombe's method 10 also needs the concordant cells), stays inside [-1, 1], is not
    degenerate when b + c == 0 (it then widens like a Wilson interval: half-width
    z^2 / (n + z^2)), and is one of the two intervals Fagerland, Lydersen & Laake (2013,
    Stat Methods Med Res) recommend for paired proportions. Swapping b and c mirrors it.
    The limits are found by bisection to ~1e-15; for n == 0 the interval is [-1, 1].
    """
    _check_counts(b, c, n)
    if n == 0:
        return 0.0, -1.0, 1.0
    diff = (c - b) / n
    lo = -1.0 if b == n else _bisect(lambda d: _tango_score(d, b, c, n) - z, -1.0, diff)
    hi = 1.0 if c == n else _bisect(lambda d: _tango_score(d, b, c, n) + z, diff, 1.0)
    return diff, min(lo, diff), max(hi, diff)


def _tango_score(d: float, b: int, c: int, n: int) -> float:
    """Tango's score statistic for H0: pB - pA = d; decreasing in d, 0 at d = (c - b) / n.

    In Tango's notation n12 = c, n21 = b; q is the constrained MLE of P(right only under A).
    """
    qa, qb, qc = 2 * n, -(b + c) + (2 * n - c + b) * d, -b * d * (1 - d)
    q = (math.sqrt(max(0.0, qb * qb - 4 * qa * qc)) - qb) / (2 * qa)
    var = n * (2 * q + d * (1 - d))
    num = c - b - n * d
    if var <= 0:  # only at the edges (d = ±1 or b + c == 0 at d = 0)
        return 0.0 if num == 0 else math.copysign(math.inf, num)
    return num / math.sqrt(var)


def _bisect(f, lo: float, hi: float, iters: int = 60) -> float:
    """The root of f on [lo, hi], given f(lo) > 0 > f(hi) (f decreasing); no scipy needed."""
    for _ in range(iters):
        mid = (lo + hi) / 2
        if f(mid) > 0:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _check_counts(b: int, c: int, n: int | None = None) -> None:
    if b < 0 or c < 0 or (n is not None and b + c > n):
        raise ValueError(f"discordant counts b={b}, c={c} do not fit n={n}")
