"""Dataset-level estimate: how well is the segmentation model doing on this data?

Per group of cases (e.g. per model or site) the mean of the predicted Dice estimates
the model's mean Dice, and the mean of P(Dice ≥ τ) the share of cases that pass.

A batch's mean has two errors. The cases' own noise shrinks as the batch grows: a
percentile interval of a case bootstrap covers it (``mean_dice_sampling_ci``). The QC
method's systematic error on a model or site it was not calibrated on does not shrink at
all — on segqc's shift benchmark it is most of the error, and a bootstrap interval
alone contained the truth for 19 of 32 (site, model) pairs. ``mean_dice_ci`` therefore
widens the bootstrap interval by the calibrator's systematic bound
(`segqc.calibration.calibrator.DiceCalibrator.systematic_`: how far the mean strayed on
held-out groups of calibration pairs — models and simulated sites).

Part of that systematic error can be read from the batch itself: where its candidates lie
among the calibration pairs tells which part of the calibration map's error it inherits.
With a calibrator's batch correction (`segqc.calibration.batch_correction`) and the
cases' descriptors, each group's mean Dice (and its interval) is shifted by that error;
the uncorrected mean stays beside it. The share of passing cases is not corrected: the
same weighting of the pairs' pass residuals helped on one fit's reference split and moved
the share away from the truth on the next (README, "The site's mean Dice corrected").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["estimate_groups"]


def _boot(values: np.ndarray, rng: np.random.Generator, n_boot: int) -> tuple[float, float]:
    """95 % percentile interval of the mean, from ``n_boot`` case resamples drawn with ``rng``."""
    from scipy.stats import bootstrap

    if len(values) < 2:
        return float("nan"), float("nan")
    ci = bootstrap((values,), np.mean, n_resamples=n_boot, confidence_level=0.95, method="percentile",
                   rng=rng).confidence_interval
    return float(ci.low), float(ci.high)


def _widen(ci: tuple[float, float], by: float) -> tuple[float, float]:
    """``ci`` widened by ``by`` on both sides, within [0, 1] (unchanged when ``by`` or ``ci`` is NaN: one
    case has no interval)."""
    if np.isnan(by) or np.isnan(ci).any():
        return ci
    return max(0.0, ci[0] - by), min(1.0, ci[1] + by)


def estimate_groups(pred_dice: Sequence[float], p_pass: Sequence[float], groups: Sequence[str] | None = None, *,
                    tau: float = 0.8, n_boot: int = 2000, rng: np.random.Generator | None = None,
                    true_dice: Sequence[float] | None = None, systematic: float = float("nan"),
                    correction=None, descriptors: np.ndarray | None = None) -> dict:
    """Estimated mean Dice and pass share per group (and ``all``), with 95 % intervals.

    ``systematic``: the QC method's systematic error bound on a group's mean Dice, added
    on both sides of the bootstrap interval (NaN: unknown, the interval is the bootstrap's
    alone and says so in ``mean_dice_ci_covers``). When ``true_dice`` is given
    (benchmarks), the true values are reported beside the estimates. ``correction`` (a fitted
    `segqc.calibration.batch_correction.BatchCorrection`) with ``descriptors`` (one row per
    case) corrects each group's mean Dice for where its cases lie among the calibration pairs.
    """
    rng = rng or np.random.default_rng(0)
    pred = np.asarray(pred_dice, float)
    pp = np.asarray(p_pass, float)
    g = np.asarray(groups if groups is not None else ["all"] * len(pred), dtype=object)
    t = np.asarray(true_dice, float) if true_dice is not None else None
    out = {}
    names = ["all"] + [x for x in dict.fromkeys(g.tolist()) if x != "all"] if len(set(g.tolist())) > 1 else ["all"]
    described = None if descriptors is None else np.asarray(descriptors, float)
    # rows measured for another calibrator (a table from another bundle) are not a batch it can place
    if correction is None or described is None or described.shape[1:] != (len(correction.names_),):
        correction = None
    for name in names:
        sel = np.ones(len(pred), bool) if name == "all" else (g == name)
        sel &= np.isfinite(pred) & np.isfinite(pp)
        d, p = pred[sel], pp[sel]
        sampling = _boot(d, rng, n_boot)
        shift = correction.correct(described[sel]) if correction is not None else None
        by = shift["correction"] if shift else 0.0
        sampling = tuple(float(v) for v in np.clip(np.add(sampling, by), 0, 1))  # NaN (one case) stays NaN
        row = {"n": int(sel.sum()),
               "mean_dice": float(np.clip(d.mean() + by, 0, 1)) if d.size else float("nan"),
               "mean_dice_ci": _widen(sampling, systematic),
               "mean_dice_ci_covers": "sampling" if np.isnan(systematic) else "sampling and systematic error",
               "mean_dice_sampling_ci": sampling,
               "systematic_error": None if np.isnan(systematic) else float(systematic),
               "mean_dice_uncorrected": float(d.mean()) if d.size else float("nan"),
               "batch_correction": shift,
               "share_pass": float(p.mean()) if p.size else float("nan"),
               "share_pass_ci": _boot(p, rng, n_boot)}
        if t is not None:  # rows without a truth (NaN) are left out of the true figures, not counted as fails
            tt = t[sel][np.isfinite(t[sel])]
            row["n_with_truth"] = int(tt.size)
            row["true_mean_dice"] = float(tt.mean()) if tt.size else float("nan")
            row["true_share_pass"] = float(np.mean(tt >= tau)) if tt.size else float("nan")
            row["abs_error_mean_dice"] = abs(row["mean_dice"] - row["true_mean_dice"])
        out[str(name)] = row
    return out
