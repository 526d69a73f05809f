"""Dataset fingerprint: what the reference cases are, measured (nnU-Net's first step).

`compute_fingerprint` only measures: spacings, shapes, foreground boxes, label volumes,
intensity statistics, a modality guess. The decisions made from it are the `Plan`
(`segqc.plan.plan.plan_from_fingerprint`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from segqc.data.case import Case

__all__ = ["compute_fingerprint", "load_fingerprint", "save_fingerprint"]


# ≤ this many voxels per case feed the percentile estimates (nnU-Net samples 10k too).
_SAMPLES_PER_CASE = 10_000


# --------------------------------------------------------------------------- fingerprint


def _intensity_stats(values: np.ndarray) -> dict[str, float]:
    """nnU-Net-named statistics of a 1D sample (NaN when the sample is empty)."""
    if values.size == 0:
        return {k: float("nan") for k in ("mean", "std", "median", "min", "max", "percentile_00_5",
                                           "percentile_99_5")}
    v = values.astype(np.float64)
    p005, p50, p995 = np.percentile(v, [0.5, 50.0, 99.5])
    return {"mean": float(v.mean()), "std": float(v.std()), "median": float(p50), "min": float(v.min()),
            "max": float(v.max()), "percentile_00_5": float(p005), "percentile_99_5": float(p995)}


def _subsample(values: np.ndarray, rng: np.random.Generator, n: int = _SAMPLES_PER_CASE) -> np.ndarray:
    if values.size <= n:
        return values
    return values[rng.choice(values.size, size=n, replace=False)]


def _bbox_size(mask: np.ndarray) -> list[int] | None:
    """Extent of ``mask > 0`` per axis in voxels, or None when the mask is empty."""
    fg = mask > 0
    if not fg.any():
        return None
    sizes = []
    for ax in range(fg.ndim):
        other = tuple(a for a in range(fg.ndim) if a != ax)
        idx = np.flatnonzero(fg.any(axis=other))
        sizes.append(int(idx[-1] - idx[0] + 1))
    return sizes


def compute_fingerprint(cases: Iterable[Case], *, progress: Callable[[int, str], None] | None = None,
                        seed: int = 0) -> dict:
    """Measure a dataset: geometry, foreground boxes, labels and intensities.

    Args:
        cases: `Case` objects (or anything with ``.load()`` returning one, e.g. `CaseRef`),
            all with the same dimension (2 or 3) and number of channels. Cases without a
            mask count for shapes and whole-image intensities only.
        progress: optional ``progress(n_done, case_id)`` called after each case.
        seed: seed of the one Generator that subsamples ≤ 10k voxels per case.

    Returns:
        A JSON-able dict of measurements only (no decisions): ``n_cases``, ``ndim``,
        ``n_channels``, ``case_ids``, ``spacings``/``shapes`` (array axis order, mm / voxels),
        ``median_spacing``, ``median_shape``, ``fg_bbox_voxels``/``fg_bbox_mm`` (per case,
        None for an empty mask), ``labels``, ``label_volume_median`` (mm³ in 3D, mm² in 2D,
        keyed by ``str(label)``), ``label_case_count``,
        ``foreground_intensity_properties_per_channel`` and
        ``image_intensity_properties_per_channel`` (keyed ``"0"``, ``"1"``...),
        ``integer_valued``, ``intensity_range`` and ``modality_guess``.

    Raises:
        ValueError: no cases, or cases that disagree on dimension / channels.
    """
    rng = np.random.default_rng(seed)
    ids: list[str] = []
    spacings: list[list[float]] = []
    shapes: list[list[int]] = []
    bbox_vox: list[list[int] | None] = []
    bbox_mm: list[list[float] | None] = []
    volumes: dict[int, list[float]] = {}
    fg_samples: list[list[np.ndarray]] = []
    img_samples: list[list[np.ndarray]] = []
    integer_valued: list[bool] = []
    lo: list[float] = []
    hi: list[float] = []
    ndim = n_channels = None
    n_with_mask = 0
    for i, case in enumerate(cases):
        if not isinstance(case, Case) and hasattr(case, "load"):
            case = case.load()
        if ndim is None:
            ndim, n_channels = case.ndim, case.n_channels
            if ndim not in (2, 3):
                raise ValueError(f"cases must be 2D or 3D, got {ndim}D ({case.case_id})")
            fg_samples = [[] for _ in range(n_channels)]
            img_samples = [[] for _ in range(n_channels)]
            integer_valued = [True] * n_channels
            lo, hi = [math.inf] * n_channels, [-math.inf] * n_channels
        elif case.ndim != ndim or case.n_channels != n_channels:
            raise ValueError(f"case {case.case_id} is {case.ndim}D with {case.n_channels} channel(s); "
                             f"earlier cases are {ndim}D with {n_channels}")
        ids.append(case.case_id)
        spacing = [float(s) for s in case.spacing]
        spacings.append(spacing)
        shapes.append([int(s) for s in case.shape])
        voxel = float(np.prod(spacing))
        fg = None
        if case.mask is not None:
            n_with_mask += 1
            if case.mask.shape != case.shape:
                raise ValueError(f"case {case.case_id}: mask shape {case.mask.shape} differs from image "
                                 f"shape {case.shape}")
            box = _bbox_size(case.mask)
            bbox_vox.append(box)
            bbox_mm.append(None if box is None else [b * s for b, s in zip(box, spacing)])
            labels, counts = np.unique(case.mask, return_counts=True)
            for lab, cnt in zip(labels.tolist(), counts.tolist()):
                if lab > 0:
                    volumes.setdefault(int(lab), []).append(cnt * voxel)
            fg = case.mask > 0
        else:
            bbox_vox.append(None)
            bbox_mm.append(None)
        for c in range(n_channels):
            chan = case.image[c]
            lo[c] = min(lo[c], float(chan.min()))
            hi[c] = max(hi[c], float(chan.max()))
            integer_valued[c] = integer_valued[c] and bool(np.all(chan == np.round(chan)))
            img_samples[c].append(_subsample(chan.ravel(), rng))
            if fg is not None and fg.any():
                fg_samples[c].append(_subsample(chan[fg], rng))
        if progress is not None:
            progress(i + 1, case.case_id)
    if ndim is None:
        raise ValueError("cannot fingerprint an empty dataset (no cases)")

    def per_channel(samples: list[list[np.ndarray]]) -> dict[str, dict[str, float]] | None:
        if not any(samples):
            return None
        return {str(c): _intensity_stats(np.concatenate(s) if s else np.empty(0)) for c, s in enumerate(samples)}

    fp = {
        "n_cases": len(ids),
        "ndim": ndim,
        "n_channels": n_channels,
        "case_ids": ids,
        "spacings": spacings,
        "shapes": shapes,
        "median_spacing": np.median(np.asarray(spacings), axis=0).tolist(),
        "median_shape": np.median(np.asarray(shapes, dtype=float), axis=0).tolist(),
        "fg_bbox_voxels": bbox_vox,
        "fg_bbox_mm": bbox_mm,
        "labels": sorted(volumes),
        "label_volume_median": {str(k): float(np.median(v)) for k, v in sorted(volumes.items())},
        "label_case_count": {str(k): len(v) for k, v in sorted(volumes.items())},
        "volume_unit": "mm3" if ndim == 3 else "mm2",
        "foreground_intensity_properties_per_channel": per_channel(fg_samples),
        "image_intensity_properties_per_channel": per_channel(img_samples),
        "integer_valued": integer_valued,
        "intensity_range": [[lo[c], hi[c]] for c in range(n_channels)],
        "n_cases_with_mask": n_with_mask,
    }
    fp["modality_guess"] = _guess_modality(fp)
    return fp


def _guess_modality(fp: dict) -> str:
    """RGB photo, Hounsfield-like CT, MR, or other — from value ranges only."""
    gmin = min(r[0] for r in fp["intensity_range"])
    gmax = max(r[1] for r in fp["intensity_range"])
    integer = all(fp["integer_valued"])
    if fp["ndim"] == 2 and fp["n_channels"] == 3 and gmin >= 0 and gmax <= 255:
        return "RGB"
    if gmin <= -500 and integer:
        return "CT"
    if fp["ndim"] == 3 and fp["n_channels"] == 1 and gmin >= 0:
        return "MR"
    return "other"


def save_fingerprint(fp: dict, path: str | Path) -> Path:
    """Write ``fingerprint.json`` (measurements only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fp, indent=1, allow_nan=True))
    return path


def load_fingerprint(path: str | Path) -> dict:
    """Read a fingerprint written by `save_fingerprint`."""
    return json.loads(Path(path).read_text())
