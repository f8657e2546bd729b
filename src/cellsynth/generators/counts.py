"""How many synthetic cells of which type: the seed paper's Q3 up-sampling rule and matched counts.

* :func:`q3_upsample_counts`: every minority type is filled up to the third quartile of the class
  sizes.
* :func:`matched_counts`: ``n`` cells in the training proportions (e.g. synthetic n = test n).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def _validated_counts(type_counts: Mapping[str, int]) -> dict[str, int]:
    if not type_counts:
        raise ValueError("type_counts is empty")
    counts: dict[str, int] = {}
    for cell_type, count in type_counts.items():
        if isinstance(count, bool) or int(count) != count or count < 0:
            raise ValueError(f"count of {cell_type!r} must be a non-negative integer, got {count!r}")
        counts[str(cell_type)] = int(count)
    return counts


def q3_upsample_counts(type_counts: Mapping[str, int]) -> dict[str, int]:
    """Synthetic cells per type under the seed paper's Q3 rule.

    ``q3 = np.quantile(counts, 0.75, method="nearest")`` over the class sizes; every type with
    fewer than ``q3`` cells gets ``q3 - count`` synthetic cells. Types at or above ``q3`` get none
    and are **omitted** from the result, so it can be passed straight to
    ``Generator.sample(sum(result.values()), cell_types=result)``. Keys keep the input order.

    >>> q3_upsample_counts({"a": 10, "b": 20, "c": 30, "d": 40, "e": 100})
    {'a': 30, 'b': 20, 'c': 10}
    """
    counts = _validated_counts(type_counts)
    q3 = int(np.quantile(np.asarray(list(counts.values())), 0.75, method="nearest"))
    return {cell_type: q3 - count for cell_type, count in counts.items() if count < q3}


def matched_counts(type_counts: Mapping[str, int], n_cells: int, seed: int = 0) -> dict[str, int]:
    """``n_cells`` split over the types in their training proportions.

    Largest-remainder (Hamilton) rounding: each type first gets ``floor(n * p_t)``; the cells left
    over go one each to the types with the largest fractional parts ``n * p_t - floor(n * p_t)``.
    Ties between equal fractional parts are broken by a random order drawn from ``seed``, so the
    result is deterministic for a given seed and no type is favoured by its position. The result
    has every input type (zero counts included), in input order, and sums to ``n_cells``.
    """
    counts = _validated_counts(type_counts)
    n_cells = int(n_cells)
    if n_cells < 0:
        raise ValueError(f"n_cells must be >= 0, got {n_cells}")
    values = np.asarray(list(counts.values()), dtype=np.int64)
    total = int(values.sum())
    if total == 0:
        raise ValueError("type_counts sum to 0: no proportions to match")
    # Exact integer arithmetic: quota_t = n * c_t / total = floor + remainder_t / total.
    floors = (n_cells * values) // total
    remainders = (n_cells * values) % total
    left = n_cells - int(floors.sum())
    tie_break = np.random.default_rng(seed).permutation(len(values))
    # Sort by remainder descending, then by the seeded tie-break order.
    order = np.lexsort((tie_break, -remainders))
    result = floors.copy()
    result[order[:left]] += 1
    return {cell_type: int(c) for cell_type, c in zip(counts, result, strict=True)}
