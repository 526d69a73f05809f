"""Scoring a candidate against a pseudo ground truth (pGT): the one rule for every pGT method.

Methods that build a pGT (nnQC, the diffusion ensemble, the mask autoencoder, RCA) all
say "the candidate is as good as its agreement with the pGT", measured here, on the
case's ORIGINAL grid and in mm, per foreground label:

* Dice (`segqc.metrics.binary_dice`): both empty → 1.0, exactly one empty → 0.0.
* HD95 in mm (`segqc.metrics.binary_hd95`): both empty → 0.0; exactly one empty → the
  image diagonal in mm, the largest distance the grid holds. A finite worst case ranks the
  case as bad as it can be instead of dropping out of means as NaN would.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from segqc.metrics import binary_dice, binary_hd95

__all__ = ["diagonal_mm", "hd95_or_diagonal", "score_against_pgt"]


def diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length of the grid's diagonal in mm: no two points of the image are further apart."""
    return float(np.sqrt(np.sum((np.asarray(shape, dtype=float) * np.asarray(spacing, dtype=float)) ** 2)))


def hd95_or_diagonal(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> float:
    """HD95 (mm) of two boolean masks under the rule above."""
    v = binary_hd95(a, b, spacing)
    return float(v) if np.isfinite(v) else diagonal_mm(a.shape, spacing)


def score_against_pgt(candidate: np.ndarray, pgt: np.ndarray, labels: Sequence[int], spacing: Sequence[float],
                      ) -> tuple[dict[int, float], dict[int, float]]:
    """Dice and HD95 (mm) of a candidate label mask against a pGT label mask, per label."""
    dice, hd = {}, {}
    for k in labels:
        c, r = candidate == k, pgt == k
        dice[int(k)] = float(binary_dice(c, r))
        hd[int(k)] = hd95_or_diagonal(c, r, spacing)
    return dice, hd
