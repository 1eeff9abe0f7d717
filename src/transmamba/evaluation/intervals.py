"""Accuracy with its uncertainty: the Wilson score interval of k successes in n trials, and "% of teacher".

The Wilson interval (Wilson 1927) stays inside [0, 1] and keeps its coverage at 0/n and n/n, where
the normal approximation collapses to a point: 0 of 10 is [0, 0.278], 10 of 10 is [0.722, 1]. With
10 trials an accuracy of 0.7 is [0.40, 0.89], so telling 0.67 from 1.0 takes tens of trials.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the two-sided 95% normal quantile


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval (lo, hi) of the success probability after k successes in n trials
    (95% for the default z)."""
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"wilson_interval needs n > 0 trials, got {n!r}")
    if not 0 <= k <= n:
        raise ValueError(f"wilson_interval: k={k} successes outside [0, n={n}]")
    p, z2 = k / n, z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    lo, hi = max(0.0, center - half), min(1.0, center + half)
    return (0.0 if k == 0 else lo), (1.0 if k == n else hi)  # exact ends, not 1 - 1e-16


def accuracy(k: int, n: int) -> dict:
    """{"acc", "ci": [lo, hi] (Wilson, 95%), "hits", "n"} of k successes in n trials."""
    lo, hi = wilson_interval(int(k), int(n))
    return {"acc": k / n, "ci": [lo, hi], "hits": int(k), "n": int(n)}


def pct_of_teacher(student_acc: float, teacher_acc: float) -> float | None:
    """100 x student accuracy / teacher accuracy; None when the teacher scores 0 (no ratio to give)."""
    return None if teacher_acc == 0 else 100.0 * student_acc / teacher_acc
