"""The kinds of bad masks: each degrades an expert mask the way a real model fails, per label, in mm."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import ndimage as ndi

from segqc.data.corrupt import geometry as g

Corruption = Callable[..., np.ndarray]
Labels = g.Labels

# ---------------------------------------------------------------------------------------
# corruptions: f(mask, spacing, rng, **params) -> new mask (same shape and dtype)


def erode_dilate(
    mask: np.ndarray, spacing: Sequence[float], rng: np.random.Generator, radius: float = -0.2, labels: Labels = None
) -> np.ndarray:
    """Move every border by ``radius`` × equivalent radius (negative erodes).

    A distance threshold instead of iterated binary morphology keeps the result smooth,
    isotropic in mm and continuous in ``radius``: under/over-segmentation by a margin.
    """
    sp = g.spacing_array(mask, spacing)
    out = mask.copy()
    for lab, box, _, req in g.label_structures(mask, sp, labels):
        r = float(radius) * req
        if r == 0:
            continue
        crop = g.expand_box(box, max(r, 0.0), sp, mask.shape)
        b = mask[crop] == lab
        view = out[crop]
        if r < 0:
            view[b & ~(g.edt_mm(b, sp) > -r)] = 0
        else:
            view[~b & (g.edt_mm(~b, sp) <= r)] = lab
    return out


def elastic_boundary(
    mask: np.ndarray,
    spacing: Sequence[float],
    rng: np.random.Generator,
    amplitude: float = 0.15,
    smoothness: float = 0.5,
    labels: Labels = None,
) -> np.ndarray:
    """Wobble the contour with a smooth random displacement of the signed distance.

    ``amplitude`` (std) and ``smoothness`` (lattice step) are fractions of the equivalent
    radius. Warping the distance map (linear interpolation) then re-thresholding gives
    smooth, plausible contours, unlike nearest-neighbour warping of the labels.
    """
    sp = g.spacing_array(mask, spacing)
    out = mask.copy()
    for lab, box, _, req in g.label_structures(mask, sp, labels):
        amp = float(amplitude) * req
        step = max(float(smoothness) * req, float(sp.max()))
        reach = 3.0 * amp  # boundary moves up to ~3 std; clip beyond so the crop suffices
        crop = g.expand_box(box, reach, sp, mask.shape)
        field = g.smooth_field(crop, box, sp, step, rng)
        if amp == 0:
            continue
        b = mask[crop] == lab
        sd = g.signed_distance(b, sp)
        # only a band around the contour can change sign: sd is 1-Lipschitz in mm
        band = np.abs(sd) <= reach + float(sp.max())
        disp = field[:, band] * amp
        norm = np.sqrt(np.sum(disp**2, axis=0))
        disp *= np.minimum(1.0, reach / np.maximum(norm, 1e-12))
        where = np.stack(np.nonzero(band)).astype(float) + disp / sp[:, None]
        new = sd <= 0
        new[band] = ndi.map_coordinates(sd, where, order=1, mode="nearest") <= 0
        view = out[crop]
        view[b & ~new] = 0
        view[new & ~b] = lab
    return out


def shift(
    mask: np.ndarray,
    spacing: Sequence[float],
    rng: np.random.Generator,
    distance: float = 0.5,
    part: float = 1.0,
    labels: Labels = None,
) -> np.ndarray:
    """Translate a structure by ``distance`` × equivalent radius in a random direction.

    ``part`` < 1 moves only that fraction of it (one side of a random plane), like a
    model that puts half an organ one slice too high. Voxels leaving the image are lost.
    """
    sp = g.spacing_array(mask, spacing)
    out = mask.copy()
    for lab, box, _, req in g.label_structures(mask, sp, labels):
        direction, cut = g.random_unit(mask.ndim, rng), g.random_unit(mask.ndim, rng)
        offset = np.rint(float(distance) * req * direction / sp).astype(int)
        pts = g.label_coords(mask, box, lab)
        if part < 1.0:
            proj = (pts * sp) @ cut
            pts = pts[proj <= np.quantile(proj, max(float(part), 0.0))]
        if not offset.any() or len(pts) == 0:
            continue
        out[tuple(pts.T)] = 0
        moved = pts + offset
        moved = moved[np.all((moved >= 0) & (moved < np.asarray(mask.shape)), axis=1)]
        out[tuple(moved.T)] = lab
    return out


def holes(
    mask: np.ndarray,
    spacing: Sequence[float],
    rng: np.random.Generator,
    n_holes: int = 3,
    size: float = 0.3,
    labels: Labels = None,
) -> np.ndarray:
    """Cut ``n_holes`` random ellipsoids (semi-axes ~ ``size`` × equivalent radius) inside.

    Mimics heterogeneous interiors (necrosis, cysts) that a model leaves unlabelled.
    """
    sp = g.spacing_array(mask, spacing)
    out = mask.copy()
    for lab, box, _, req in g.label_structures(mask, sp, labels):
        crop = g.expand_box(box, 0.0, sp, mask.shape)
        depth = g.edt_mm(mask[crop] == lab, sp)
        # centres in the inner part, so small holes stay enclosed like real ones
        idx = np.nonzero(depth >= 0.5 * depth.max())
        pts = np.stack([i + s.start for i, s in zip(idx, crop)], axis=1)
        for _ in range(int(n_holes)):
            center = pts[rng.integers(len(pts))]
            axes = float(size) * req * rng.uniform(0.5, 1.5, mask.ndim)
            rot = g.random_rotation(mask.ndim, rng)
            if size <= 0:
                continue
            sub, foot = g.ellipsoid(mask.shape, center, axes, rot, sp)
            view = out[sub]
            view[foot & (view == lab)] = 0
    return out


def false_positive_blobs(
    mask: np.ndarray,
    spacing: Sequence[float],
    rng: np.random.Generator,
    volume: float = 0.5,
    n_blobs: int = 2,
    copy_prob: float = 0.5,
    labels: Labels = None,
) -> np.ndarray:
    """Add ``n_blobs`` blobs totalling ``volume`` × the structure's volume, on background.

    A blob is an ellipsoid or, with probability ``copy_prob``, a flipped and rescaled copy
    of the structure itself: the classic look-alike false positive (the other kidney, a
    second polyp-shaped fold). On an empty mask, blobs of label 1 are sized from the image.
    """
    sp = g.spacing_array(mask, spacing)
    out = mask.copy()
    items = list(g.label_structures(mask, sp, labels))
    if not items and not mask.any():
        req = 0.1 * float(np.min(np.asarray(mask.shape) * sp))
        items = [(1, None, max(int(g.ball_voxels(req, sp)), 1), req)]
    shape = np.asarray(mask.shape)
    for lab, box, n_vox, req in items:
        per_vox = float(volume) * n_vox / max(int(n_blobs), 1)
        for _ in range(int(n_blobs)):
            is_copy = rng.random() < copy_prob
            flips = rng.random(mask.ndim) < 0.5
            center = rng.random(mask.ndim) * (shape - 1)
            for _try in range(10):  # prefer a centre outside any structure
                if mask[tuple(np.rint(center).astype(int))] == 0:
                    break
                center = rng.random(mask.ndim) * (shape - 1)
            stretch = rng.uniform(0.6, 1.4, mask.ndim)
            rot = g.random_rotation(mask.ndim, rng)
            if per_vox <= 0:
                continue
            if is_copy and box is not None:
                src = mask[box] == lab
                src = src[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]
                scale = float(np.clip((per_vox / n_vox) ** (1 / mask.ndim), 0.2, 5.0))
                if scale != 1.0:
                    src = ndi.zoom(src.astype(np.uint8), scale, order=0).astype(bool)
                start = np.rint(center - np.asarray(src.shape) / 2).astype(int)
                dst = tuple(slice(max(s, 0), min(s + k, n)) for s, k, n in zip(start, src.shape, shape))
                src_sl = tuple(slice(d.start - s, d.stop - s) for d, s in zip(dst, start))
                if any(d.stop <= d.start for d in dst):
                    continue
                sub, foot = dst, src[src_sl]
            else:
                r = (per_vox * np.prod(sp) * math.gamma(mask.ndim / 2 + 1) / math.pi ** (mask.ndim / 2)) ** (
                    1 / mask.ndim
                )
                axes = r * stretch / np.prod(stretch) ** (1 / mask.ndim)
                sub, foot = g.ellipsoid(mask.shape, center, axes, rot, sp)
            view = out[sub]
            view[foot & (view == 0)] = lab
    return out


def partial_deletion(
    mask: np.ndarray,
    spacing: Sequence[float],
    rng: np.random.Generator,
    fraction: float = 0.3,
    mode: str = "plane",
    labels: Labels = None,
) -> np.ndarray:
    """Remove exactly ``fraction`` of each structure's voxels.

    ``"plane"`` cuts along a random half-space (a truncated organ); ``"ellipsoid"`` bites
    an ellipsoidal chunk out of the border (a missed lobe). Exact fractions keep the
    Dice a monotone function of ``fraction``.
    """
    if mode not in ("plane", "ellipsoid"):
        raise ValueError(f"unknown mode {mode!r}")
    sp = g.spacing_array(mask, spacing)
    out = mask.copy()
    for lab, box, _, _ in g.label_structures(mask, sp, labels):
        direction = g.random_unit(mask.ndim, rng)
        rot = g.random_rotation(mask.ndim, rng)
        stretch = rng.uniform(0.5, 1.5, mask.ndim)
        if fraction <= 0:
            continue
        pts = g.label_coords(mask, box, lab)
        pos = pts * sp
        proj = pos @ direction
        if mode == "plane":
            score = proj  # largest projections go first
        else:
            tip = pos[np.argmax(proj)]
            score = -np.sum((((pos - tip) @ rot) / stretch) ** 2, axis=1)
        k = int(round(min(float(fraction), 1.0) * len(pts)))
        if k == 0:
            continue
        gone = pts[np.argpartition(-score, k - 1)[:k]] if k < len(pts) else pts
        out[tuple(gone.T)] = 0
    return out


def missing_slices(
    mask: np.ndarray,
    spacing: Sequence[float],
    rng: np.random.Generator,
    fraction: float = 0.3,
    labels: Labels = None,
) -> np.ndarray:
    """Blank a run of whole axial slices (axis 0) covering ``fraction`` of the structure's extent.

    Slice-wise 2D models and broken inference tiling drop slices entirely. 2D: unchanged.
    """
    out = mask.copy()
    if mask.ndim != 3:
        return out
    sp = g.spacing_array(mask, spacing)
    boxes = [box for _, box, _, _ in g.label_structures(mask, sp, labels)]
    u = rng.random()
    if not boxes:
        return out
    z0 = min(b[0].start for b in boxes)
    z1 = max(b[0].stop for b in boxes)
    k = int(round(min(max(float(fraction), 0.0), 1.0) * (z1 - z0)))
    start = z0 + int(u * (z1 - z0 - k + 1)) if k < z1 - z0 else z0
    out[start : start + k] = 0
    return out


def label_swap(
    mask: np.ndarray,
    spacing: Sequence[float],
    rng: np.random.Generator,
    fraction: float = 0.5,
    swap: bool = False,
    labels: Labels = None,
) -> np.ndarray:
    """Relabel the ``fraction`` of label a nearest to label b as b (``swap``: both ways).

    Neighbouring classes (tumour core vs. oedema, hippocampus head vs. body) get confused
    along their shared side; ``fraction=1, swap=True`` is a full left/right-style swap.
    Single-label masks come back unchanged.
    """
    sp = g.spacing_array(mask, spacing)
    out = mask.copy()
    present = [lab for lab, *_ in g.label_structures(mask, sp, labels)]
    if len(present) < 2:
        return out
    a, b = (int(v) for v in rng.choice(present, 2, replace=False))
    jitter = g.random_unit(mask.ndim, rng)
    if fraction <= 0:
        return out
    boxes = g.label_boxes(mask)
    pa, pb = g.label_coords(mask, boxes[a], a), g.label_coords(mask, boxes[b], b)
    toward = (pb.mean(0) - pa.mean(0)) * sp
    norm = np.linalg.norm(toward)
    direction = (toward / norm if norm > 0 else jitter) + 0.5 * jitter
    f = min(float(fraction), 1.0)

    def nearest(pts: np.ndarray, d: np.ndarray) -> np.ndarray:
        k = int(round(f * len(pts)))
        if k == 0:
            return pts[:0]
        return pts if k >= len(pts) else pts[np.argpartition(-((pts * sp) @ d), k - 1)[:k]]

    to_b = nearest(pa, direction)
    to_a = nearest(pb, -direction) if swap else pb[:0]
    out[tuple(to_b.T)] = b
    out[tuple(to_a.T)] = a
    return out


def empty(mask: np.ndarray, spacing: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """No output at all: the model fired on nothing (Dice 0)."""
    return np.zeros_like(mask)


CORRUPTIONS: dict[str, Corruption] = {
    "erode_dilate": erode_dilate,
    "elastic_boundary": elastic_boundary,
    "shift": shift,
    "holes": holes,
    "false_positive_blobs": false_positive_blobs,
    "partial_deletion": partial_deletion,
    "missing_slices": missing_slices,
    "label_swap": label_swap,
    "empty": empty,
}
