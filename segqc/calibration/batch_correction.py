"""A batch's mean Dice corrected by the calibration pairs that look like its candidates.

One calibration map serves every candidate, yet its error is not the same everywhere:
segqc's calibration pairs come in families (corruptions of expert masks, segqc's own
segmenter early and late, at simulated sites, networks of other architectures), and on
the Kvasir reference split the map leaves one family +0.06 too high and another −0.05
too low. A batch is one model at one site: its candidates sit in one region of that
space, so its mean inherits that region's error whole, however many cases it has.

The unlabeled batch says where it sits. A domain classifier tells the batch's candidates
from the calibration pairs by their descriptors (the method's own numbers about each
candidate, `segqc.methods.base.RawScore.features`); its odds ``p / (1 − p)`` estimate
the density ratio batch / calibration at each pair (covariate-shift importance weights,
Shimodaira 2000; Sugiyama et al. 2007). The weighted mean of the pairs' cross-fitted
residuals (true − calibrated) is the map's error where the batch lies, and is added to
the batch's mean calibrated Dice. This is the residual (doubly robust) form: where the
map is right the correction is zero whatever the weights, and where the batch is unlike
every pair the weights collapse onto a few — ``effective_pairs`` (Kish's effective
sample size) says so.

A logistic classifier, strongly regularised (``strength``: scikit-learn's ``C``), keeps
the weights smooth. Weights are capped at ``max_weight`` times their mean, so that no
handful of pairs decides a batch. The weighted mean's standard error says how noisy it is
(few calibration pairs, or weights on a handful of them): the correction is shrunk towards
zero by it (positive-part James–Stein), so that a correction within its own noise is not
made. ``strength`` 0.1 was chosen on the reference split
alone (each group of calibration pairs — a network, a snapshot, a simulated site — held
out in turn as the batch, as `benchmarks/batch_correction.py` measures it); no benchmark
row was used.
The README's "The site's mean Dice corrected from the batch itself" gives the figures.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["BatchCorrection"]


class BatchCorrection:
    """Importance-weighted correction of a batch's mean calibrated Dice.

    Args:
        strength: inverse regularisation of the domain classifier (scikit-learn's ``C``).
        max_weight: a pair's weight is capped at this many times the mean weight.
        min_batch: batches smaller than this are not corrected (too few cases to place).
    """

    def __init__(self, *, strength: float = 0.1, max_weight: float = 20.0, min_batch: int = 10):
        self.strength = strength
        self.max_weight = max_weight
        self.min_batch = min_batch

    def fit(self, descriptors: np.ndarray, residuals: np.ndarray, names: Sequence[str]) -> "BatchCorrection":
        """``descriptors``: the calibration pairs' numbers (n, d), columns named by ``names``;
        ``residuals``: their true Dice minus their cross-fitted calibrated Dice (n,)."""
        d, r = np.asarray(descriptors, float), np.asarray(residuals, float)
        if d.ndim != 2 or d.shape != (len(r), len(names)) or not np.isfinite(r).all() or np.isinf(d).any():
            raise ValueError(f"batch correction needs one row of {len(names)} descriptors (finite or missing) and "
                             f"one finite residual per calibration pair, got descriptors {d.shape} and {r.shape} "
                             "residuals")
        self.names_ = list(names)
        self.descriptors_, self.residuals_ = d.astype(np.float32), r.astype(np.float32)
        # derived once, not saved: the pairs in their own spread's units, a missing number their median
        import warnings

        ref = self.descriptors_.astype(float)
        with warnings.catch_warnings():  # a number no pair has: its median is NaN, and 0 stands in below
            warnings.simplefilter("ignore", RuntimeWarning)
            fill = np.nanmedian(ref, 0)
        self._fill = np.where(np.isnan(fill), 0.0, fill)
        ref = np.where(np.isnan(ref), self._fill, ref)
        self._centre, scale = ref.mean(0), ref.std(0)
        self._scale = np.where(scale > 1e-12, scale, 1.0)
        self._reference = self._standardised(ref)
        return self

    def _standardised(self, x: np.ndarray) -> np.ndarray:
        """``x`` in units of the calibration pairs' spread (bounded at ±5); a missing number is their median."""
        x = np.where(np.isnan(x), self._fill, x)
        return np.clip((x - self._centre) / self._scale, -5, 5)

    def correct(self, batch: np.ndarray) -> dict | None:
        """The correction for a batch's descriptors (m, d): ``correction`` (add it to the batch's mean
        calibrated Dice) and ``effective_pairs`` (how many calibration pairs it effectively rests on).
        None for a batch smaller than ``min_batch``."""
        b = np.asarray(batch, float)
        if b.ndim != 2 or b.shape[1] != len(self.names_):
            raise ValueError(f"batch correction needs {len(self.names_)} descriptors per case, got {b.shape}")
        if len(b) < self.min_batch:
            return None
        w = self.weights(b)
        return _shrunk(w, self.residuals_) | {"effective_pairs": float(1.0 / np.sum(w ** 2)),
                                              "calibration_pairs": int(len(w)), "n": int(len(b))}

    def weights(self, batch: np.ndarray) -> np.ndarray:
        """Each calibration pair's share (summing to 1) in the correction of a batch's descriptors (m, d): which
        pairs the batch is taken to look like (`benchmarks/checkpoint_bias.py` shows them by source)."""
        from sklearn.linear_model import LogisticRegression

        ref, bat = self._reference, self._standardised(np.asarray(batch, float))
        x = np.vstack([ref, bat])
        y = np.r_[np.zeros(len(ref)), np.ones(len(bat))]
        # balanced classes: the odds are the density ratio batch / calibration, up to a constant that cancels
        clf = LogisticRegression(C=self.strength, class_weight="balanced", max_iter=3000).fit(x, y)
        p = np.clip(clf.predict_proba(ref)[:, 1], 1e-6, 1 - 1e-6)
        w = p / (1 - p)
        w = np.minimum(w, self.max_weight * w.mean())
        return w / w.sum()

    def vector(self, features: dict[str, float]) -> np.ndarray:
        """A candidate's descriptors in the fitted order (NaN where the method did not give one)."""
        return np.array([features.get(k, np.nan) for k in self.names_], dtype=float)

    # -- persistence: the pairs' descriptors and residuals are the whole state
    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        return ({"descriptors": self.descriptors_, "residuals": self.residuals_},
                {"names": self.names_, "strength": self.strength, "max_weight": self.max_weight,
                 "min_batch": self.min_batch})

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], config: dict) -> "BatchCorrection":
        bc = cls(strength=float(config["strength"]), max_weight=float(config["max_weight"]),
                 min_batch=int(config["min_batch"]))
        if not (bc.strength > 0 and bc.max_weight >= 1 and bc.min_batch >= 2):
            raise ValueError(f"batch correction needs strength > 0, max_weight >= 1 and min_batch >= 2, got "
                             f"{bc.strength}, {bc.max_weight}, {bc.min_batch}")
        return bc.fit(arrays["descriptors"], arrays["residuals"], [str(n) for n in config["names"]])


def _shrunk(w: np.ndarray, residuals: np.ndarray) -> dict[str, float]:
    """The ``w``-weighted mean of ``residuals``, its standard error (pairs taken as independent), and the
    mean shrunk towards zero by positive-part James–Stein: a correction no larger than its own noise is not
    made, and a small one is shrunk (few pairs, or weights on a handful of them, give a noisy mean)."""
    r = np.asarray(residuals, float)
    mean = float(np.sum(w * r))
    se = float(np.sqrt(np.sum(w ** 2 * (r - mean) ** 2)))
    shrink = max(0.0, 1.0 - se ** 2 / mean ** 2) if mean else 0.0
    return {"correction": shrink * mean, "weighted_residual": mean, "standard_error": se}
