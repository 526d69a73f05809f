"""Geometry the corruptions share: structures and their sizes in mm, distances, smooth random fields."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from scipy import ndimage as ndi

Labels = Sequence[int] | None  # the labels to corrupt (None: every label present)

# ---------------------------------------------------------------------------------------
# helpers


def spacing_array(mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    sp = np.asarray(spacing, dtype=float)
    if sp.shape != (mask.ndim,):
        raise ValueError(f"spacing {tuple(spacing)} does not match mask of shape {mask.shape}")
    return sp


def label_boxes(mask: np.ndarray) -> dict[int, tuple[slice, ...]]:
    """Bounding box of every label present, in one pass over the array."""
    if mask.size == 0 or not mask.any():
        return {}
    arr = mask.view(np.uint8) if mask.dtype == bool else mask
    return {i + 1: box for i, box in enumerate(ndi.find_objects(arr)) if box is not None}


def present_labels(mask: np.ndarray) -> list[int]:
    return sorted(label_boxes(mask))


def equiv_radius(n_vox: float, sp: np.ndarray) -> float:
    """Radius (mm) of the ball with the structure's physical volume: our unit of size."""
    d = len(sp)
    vol = float(n_vox) * float(np.prod(sp))
    return (vol * math.gamma(d / 2 + 1) / math.pi ** (d / 2)) ** (1 / d)


def ball_voxels(radius_mm: float, sp: np.ndarray) -> float:
    d = len(sp)
    return math.pi ** (d / 2) / math.gamma(d / 2 + 1) * radius_mm**d / float(np.prod(sp))


def expand_box(box: tuple[slice, ...], margin_mm: float, sp: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Box grown by a physical margin (+1 voxel so distance transforms see background)."""
    m = np.ceil(max(margin_mm, 0.0) / sp).astype(int) + 1
    return tuple(slice(max(s.start - k, 0), min(s.stop + k, n)) for s, k, n in zip(box, m, shape))


def label_structures(
    mask: np.ndarray, sp: np.ndarray, labels: Labels
) -> Iterator[tuple[int, tuple[slice, ...], int, float]]:
    """(label, bbox, voxel count, equivalent radius mm) for each selected label present."""
    boxes = label_boxes(mask)
    for lab in sorted(boxes) if labels is None else [int(v) for v in labels]:
        box = boxes.get(lab)
        if box is None:
            continue
        n = int(np.count_nonzero(mask[box] == lab))
        yield lab, box, n, equiv_radius(n, sp)


def label_coords(mask: np.ndarray, box: tuple[slice, ...], lab: int) -> np.ndarray:
    """(N, ndim) voxel indices of a label, found inside its bbox only."""
    idx = np.nonzero(mask[box] == lab)
    return np.stack([i + s.start for i, s in zip(idx, box)], axis=1)


def random_unit(ndim: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(ndim)
    n = np.linalg.norm(v)
    return v / n if n > 0 else np.eye(ndim)[0]


def random_rotation(ndim: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((ndim, ndim)))
    return q * np.sign(np.diag(r))


def edt_mm(b: np.ndarray, sp: np.ndarray) -> np.ndarray:
    """Distance (mm) of True voxels to the nearest False one; scipy is undefined without any."""
    if b.all():
        pad = ndi.distance_transform_edt(np.pad(b, 1), sampling=sp)
        return pad[tuple(slice(1, -1) for _ in range(b.ndim))]
    return ndi.distance_transform_edt(b, sampling=sp)


def signed_distance(b: np.ndarray, sp: np.ndarray) -> np.ndarray:
    """Negative inside, positive outside, in mm; ``<= 0`` gives ``b`` back exactly."""
    return edt_mm(~b, sp) - edt_mm(b, sp)


def ellipsoid(
    shape: tuple[int, ...], center: np.ndarray, semi_axes_mm: np.ndarray, rot: np.ndarray, sp: np.ndarray
) -> tuple[tuple[slice, ...], np.ndarray]:
    """Local box and boolean footprint of a rotated ellipsoid centred at a voxel index."""
    half = np.ceil(float(np.max(semi_axes_mm)) / sp).astype(int)
    c = np.rint(center).astype(int)
    box = tuple(slice(max(ci - h, 0), min(ci + h + 1, n)) for ci, h, n in zip(c, half, shape))
    if any(s.stop <= s.start for s in box):
        return box, np.zeros([0] * len(shape), dtype=bool)
    axes = [(np.arange(s.start, s.stop) - ci) * si for s, ci, si in zip(box, center, sp)]
    grids = np.meshgrid(*axes, indexing="ij", sparse=True)
    q = sum(((sum(g * rot[a, j] for a, g in enumerate(grids))) / semi_axes_mm[j]) ** 2 for j in range(len(shape)))
    return box, q <= 1.0


def bspline_weights(x: np.ndarray) -> np.ndarray:
    """Cubic B-spline basis: smooth (C2) and compactly supported, so fields stay local."""
    t = np.abs(x)
    return np.where(t < 1, 2 / 3 - t**2 + t**3 / 2, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))


# mean of sum_k B3(t - k)^2 over t: dividing by its root gives unit-std fields
_B3_POWER = 151 / 315


def smooth_field(
    crop: tuple[slice, ...], anchor: tuple[slice, ...], sp: np.ndarray, step_mm: float, rng: np.random.Generator
) -> np.ndarray:
    """Unit-std random displacement field (mm), shape (ndim, *crop), from a B-spline lattice.

    The lattice is anchored on the structure's box (not the crop) so that, for one seed,
    changing the amplitude only rescales the same field: the sampler's severity search
    then sees a monotone effect.
    """
    ndim = len(sp)
    weights = []
    for a in range(ndim):
        origin = anchor[a].start * sp[a] - 2 * step_mm
        n_ctrl = int(math.ceil((anchor[a].stop - anchor[a].start) * sp[a] / step_mm)) + 5
        x = (np.arange(crop[a].start, crop[a].stop) * sp[a] - origin) / step_mm
        weights.append(bspline_weights(x[:, None] - np.arange(n_ctrl)[None, :]))
    coef = rng.standard_normal((ndim, *[w.shape[1] for w in weights])) / math.sqrt(_B3_POWER**ndim)
    out = np.empty((ndim, *[w.shape[0] for w in weights]))
    for c in range(ndim):
        f = coef[c]
        for a, w in enumerate(weights):
            f = np.moveaxis(np.tensordot(w, f, axes=([1], [a])), 0, a)
        out[c] = f
    return out


def mean_dice(ref: np.ndarray, pred: np.ndarray) -> float:
    """Mean foreground Dice over the labels of ``ref`` (both empty -> 1, one empty -> 0)."""
    labels = present_labels(ref)
    if not labels:
        return 0.0 if np.any(pred) else 1.0
    n = int(max(ref.max(), pred.max())) + 1
    joint = np.bincount(ref.ravel().astype(np.int64) * n + pred.ravel(), minlength=n * n).reshape(n, n)
    lab = np.asarray(labels)
    inter = joint[lab, lab]
    size = joint.sum(axis=1)[lab] + joint.sum(axis=0)[lab]
    return float(np.mean(2.0 * inter / size))
