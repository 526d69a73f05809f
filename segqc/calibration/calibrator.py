"""Raw QC scores → calibrated Dice, P(Dice ≥ τ) and a conformal interval.

Fitted on held-out reference cases (never on the cases being judged):

* `DiceCalibrator`: isotonic regression raw → true Dice (monotone, so it keeps the
  method's ranking and only fixes its scale);
* P(Dice ≥ τ): isotonic regression raw → 1[Dice ≥ τ], a monotone probability;
* interval: conformal radius from cross-fitted |true − calibrated| residuals, giving a
  symmetric interval whose marginal coverage is close to the stated level on
  exchangeable cases.

State is a few arrays (isotonic breakpoints) rebuilt into interpolators on load.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DiceCalibrator", "conformal_quantile"]


def conformal_quantile(residuals: np.ndarray, coverage: float) -> float:
    """Split-conformal radius: the ⌈(n+1)·coverage⌉-th smallest |residual|."""
    r = np.sort(np.abs(np.asarray(residuals, dtype=float)))
    n = len(r)
    if n == 0:
        return 1.0
    k = int(np.ceil((n + 1) * coverage))
    return float(r[min(k, n) - 1]) if k <= n else 1.0


def _isotonic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(x, y)
    return np.asarray(iso.X_thresholds_, float), np.asarray(iso.y_thresholds_, float)


class DiceCalibrator:
    """Monotone map from a method's raw score to Dice, P(Dice ≥ τ) and an interval.

    Args:
        tau: the Dice a segmentation must reach to pass.
        coverage: nominal coverage of the conformal interval.
    """

    def __init__(self, *, tau: float = 0.8, coverage: float = 0.9):
        self.tau = tau
        self.coverage = coverage

    def fit(self, raw: np.ndarray, true_dice: np.ndarray) -> "DiceCalibrator":
        raw, true_dice = np.asarray(raw, float), np.asarray(true_dice, float)
        ok = np.isfinite(raw) & np.isfinite(true_dice)
        if ok.sum() < 10:
            raise ValueError(f"calibration needs at least 10 held-out cases with finite scores, got {int(ok.sum())}")
        if not 0 < self.tau < 1 or not 0 < self.coverage < 1:
            raise ValueError(f"tau and coverage must lie in (0, 1), got tau={self.tau}, coverage={self.coverage}")
        raw, true_dice = raw[ok], true_dice[ok]
        self.dice_x_, self.dice_y_ = _isotonic(raw, true_dice)
        self.pass_x_, self.pass_y_ = _isotonic(raw, (true_dice >= self.tau).astype(float))
        # residuals of the isotonic map on cases it was not fitted on (5-fold cross-fitting):
        # in-sample residuals are too small and would make the interval under-cover
        from sklearn.isotonic import IsotonicRegression

        from segqc.calibration.crossfit import out_of_fold

        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
        resid = true_dice - out_of_fold(iso, raw, true_dice, n_folds=5, seed=0)
        self.radius_ = conformal_quantile(resid, self.coverage)
        self.n_ = int(ok.sum())
        return self

    def predict_dice(self, raw) -> np.ndarray:
        return np.interp(np.asarray(raw, float), self.dice_x_, self.dice_y_)

    def predict_pass(self, raw) -> np.ndarray:
        """P(Dice ≥ τ)."""
        return np.interp(np.asarray(raw, float), self.pass_x_, self.pass_y_)

    def interval(self, raw) -> tuple[np.ndarray, np.ndarray]:
        d = self.predict_dice(raw)
        return np.clip(d - self.radius_, 0, 1), np.clip(d + self.radius_, 0, 1)

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        arrays = {k: getattr(self, k) for k in ("dice_x_", "dice_y_", "pass_x_", "pass_y_")}
        return arrays, {"tau": self.tau, "coverage": self.coverage, "radius_": self.radius_, "n_": self.n_}

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], config: dict) -> DiceCalibrator:
        """Rebuild from `state`, refusing state that would fail or answer nonsense only at predict time."""
        cal = cls(tau=float(config["tau"]), coverage=float(config["coverage"]))
        cal.radius_, cal.n_ = float(config["radius_"]), int(config["n_"])
        if not (0 < cal.tau < 1 and 0 < cal.coverage < 1 and 0 <= cal.radius_ <= 1):
            raise ValueError(f"calibrator needs tau and coverage in (0, 1) and a radius in [0, 1], got tau={cal.tau}, "
                             f"coverage={cal.coverage}, radius={cal.radius_}")
        for x, y in (("dice_x_", "dice_y_"), ("pass_x_", "pass_y_")):
            xs, ys = (np.asarray(arrays.get(k, []), float) for k in (x, y))
            # np.interp needs non-empty, increasing breakpoints; isotonic values lie in [0, 1]
            if not (xs.ndim == 1 and xs.size and xs.shape == ys.shape and np.all(np.diff(xs) >= 0)
                    and np.isfinite(xs).all() and np.all((ys >= 0) & (ys <= 1))):
                raise ValueError(f"calibrator arrays {x} / {y} must be equal-length 1-D breakpoints, increasing "
                                 "and finite, with values in [0, 1]")
            setattr(cal, x, xs)
            setattr(cal, y, ys)
        return cal
