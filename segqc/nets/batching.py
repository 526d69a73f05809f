"""Several cases' network inputs through few network calls, and the outputs back per case.

QC methods score a batch of cases (`segqc.methods.base.QCMethod.score_batch`) by stacking
their model-space inputs; these helpers keep the calls bounded in memory and split the
answers back.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["MAX_ELEMENTS", "forward_grouped", "split_counts"]

# Input values per network call (32 MB of float32): a batch of large volumes goes in a few calls.
MAX_ELEMENTS = 2**23


def forward_grouped(fn: Callable, rows: Sequence, *, min_rows: int = 1, max_elements: int = MAX_ELEMENTS) -> list:
    """``fn`` over single-sample tensors ``(1, ...)``, stacked into few calls: one output ``(1, ...)`` per row.

    Rows of one shape share calls of at most ``max_elements`` input values, but at least
    ``min_rows`` rows; rows of different shapes never share a call (stacking needs equal
    shapes, and padding would change what the network sees).
    """
    import torch

    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(tuple(r.shape), []).append(i)
    out: list = [None] * len(rows)
    for shape, idx in groups.items():
        per = max(1, int(min_rows), int(max_elements) // math.prod(shape))
        for s in range(0, len(idx), per):
            chunk = idx[s:s + per]
            for i, y in zip(chunk, fn(torch.cat([rows[i] for i in chunk])).split(1)):
                out[i] = y
    return out


def split_counts(x: np.ndarray, counts: Sequence[int], axis: int = 0) -> list[np.ndarray]:
    """``x`` cut along ``axis`` into consecutive parts of ``counts`` entries (one per case)."""
    return np.split(x, np.cumsum(counts)[:-1], axis=axis)
