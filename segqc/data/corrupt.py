"""Realistic bad masks made from expert masks, with Dice spread evenly over [0, 1].

A QC regressor learns "image + mask -> Dice" from pairs we fabricate: an expert mask is
degraded and the Dice of the degraded mask against the original becomes the target. Two
things decide whether such a regressor transfers to real segmentation failures:

* the corruptions must look like what models actually get wrong (over/under-segmented
  borders, wobbly contours, misplacement, holes, false-positive blobs, cut-off parts,
  missing slices, confused labels, empty output), and
* the targets must cover [0, 1] evenly, otherwise the regressor just predicts "about 0.9".

Every corruption works per label, in physical units (``spacing`` in mm, array axis order)
and relative to the structure's equivalent radius, so one severity scale fits a 1 cm
polyp and a whole liver. All randomness comes from the ``rng`` argument.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "CORRUPTIONS",
    "Corruption",
    "corrupt",
    "elastic_boundary",
    "empty",
    "erode_dilate",
    "false_positive_blobs",
    "holes",
    "label_swap",
    "missing_slices",
    "partial_deletion",
    "sample_corruptions",
    "shift",
]

Corruption = Callable[..., np.ndarray]
Labels = Sequence[int] | None

# ---------------------------------------------------------------------------------------
# helpers


def _spacing(mask: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    sp = np.asarray(spacing, dtype=float)
    if sp.shape != (mask.ndim,):
        raise ValueError(f"spacing {tuple(spacing)} does not match mask of shape {mask.shape}")
    return sp


def _boxes(mask: np.ndarray) -> dict[int, tuple[slice, ...]]:
    """Bounding box of every label present, in one pass over the array."""
    if mask.size == 0 or not mask.any():
        return {}
    arr = mask.view(np.uint8) if mask.dtype == bool else mask
    return {i + 1: box for i, box in enumerate(ndi.find_objects(arr)) if box is not None}


def _present_labels(mask: np.ndarray) -> list[int]:
    return sorted(_boxes(mask))


def _equiv_radius(n_vox: float, sp: np.ndarray) -> float:
    """Radius (mm) of the ball with the structure's physical volume: our unit of size."""
    d = len(sp)
    vol = float(n_vox) * float(np.prod(sp))
    return (vol * math.gamma(d / 2 + 1) / math.pi ** (d / 2)) ** (1 / d)


def _ball_voxels(radius_mm: float, sp: np.ndarray) -> float:
    d = len(sp)
    return math.pi ** (d / 2) / math.gamma(d / 2 + 1) * radius_mm**d / float(np.prod(sp))


def _expand(box: tuple[slice, ...], margin_mm: float, sp: np.ndarray, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """Box grown by a physical margin (+1 voxel so distance transforms see background)."""
    m = np.ceil(max(margin_mm, 0.0) / sp).astype(int) + 1
    return tuple(slice(max(s.start - k, 0), min(s.stop + k, n)) for s, k, n in zip(box, m, shape))


def _structures(
    mask: np.ndarray, sp: np.ndarray, labels: Labels
) -> Iterator[tuple[int, tuple[slice, ...], int, float]]:
    """(label, bbox, voxel count, equivalent radius mm) for each selected label present."""
    boxes = _boxes(mask)
    for lab in sorted(boxes) if labels is None else [int(v) for v in labels]:
        box = boxes.get(lab)
        if box is None:
            continue
        n = int(np.count_nonzero(mask[box] == lab))
        yield lab, box, n, _equiv_radius(n, sp)


def _coords(mask: np.ndarray, box: tuple[slice, ...], lab: int) -> np.ndarray:
    """(N, ndim) voxel indices of a label, found inside its bbox only."""
    idx = np.nonzero(mask[box] == lab)
    return np.stack([i + s.start for i, s in zip(idx, box)], axis=1)


def _unit(ndim: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(ndim)
    n = np.linalg.norm(v)
    return v / n if n > 0 else np.eye(ndim)[0]


def _rotation(ndim: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((ndim, ndim)))
    return q * np.sign(np.diag(r))


def _edt(b: np.ndarray, sp: np.ndarray) -> np.ndarray:
    """Distance (mm) of True voxels to the nearest False one; scipy is undefined without any."""
    if b.all():
        pad = ndi.distance_transform_edt(np.pad(b, 1), sampling=sp)
        return pad[tuple(slice(1, -1) for _ in range(b.ndim))]
    return ndi.distance_transform_edt(b, sampling=sp)


def _signed_distance(b: np.ndarray, sp: np.ndarray) -> np.ndarray:
    """Negative inside, positive outside, in mm; ``<= 0`` gives ``b`` back exactly."""
    return _edt(~b, sp) - _edt(b, sp)


def _ellipsoid(
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


def _bspline_weights(x: np.ndarray) -> np.ndarray:
    """Cubic B-spline basis: smooth (C2) and compactly supported, so fields stay local."""
    t = np.abs(x)
    return np.where(t < 1, 2 / 3 - t**2 + t**3 / 2, np.where(t < 2, (2 - t) ** 3 / 6, 0.0))


# mean of sum_k B3(t - k)^2 over t: dividing by its root gives unit-std fields
_B3_POWER = 151 / 315


def _smooth_field(
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
        weights.append(_bspline_weights(x[:, None] - np.arange(n_ctrl)[None, :]))
    coef = rng.standard_normal((ndim, *[w.shape[1] for w in weights])) / math.sqrt(_B3_POWER**ndim)
    out = np.empty((ndim, *[w.shape[0] for w in weights]))
    for c in range(ndim):
        f = coef[c]
        for a, w in enumerate(weights):
            f = np.moveaxis(np.tensordot(w, f, axes=([1], [a])), 0, a)
        out[c] = f
    return out


def _mean_dice(ref: np.ndarray, pred: np.ndarray) -> float:
    """Mean foreground Dice over the labels of ``ref`` (both empty -> 1, one empty -> 0)."""
    labels = _present_labels(ref)
    if not labels:
        return 0.0 if np.any(pred) else 1.0
    n = int(max(ref.max(), pred.max())) + 1
    joint = np.bincount(ref.ravel().astype(np.int64) * n + pred.ravel(), minlength=n * n).reshape(n, n)
    lab = np.asarray(labels)
    inter = joint[lab, lab]
    size = joint.sum(axis=1)[lab] + joint.sum(axis=0)[lab]
    return float(np.mean(2.0 * inter / size))


# ---------------------------------------------------------------------------------------
# corruptions: f(mask, spacing, rng, **params) -> new mask (same shape and dtype)


def erode_dilate(
    mask: np.ndarray, spacing: Sequence[float], rng: np.random.Generator, radius: float = -0.2, labels: Labels = None
) -> np.ndarray:
    """Move every border by ``radius`` × equivalent radius (negative erodes).

    A distance threshold instead of iterated binary morphology keeps the result smooth,
    isotropic in mm and continuous in ``radius``: under/over-segmentation by a margin.
    """
    sp = _spacing(mask, spacing)
    out = mask.copy()
    for lab, box, _, req in _structures(mask, sp, labels):
        r = float(radius) * req
        if r == 0:
            continue
        crop = _expand(box, max(r, 0.0), sp, mask.shape)
        b = mask[crop] == lab
        view = out[crop]
        if r < 0:
            view[b & ~(_edt(b, sp) > -r)] = 0
        else:
            view[~b & (_edt(~b, sp) <= r)] = lab
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
    sp = _spacing(mask, spacing)
    out = mask.copy()
    for lab, box, _, req in _structures(mask, sp, labels):
        amp = float(amplitude) * req
        step = max(float(smoothness) * req, float(sp.max()))
        reach = 3.0 * amp  # boundary moves up to ~3 std; clip beyond so the crop suffices
        crop = _expand(box, reach, sp, mask.shape)
        field = _smooth_field(crop, box, sp, step, rng)
        if amp == 0:
            continue
        b = mask[crop] == lab
        sd = _signed_distance(b, sp)
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
    sp = _spacing(mask, spacing)
    out = mask.copy()
    for lab, box, _, req in _structures(mask, sp, labels):
        direction, cut = _unit(mask.ndim, rng), _unit(mask.ndim, rng)
        offset = np.rint(float(distance) * req * direction / sp).astype(int)
        pts = _coords(mask, box, lab)
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
    sp = _spacing(mask, spacing)
    out = mask.copy()
    for lab, box, _, req in _structures(mask, sp, labels):
        crop = _expand(box, 0.0, sp, mask.shape)
        depth = _edt(mask[crop] == lab, sp)
        # centres in the inner part, so small holes stay enclosed like real ones
        idx = np.nonzero(depth >= 0.5 * depth.max())
        pts = np.stack([i + s.start for i, s in zip(idx, crop)], axis=1)
        for _ in range(int(n_holes)):
            center = pts[rng.integers(len(pts))]
            axes = float(size) * req * rng.uniform(0.5, 1.5, mask.ndim)
            rot = _rotation(mask.ndim, rng)
            if size <= 0:
                continue
            sub, foot = _ellipsoid(mask.shape, center, axes, rot, sp)
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
    sp = _spacing(mask, spacing)
    out = mask.copy()
    items = list(_structures(mask, sp, labels))
    if not items and not mask.any():
        req = 0.1 * float(np.min(np.asarray(mask.shape) * sp))
        items = [(1, None, max(int(_ball_voxels(req, sp)), 1), req)]
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
            rot = _rotation(mask.ndim, rng)
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
                sub, foot = _ellipsoid(mask.shape, center, axes, rot, sp)
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
    sp = _spacing(mask, spacing)
    out = mask.copy()
    for lab, box, _, _ in _structures(mask, sp, labels):
        direction = _unit(mask.ndim, rng)
        rot = _rotation(mask.ndim, rng)
        stretch = rng.uniform(0.5, 1.5, mask.ndim)
        if fraction <= 0:
            continue
        pts = _coords(mask, box, lab)
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
    sp = _spacing(mask, spacing)
    boxes = [box for _, box, _, _ in _structures(mask, sp, labels)]
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
    sp = _spacing(mask, spacing)
    out = mask.copy()
    present = [lab for lab, *_ in _structures(mask, sp, labels)]
    if len(present) < 2:
        return out
    a, b = (int(v) for v in rng.choice(present, 2, replace=False))
    jitter = _unit(mask.ndim, rng)
    if fraction <= 0:
        return out
    boxes = _boxes(mask)
    pa, pb = _coords(mask, boxes[a], a), _coords(mask, boxes[b], b)
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

# ---------------------------------------------------------------------------------------
# severity -> parameters. Random choices are drawn before the severity is used, and in the
# same order, so that one seed with a rising severity gives a (mostly) monotone Dice.


def _labels_choice(present: list[int], rng: np.random.Generator) -> list[int] | None:
    """All labels half the time, else a random non-empty subset (one class fails alone)."""
    keep = rng.random(len(present)) < 0.5
    whole = rng.random() < 0.5
    if whole or len(present) < 2:
        return None
    if not keep.any():
        keep[rng.integers(len(present))] = True
    return [lab for lab, k in zip(present, keep) if k]


def _params(kind: str, s: float, rng: np.random.Generator, present: list[int]) -> dict:
    if kind == "empty":
        return {}
    labels = _labels_choice(present, rng)
    if kind == "erode_dilate":
        # erosion by the full equivalent radius empties a ball; dilation by 2 radii -> Dice 0.2
        sign = -1.0 if rng.random() < 0.5 else 1.0
        p = {"radius": -s if sign < 0 else 2.0 * s}
    elif kind == "elastic_boundary":
        p = {"amplitude": 0.6 * s, "smoothness": float(rng.uniform(0.3, 1.0))}
    elif kind == "shift":
        part = 1.0 if rng.random() < 0.6 else float(rng.uniform(0.3, 0.8))
        p = {"distance": 2.2 * s, "part": part}
    elif kind == "holes":
        n = int(rng.integers(1, 6))
        p = {"n_holes": n, "size": float((1.2 * s / n) ** 0.5)}
    elif kind == "false_positive_blobs":
        # volume v on background gives Dice ~ 2 / (2 + v) = 1 - s
        p = {
            "volume": 2.0 * s / max(1.0 - s, 0.02),
            "n_blobs": int(rng.integers(1, 4)),
            "copy_prob": 0.5,
        }
    elif kind == "partial_deletion":
        p = {"fraction": s, "mode": "plane" if rng.random() < 0.6 else "ellipsoid"}
    elif kind == "missing_slices":
        p = {"fraction": s}
    elif kind == "label_swap":
        p = {"fraction": s, "swap": bool(rng.random() < 0.3)}
        labels = None
    else:
        raise KeyError(f"unknown corruption {kind!r}; known: {sorted(CORRUPTIONS)}")
    p["labels"] = labels
    return p


def _applicable(mask: np.ndarray, present: list[int]) -> list[str]:
    """Kinds that can change this mask (no slices to drop in 2D, nothing to swap with one label)."""
    kinds = [k for k in CORRUPTIONS if k != "empty"]
    if mask.ndim != 3:
        kinds.remove("missing_slices")
    if len(present) < 2:
        kinds.remove("label_swap")
    return kinds


def corrupt(
    mask: np.ndarray,
    spacing: Sequence[float],
    rng: np.random.Generator,
    kind: str | Sequence[str] | None = None,
    severity: float | None = None,
) -> tuple[np.ndarray, dict]:
    """Apply one corruption, or a random composition of two, at ``severity`` in [0, 1].

    ``kind`` may be a name, a sequence of names applied in order, or None for a random
    pick (occasionally ``"empty"``, 30 % of the time two kinds). The first kind gets the
    full severity, later ones a random 20-60 % of it. Returns the mask and an ``info``
    dict: ``kinds``, ``severity``, ``severities`` and ``params`` per kind.
    """
    sp = _spacing(mask, spacing)
    present = _present_labels(mask)
    s = float(rng.random()) if severity is None else float(np.clip(severity, 0.0, 1.0))
    if kind is None:
        options = _applicable(mask, present)
        if rng.random() < 0.03:
            kinds = ["empty"]
        else:
            kinds = [str(k) for k in rng.choice(options, 2 if rng.random() < 0.3 else 1, replace=False)]
    else:
        kinds = [kind] if isinstance(kind, str) else list(kind)
    info: dict = {"kinds": kinds, "severity": s, "severities": [], "params": []}
    out = mask
    for i, k in enumerate(kinds):
        sk = s if i == 0 else s * float(rng.uniform(0.2, 0.6))
        params = _params(k, sk, rng, present)
        out = CORRUPTIONS[k](out, sp, rng, **params)
        info["severities"].append(sk)
        info["params"].append(params)
    if out is mask:
        out = mask.copy()
    return out, info


# ---------------------------------------------------------------------------------------
# sampler

_P_EMPTY = 0.03  # some empty outputs: a real, common failure with Dice exactly 0
_P_ORIGINAL = 0.02  # rarely the untouched mask: Dice exactly 1
_P_NEAR = 0.05  # extra near-perfect masks: most real outputs are good ones
_TOL = 0.03
_STEPS = 6
_KIND_TRIES = 3


def _search(
    mask: np.ndarray, sp: np.ndarray, rng: np.random.Generator, target: float, kinds: list[str]
) -> tuple[np.ndarray, float]:
    """Bisect the severity of a few random kinds until the Dice is within _TOL of target.

    One seed per kind keeps every random choice fixed while only the severity moves, so
    Dice(severity) is (nearly) monotone decreasing and bisection converges.
    """
    best: tuple[np.ndarray, float] | None = None
    order = [str(k) for k in rng.permutation(kinds)[:_KIND_TRIES]]
    for kind in order:
        chain: list[str] = [kind]
        if rng.random() < 0.25 and len(kinds) > 1:
            chain.append(str(rng.choice([k for k in kinds if k != kind])))
        seed = int(rng.integers(2**63))
        lo, hi = 0.0, 1.0
        for _ in range(_STEPS):
            mid = 0.5 * (lo + hi)
            m, _ = corrupt(mask, sp, np.random.default_rng(seed), kind=chain, severity=mid)
            d = _mean_dice(mask, m)
            if best is None or abs(d - target) < abs(best[1] - target):
                best = (m, d)
            if abs(d - target) <= _TOL:
                return best
            lo, hi = (mid, hi) if d > target else (lo, mid)
        if best is not None and abs(best[1] - target) <= 2 * _TOL:
            return best
    assert best is not None
    return best


def sample_corruptions(
    mask: np.ndarray,
    spacing: Sequence[float],
    rng: np.random.Generator,
    n: int,
    target: str | Sequence[float] = "uniform",
) -> list[tuple[np.ndarray, float]]:
    """``n`` corrupted masks with their actual mean Dice, spread evenly over [0, 1].

    ``target="uniform"`` draws stratified target Dice values (one per 1/n bin, shuffled),
    so even small ``n`` covers the range; a sequence gives explicit targets. A few outputs
    are replaced by empty masks, the untouched mask, or near-perfect ones (Dice > 0.95).
    """
    sp = _spacing(mask, spacing)
    if isinstance(target, str):
        if target != "uniform":
            raise ValueError(f"unknown target {target!r}")
        targets = (rng.permutation(n) + rng.random(n)) / max(n, 1)
    else:
        targets = np.clip(np.asarray(target, dtype=float), 0.0, 1.0)
        if len(targets) != n:
            raise ValueError("need one target per sample")
    present = _present_labels(mask)
    kinds = _applicable(mask, present)
    results: list[tuple[np.ndarray, float]] = []
    for t in targets:
        u = rng.random()
        if not present:  # nothing to degrade but adding false positives
            m, _ = corrupt(mask, sp, rng, kind="false_positive_blobs")
        elif u < _P_EMPTY:
            m = np.zeros_like(mask)
        elif u < _P_EMPTY + _P_ORIGINAL:
            m = mask.copy()
        else:
            if u < _P_EMPTY + _P_ORIGINAL + _P_NEAR:
                t = float(rng.uniform(0.95, 1.0))
            m, _ = _search(mask, sp, rng, float(t), kinds)
        results.append((m, _mean_dice(mask, m)))
    return results
