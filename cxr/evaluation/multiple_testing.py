"""Holm's step-down adjustment of p-values for a family of comparisons (compare.py's paired differences).

Written here because scipy (1.17) offers only Benjamini-Hochberg/Yekutieli (``false_discovery_control``) and
statsmodels is not a dependency; Holm controls the family-wise error rate without assuming independence.
"""

from __future__ import annotations


def holm(p_values) -> list[float | None]:
    """Holm-adjusted p-values in the input order: the i-th smallest of m is multiplied by (m - i + 1), made
    non-decreasing along that order, capped at 1. None entries (no p-value) stay None and do not count in m."""
    present = [i for i, p in enumerate(p_values) if p is not None]
    adjusted: list[float | None] = [None] * len(p_values)
    m = len(present)
    order = sorted(present, key=lambda i: p_values[i])
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[i])))
        adjusted[i] = running
    return adjusted
