"""Label values ↔ channel indices: the one lookup shared by every network, one-hot and map.

Masks keep the dataset's own label values (``{0, 1}``, but also ``{0, 2}`` or ``{0, 3, 5}``);
networks, one-hot encodings and probability channels need consecutive indices. Index 0
is the background and index ``i`` the ``i``-th label of ``labels`` (the plan's order).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["label_dtype", "to_index", "to_labels", "unknown_labels"]


def _as_labels(labels: Sequence[int]) -> list[int]:
    out = [int(k) for k in labels]
    if any(k <= 0 for k in out) or len(set(out)) != len(out):
        raise ValueError(f"labels must be distinct ints > 0, got {out}")
    return out


def label_dtype(labels: Sequence[int]) -> type:
    """The smallest dtype segqc writes masks of these label values in."""
    return np.uint8 if max(labels, default=0) <= 255 else np.int32


def _index_dtype(n_labels: int) -> type:
    # one spare value above the last index marks values outside the labels
    return np.uint8 if n_labels < 255 else np.int16


def _lookup(mask: np.ndarray, labels: list[int], fill: int) -> np.ndarray:
    """Indices of ``mask``'s values; values that are neither 0 nor a label get ``fill``."""
    mask = np.asarray(mask)
    if mask.dtype == bool:
        mask = mask.view(np.uint8)
    elif mask.dtype.kind == "f" and np.array_equal(mask, np.round(mask)):  # labels stored as floats
        mask = mask.astype(np.int64)
    if mask.dtype.kind not in "iu":
        raise ValueError(f"a mask holds integer labels, got {mask.dtype} values such as {mask.ravel()[:3].tolist()}")
    top = max(labels, default=0)
    lut = np.full(top + 2, fill, dtype=_index_dtype(len(labels)))
    lut[0] = 0
    lut[labels] = np.arange(1, len(labels) + 1)
    # the last slot of the table takes every value outside 0..top (negative ones via index -1)
    info = np.iinfo(mask.dtype)
    return lut[np.clip(mask, max(info.min, -1), min(info.max, top + 1))]


def _indices(mask: np.ndarray, labels: list[int]) -> tuple[np.ndarray, list[int]]:
    """Indices of ``mask`` and its values that are not labels (their indices are then meaningless)."""
    marker = len(labels) + 1
    idx = _lookup(mask, labels, marker)
    bad = idx == marker
    return idx, np.unique(np.asarray(mask)[bad]).astype(int).tolist() if bad.any() else []


def unknown_labels(mask: np.ndarray, labels: Sequence[int]) -> list[int]:
    """The values of ``mask`` that are neither background (0) nor one of ``labels``, sorted."""
    return _indices(mask, _as_labels(labels))[1]


def to_index(mask: np.ndarray, labels: Sequence[int], *, strict: bool = True, what: str = "mask") -> np.ndarray:
    """Label values → indices 0..L (uint8 below 255 labels): 0 stays 0, ``labels[i]`` becomes ``i + 1``.

    Args:
        strict: raise a ValueError naming the values that are not in ``labels`` (and
            ``what``); False maps them to 0, for callers that treat them as background.
    """
    labels = _as_labels(labels)
    if not strict:
        return _lookup(mask, labels, 0)
    idx, unknown = _indices(mask, labels)
    if unknown:
        raise ValueError(f"{what} has label(s) {unknown} that are not among the labels {labels}")
    return idx


def to_labels(index: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """Indices 0..L → label values (the inverse of `to_index`), in `label_dtype`."""
    labels = _as_labels(labels)
    return np.asarray([0, *labels], dtype=label_dtype(labels))[index]
