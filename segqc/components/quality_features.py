"""Hand-crafted quality features of a candidate mask: what `features` (and its benchmarks) measure.

For each foreground label of the candidate mask, in physical units:

* shape: volume relative to the reference masks' typical volume, connected components,
  holes, compactness, convexity (solidity), boundary roughness, extent, position,
  contact with the image border, and in 3D slice continuity (gaps, area jumps);
* image–mask agreement: intensity inside vs a ring just outside, the same against the
  reference masks' foreground intensities, boundary gradient strength relative to the
  image's, histogram overlap inside vs ring. Intensities are in units of each image's own
  distribution (`image_units`: each channel z-scored, as nnU-Net normalises a non-CT
  image), the reference statistics too: a new camera's colour balance, gain or window
  moves every intensity of its images, and in the reference dataset's units the
  regressor read that move as a change of quality (on the shift benchmark's darker,
  bluer site the intensity features alone raised a checkpoint's predicted Dice by ~0.03
  while its true Dice fell by 0.08);
* agreement with segqc's own reference segmenter's probabilities: Dice and soft Dice,
  probability inside / just outside the candidate, missed and extra volume, HD95 in mm.

`measure_candidates` measures many candidates at once, on worker processes when they are many;
what depends on the image alone (its gradient, intensity range, the segmenter's argmax) is
measured once per image (`ImageMeasures`), and the morphology of a mask (rings, boundaries,
filled holes) runs on its bounding box, not on the whole image: the same values, found faster.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from segqc.data.case import Case
from segqc.metrics import binary_dice

__all__ = ["MIN_PARALLEL", "ImageMeasures", "image_units", "mask_features", "measure_candidates", "reference_stats"]

# below this many candidates, starting worker processes costs more than it saves
MIN_PARALLEL = 64


def image_units(image: np.ndarray) -> np.ndarray:
    """``image`` with each channel z-scored over the image itself (float32): what the intensity features
    measure, so that a site's per-channel gain and offset leave them as they were."""
    from segqc.plan.preprocess import normalize_intensity

    return normalize_intensity(image, "zscore", {})[0]


def _intensities(image: np.ndarray, ref_stats: dict) -> np.ndarray:
    """The image in the units ``ref_stats`` were measured in (bundles made before `image_units` used the raw
    intensities, and their boosters learnt those)."""
    return image_units(image) if ref_stats.get("intensity_units") == "image" else image


@dataclass(frozen=True)
class ImageMeasures:
    """What the features read from the image (and the segmenter's opinion of it) whatever the mask: measured
    once for all the candidates of one image (`ImageMeasures.of`)."""

    channels: dict  # per channel index (-1: grey), its pixels in the reference statistics' units
    # (`_intensities`) and their 1st / 99th percentiles
    grad: np.ndarray  # gradient magnitude of the grey image (σ = 1 voxel)
    grad_mean: float
    seg: np.ndarray | None  # the segmenter's argmax, None without a segmenter

    @classmethod
    def of(cls, image: np.ndarray, ref_stats: dict, proba: np.ndarray | None = None) -> "ImageMeasures":
        x = _intensities(image, ref_stats)
        grey = x.mean(0)
        chans = list(range(x.shape[0])) + ([-1] if x.shape[0] > 1 else [])
        pixels = {c: grey if c == -1 else x[c] for c in chans}
        grad = ndimage.gaussian_gradient_magnitude(grey, sigma=1.0)
        return cls({c: (v, np.percentile(v, [1, 99])) for c, v in pixels.items()}, grad, grad.mean(),
                   None if proba is None else proba.argmax(0))


def _box(m: np.ndarray, margin: int) -> tuple[slice, ...] | None:
    """The bounding box of ``m``, widened by ``margin`` voxels a side within the array; None for an empty mask."""
    box = []
    for axis, n in enumerate(m.shape):
        hit = np.flatnonzero(m.any(axis=tuple(a for a in range(m.ndim) if a != axis)))
        if not hit.size:
            return None
        box.append(slice(max(int(hit[0]) - margin, 0), min(int(hit[-1]) + 1 + margin, n)))
    return tuple(box)


def _on_box(m: np.ndarray, margin: int, op) -> np.ndarray:
    """``op(m)`` computed on ``m``'s bounding box widened by ``margin`` and pasted back on zeros: equal to ``op``
    on the whole array for an ``op`` that reaches at most ``margin`` voxels beyond the mask and leaves empty
    space empty (a dilation of up to ``margin`` voxels, an erosion, filling holes): beyond the box all is
    background, as the box's widened edge is, and where the box meets the array's edge it is that edge."""
    out = np.zeros(m.shape, bool)
    box = _box(m, margin)
    if box is not None:
        out[box] = op(m[box])
    return out


def _ring(m: np.ndarray, width: int) -> np.ndarray:
    return _on_box(m, width + 1, lambda b: ndimage.binary_dilation(b, iterations=width) & ~b)


def _edge(m: np.ndarray) -> np.ndarray:
    """The voxels of ``m`` on its boundary (beside background, or on the array's edge)."""
    return _on_box(m, 1, lambda b: b ^ ndimage.binary_erosion(b))


def _solidity_2d(m: np.ndarray) -> float:
    from skimage.morphology import convex_hull_image

    if m.sum() < 3:
        return 1.0
    # the hull lies inside the bounding box: the same hull at a fraction of the cost (it tests every pixel)
    (box,) = ndimage.find_objects(m.astype(np.uint8))
    try:
        return float(m.sum() / max(convex_hull_image(m[box]).sum(), 1))
    except (ValueError, RuntimeError):  # degenerate (collinear) shapes
        return 1.0


def _boundary_count(m: np.ndarray) -> int:
    return int(_edge(m).sum())


def _shape_features(m: np.ndarray, spacing: tuple[float, ...], ref_volume: float) -> dict[str, float]:
    ndim = m.ndim
    voxel = float(np.prod(spacing))
    n = int(m.sum())
    f: dict[str, float] = {"empty": float(n == 0)}
    vol = n * voxel
    f["log_volume_ratio"] = float(np.log((vol + voxel) / (ref_volume + voxel)))
    f["volume_fraction"] = n / m.size
    if n == 0:
        return f
    lab, ncomp = ndimage.label(m)
    sizes = np.bincount(lab.ravel())[1:]
    f["n_components"] = float(ncomp)
    f["largest_component_fraction"] = float(sizes.max() / n)
    filled = _on_box(m, 1, lambda b: ndimage.binary_fill_holes(b) if ndim == 2
                     else np.stack([ndimage.binary_fill_holes(s) for s in b]))
    f["hole_fraction"] = float((filled.sum() - n) / max(filled.sum(), 1))
    boundary = _boundary_count(m)
    mean_sp = float(np.mean(spacing))
    if ndim == 2:
        perim = boundary * mean_sp
        f["compactness"] = float(4 * np.pi * vol / max(perim**2, 1e-6))
        f["solidity"] = _solidity_2d(m)
    else:
        area = boundary * mean_sp**2
        f["compactness"] = float(36 * np.pi * vol**2 / max(area**3, 1e-6))
        zs = [z for z in range(m.shape[0]) if m[z].any()]
        sol = [_solidity_2d(m[z]) for z in zs[:: max(1, len(zs) // 8)]]
        f["solidity"] = float(np.mean(sol))
        areas = m.sum(axis=(1, 2)).astype(float)
        span = areas[zs[0]: zs[-1] + 1]
        f["slice_gap_fraction"] = float(np.mean(span == 0))
        f["slice_area_jump"] = float(np.mean(np.abs(np.diff(span))) / max(span.mean(), 1)) if len(span) > 1 else 0.0
        f["z_extent_fraction"] = len(span) / m.shape[0]
    smooth = ndimage.gaussian_filter(m.astype(np.float32), sigma=2.0) > 0.5
    f["roughness"] = float(boundary / max(_boundary_count(smooth), 1))
    idx = np.argwhere(m)
    lo, hi = idx.min(0), idx.max(0)
    f["extent"] = float(n / np.prod(hi - lo + 1))
    centre = idx.mean(0) / np.array(m.shape)
    for i, c in enumerate(centre):
        f[f"centroid_{i}"] = float(c)
    border = np.zeros_like(m)
    for ax in range(ndim):
        sl = [slice(None)] * ndim
        sl[ax] = 0
        border[tuple(sl)] = True
        sl[ax] = -1
        border[tuple(sl)] = True
    f["border_contact"] = float((m & border).sum() / max(boundary, 1))
    return f


def _image_features(measures: ImageMeasures, m: np.ndarray, spacing, ref_stats: dict) -> dict[str, float]:
    """``measures`` of the image; m bool; ref_stats per channel: mean/std of reference foreground and image."""
    f: dict[str, float] = {}
    n = int(m.sum())
    if n == 0:
        return f
    # ring width ~15 % of the structure's equivalent radius, in voxels, at least 2
    radius = (n / np.pi) ** 0.5 if m.ndim == 2 else (3 * n / (4 * np.pi)) ** (1 / 3)
    ring = _ring(m, max(2, int(round(0.15 * radius))))
    edge = _edge(m)
    # every channel, and grey (the channels' mean) when there are several
    for c, (x, (lo, hi)) in measures.channels.items():
        name = "grey" if c == -1 else f"c{c}"
        st = ref_stats[str(c)]
        scale = st["img_std"] + 1e-6
        inside, outside = x[m], x[ring] if ring.any() else x[~m]
        mi, mo = float(inside.mean()), float(outside.mean()) if outside.size else float(x.mean())
        si, so = float(inside.std()), float(outside.std()) if outside.size else 0.0
        f[f"{name}_in_mean"] = (mi - st["img_mean"]) / scale
        f[f"{name}_ring_mean"] = (mo - st["img_mean"]) / scale
        f[f"{name}_contrast"] = (mi - mo) / (0.5 * (si + so) + 1e-3 * scale)
        f[f"{name}_in_std"] = si / scale
        f[f"{name}_ring_std"] = so / scale
        f[f"{name}_in_vs_ref_fg"] = (mi - st["fg_mean"]) / (st["fg_std"] + 1e-6)
        f[f"{name}_ring_vs_ref_fg"] = (mo - st["fg_mean"]) / (st["fg_std"] + 1e-6)
        f[f"{name}_ring_vs_ref_bg"] = (mo - st["ring_mean"]) / (st["ring_std"] + 1e-6)
        # histogram overlap of inside vs ring: well separated = a real edge was followed
        if outside.size:
            bins = np.linspace(lo, hi + 1e-6, 17)
            hi_, _ = np.histogram(inside, bins)
            ho_, _ = np.histogram(outside, bins)
            f[f"{name}_hist_overlap"] = float(np.minimum(hi_ / max(hi_.sum(), 1), ho_ / max(ho_.sum(), 1)).sum())
    grad = measures.grad
    ref_grad = ref_stats["grad_mean"] + 1e-6
    f["edge_gradient"] = float(grad[edge].mean() / ref_grad)
    f["edge_gradient_vs_image"] = float(grad[edge].mean() / (measures.grad_mean + 1e-6))
    f["edge_gradient_vs_ref_edges"] = float(grad[edge].mean() / (ref_stats["edge_grad_mean"] + 1e-6))
    return f


def _agreement_features(m: np.ndarray, proba: np.ndarray, argmax: np.ndarray, channel: int,
                        spacing) -> dict[str, float]:
    """Candidate label mask ``m`` vs the segmenter's probabilities ``proba`` (L+1, ...) of its ``channel``
    (``argmax``: ``proba.argmax(0)``)."""
    from segqc.metrics import binary_hd95

    p = proba[channel]
    seg = argmax == channel
    n, ps = int(m.sum()), float(p.sum())
    f = {"seg_dice": binary_dice(m, seg),
         "seg_soft_dice": float(2 * (p * m).sum() / max(n + ps, 1e-6)) if n + ps > 0 else 1.0,
         "seg_log_volume_ratio": float(np.log((ps + 1) / (n + 1))),
         "seg_empty": float(not seg.any())}
    if n:
        ring = _ring(m, 3)
        f["seg_p_inside"] = float(p[m].mean())
        f["seg_p_ring"] = float(p[ring].mean()) if ring.any() else 0.0
        f["seg_frac_inside_low"] = float((p[m] < 0.5).mean())
    if seg.any():
        f["seg_frac_missed"] = float((seg & ~m).sum() / seg.sum())
        f["seg_confidence"] = float(p[seg].mean())
    if n and seg.any():
        f["seg_hd95"] = binary_hd95(m, seg, spacing)
    union = m | seg
    if union.any():
        # how unsure the segmenter itself is where the two opinions could differ
        f["seg_uncertainty"] = float((4 * p[union] * (1 - p[union])).mean())
    return f


def mask_features(case: Case, label: int, ref_stats: dict, proba: np.ndarray | None = None,
                  measures: ImageMeasures | None = None) -> dict[str, float]:
    """All features of one label of ``case.mask`` (a dict of floats; missing = NaN for the booster).
    ``measures``: `ImageMeasures.of` the case's image and ``proba``, when the caller measures several
    masks or labels of one image and measures the image once."""
    m = case.mask == label
    f = {"label": float(label), "n_labels": float(len(ref_stats["labels"]))}
    lbl = ref_stats["labels"][str(label)]
    f.update(_shape_features(m, case.spacing, lbl["volume_median"]))
    f["log_volume_vs_ref_iqr"] = float(
        (np.log(m.sum() * np.prod(case.spacing) + 1) - lbl["log_volume_mean"]) / (lbl["log_volume_std"] + 1e-3))
    if measures is None:
        measures = ImageMeasures.of(case.image, ref_stats, proba)
    f.update(_image_features(measures, m, case.spacing, ref_stats["channels"][str(label)]))
    if len(ref_stats["labels"]) > 1:
        # multi-label: how much of this label touches the other labels, relative to the references
        others = (case.mask > 0) & ~m
        f["contact_other_labels"] = float((ndimage.binary_dilation(m) & others).sum() / max(m.sum(), 1))
    if proba is not None:
        # the segmenter's channels follow the plan's label order, as ref_stats["labels"] does
        channel = 1 + list(ref_stats["labels"]).index(str(label))
        f.update(_agreement_features(m, proba, measures.seg, channel, case.spacing))
    return f


def reference_stats(cases: list[Case], labels: list[int], rng: np.random.Generator) -> dict:
    """Typical volumes and intensities of the expert masks: what 'normal' means for this dataset."""
    out: dict = {"labels": {}, "channels": {}, "intensity_units": "image"}
    for k in labels:
        vols = np.array([(c.mask == k).sum() * np.prod(c.spacing) for c in cases], float)
        logs = np.log(vols + 1)
        out["labels"][str(k)] = {"volume_median": float(np.median(vols)), "log_volume_mean": float(logs.mean()),
                                 "log_volume_std": float(logs.std())}
        per_channel: dict[str, dict] = {}
        n_ch = cases[0].image.shape[0]
        chans = list(range(n_ch)) + ([-1] if n_ch > 1 else [])
        acc = {c: {"fg": [], "ring": [], "img": []} for c in chans}
        grads, edge_grads = [], []
        for case in cases:
            image = image_units(case.image)  # one at a time: a dataset of volumes would not fit in memory twice
            m = case.mask == k
            ring = _ring(m, 3) if m.any() else ~m
            for c in chans:
                x = image.mean(0) if c == -1 else image[c]
                for key, sel in (("fg", m), ("ring", ring), ("img", np.ones_like(m))):
                    v = x[sel]
                    if v.size:
                        acc[c][key].append(rng.choice(v, size=min(v.size, 2000), replace=False))
            g = ndimage.gaussian_gradient_magnitude(image.mean(0), sigma=1.0)
            grads.append(float(g.mean()))
            if m.any():
                edge_grads.append(float(g[_edge(m)].mean()))
        for c in chans:
            st = {}
            for key in ("fg", "ring", "img"):
                v = np.concatenate(acc[c][key]) if acc[c][key] else np.zeros(1)
                st[f"{key}_mean"], st[f"{key}_std"] = float(v.mean()), float(v.std())
            per_channel[str(c)] = st
        per_channel["grad_mean"] = float(np.mean(grads))
        per_channel["edge_grad_mean"] = float(np.mean(edge_grads)) if edge_grads else 1.0
        out["channels"][str(k)] = per_channel
    return out


def _rows_of_image(case: Case, masks: list[np.ndarray], labels, ref_stats: dict,
                   proba: np.ndarray | None) -> list[list[dict[str, float]]]:
    """The feature rows (one per label) of several candidate masks of one image."""
    measures = ImageMeasures.of(case.image, ref_stats, proba)  # once per image, not per mask and label
    return [[mask_features(case.with_mask(m), k, ref_stats, proba, measures) for k in labels] for m in masks]


def measure_candidates(jobs: list[tuple[Case, np.ndarray | None]], labels, ref_stats: dict, n_jobs: int = 1,
                       progress=None) -> list[list[dict[str, float]]]:
    """`mask_features` of every label of each ``(candidate case, segmenter probabilities)``, in order.

    Candidates of one image (the same image and probability arrays: the pairs of a reference
    case, the checkpoints of one image) are measured by one task, so each image travels to
    a worker once. With ``n_jobs`` ≠ 1 (joblib's meaning: -1 = every core) and at least
    `MIN_PARALLEL` candidates, the tasks run on worker processes: the measuring is numpy and
    scipy work that holds the GIL, so threads would not share it out. The rows are the same
    either way. ``progress(done)`` is called with the number of candidates measured so far.
    """
    from joblib import Parallel, delayed, effective_n_jobs

    groups: dict[tuple[int, int], list[int]] = {}
    for i, (case, proba) in enumerate(jobs):
        groups.setdefault((id(case.image), id(proba)), []).append(i)
    tasks = [(jobs[idx[0]][0], [jobs[i][0].mask for i in idx], jobs[idx[0]][1]) for idx in groups.values()]
    workers = effective_n_jobs(n_jobs) if len(jobs) >= MIN_PARALLEL else 1
    if workers > 1:
        results = Parallel(n_jobs=workers, return_as="generator")(
            delayed(_rows_of_image)(case, masks, labels, ref_stats, proba) for case, masks, proba in tasks)
    else:
        results = (_rows_of_image(case, masks, labels, ref_stats, proba) for case, masks, proba in tasks)
    rows: list = [None] * len(jobs)
    done = 0
    for idx, task_rows in zip(groups.values(), results):
        for i, r in zip(idx, task_rows):
            rows[i] = r
        done += len(idx)
        if progress is not None:
            progress(done)
    return rows
