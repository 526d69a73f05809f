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

from collections.abc import Sequence

import numpy as np

from segqc.data.corrupt import geometry as g
from segqc.data.corrupt.kinds import (
    CORRUPTIONS,
    Corruption,
    elastic_boundary,
    empty,
    erode_dilate,
    false_positive_blobs,
    holes,
    label_swap,
    missing_slices,
    partial_deletion,
    shift,
)

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
    sp = g.spacing_array(mask, spacing)
    present = g.present_labels(mask)
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
            d = g.mean_dice(mask, m)
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
    sp = g.spacing_array(mask, spacing)
    if isinstance(target, str):
        if target != "uniform":
            raise ValueError(f"unknown target {target!r}")
        targets = (rng.permutation(n) + rng.random(n)) / max(n, 1)
    else:
        targets = np.clip(np.asarray(target, dtype=float), 0.0, 1.0)
        if len(targets) != n:
            raise ValueError("need one target per sample")
    present = g.present_labels(mask)
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
        results.append((m, g.mean_dice(mask, m)))
    return results
