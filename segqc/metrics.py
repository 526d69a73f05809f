"""Segmentation metrics: one definition used everywhere in segqc.

Conventions (the same as ../shared/benchmarks and MONAI):

* Dice = 2|P∩G| / (|P| + |G|); both empty → 1.0, one empty → 0.0.
* HD95 (mm) = max of the two directed 95th percentiles of distances between the
  boundary voxels of P and G (MONAI ``compute_hausdorff_distance(percentile=95)``);
  boundary = mask XOR its binary erosion (face connectivity). Both empty → 0.0,
  one empty → NaN (no distance exists).

Masks are integer label arrays ``(Y, X)`` or ``(Z, Y, X)``; ``spacing`` is in mm in the
same axis order and is required for HD95, since millimetres are what clinicians read.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["dice", "hd95", "dice_per_class", "hd95_per_class", "mean_foreground", "labels_of", "binary_dice",
           "binary_hd95"]


def labels_of(*masks: np.ndarray) -> list[int]:
    """Sorted foreground labels present in any of ``masks``."""
    found: set[int] = set()
    for m in masks:
        found.update(int(v) for v in np.unique(m) if v != 0)
    return sorted(found)


def _check_pair(pred: np.ndarray, ref: np.ndarray) -> None:
    if pred.shape != ref.shape:
        raise ValueError(f"pred and ref should have the same shape, got {pred.shape} and {ref.shape}")


def binary_dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice of two boolean masks; both empty → 1.0, one empty → 0.0."""
    _check_pair(pred, ref)
    p, r = pred.astype(bool, copy=False), ref.astype(bool, copy=False)
    denom = int(p.sum()) + int(r.sum())
    if denom == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, r).sum()) / denom


def _edges(mask: np.ndarray) -> np.ndarray:
    return mask ^ ndimage.binary_erosion(mask)


def _directed_p95(src_edges: np.ndarray, dst_edges: np.ndarray, spacing: Sequence[float], q: float) -> float:
    # distance from every voxel to the nearest boundary voxel of dst, read at src's boundary
    dist = ndimage.distance_transform_edt(~dst_edges, sampling=spacing)
    return float(np.percentile(dist[src_edges], q))


def binary_hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], percentile: float = 95.0) -> float:
    """Symmetric HD95 in mm of two boolean masks (see module conventions)."""
    _check_pair(pred, ref)
    spacing = _check_spacing(spacing, pred.ndim)
    p, r = pred.astype(bool), ref.astype(bool)
    p_any, r_any = p.any(), r.any()
    if not p_any and not r_any:
        return 0.0
    if not p_any or not r_any:
        return float("nan")
    # crop to the union's bounding box with a 1-voxel margin: distances between the two
    # boundaries never leave it, and the distance transform gets much cheaper
    box = ndimage.find_objects((p | r).astype(np.uint8))[0]
    box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
    p, r = np.pad(p[box], 1), np.pad(r[box], 1)  # zero border keeps image-edge voxels on the boundary
    ep, er = _edges(p), _edges(r)
    return max(_directed_p95(ep, er, spacing, percentile), _directed_p95(er, ep, spacing, percentile))


def _check_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    s = tuple(float(v) for v in np.atleast_1d(spacing))
    if len(s) == 1:
        s = s * ndim
    if len(s) != ndim or not all(v > 0 and np.isfinite(v) for v in s):
        raise ValueError(f"spacing must be {ndim} positive floats in mm, got {spacing}")
    return s


def dice_per_class(pred: np.ndarray, ref: np.ndarray, labels: Sequence[int] | None = None) -> dict[int, float]:
    """Dice for each foreground label (default: labels present in either mask)."""
    _check_pair(pred, ref)
    labels = labels_of(pred, ref) if labels is None else labels
    return {int(k): binary_dice(pred == k, ref == k) for k in labels}


def hd95_per_class(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
                   labels: Sequence[int] | None = None) -> dict[int, float]:
    """HD95 (mm) for each foreground label (default: labels present in either mask)."""
    _check_pair(pred, ref)
    labels = labels_of(pred, ref) if labels is None else labels
    return {int(k): binary_hd95(pred == k, ref == k, spacing) for k in labels}


def mean_foreground(values: dict[int, float]) -> float:
    """Mean over foreground classes, ignoring NaN (NaN if every class is NaN or none exist)."""
    arr = np.array(list(values.values()), dtype=float)
    if arr.size == 0 or np.all(np.isnan(arr)):
        return float("nan")
    return float(np.nanmean(arr))


def dice(pred: np.ndarray, ref: np.ndarray, labels: Sequence[int] | None = None) -> float:
    """Mean Dice over foreground labels. With no label in either mask (both empty) → 1.0."""
    per = dice_per_class(pred, ref, labels)
    return mean_foreground(per) if per else 1.0


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], labels: Sequence[int] | None = None) -> float:
    """Mean HD95 (mm) over foreground labels, ignoring labels where it is NaN. Both empty → 0.0."""
    per = hd95_per_class(pred, ref, spacing, labels)
    return mean_foreground(per) if per else 0.0
