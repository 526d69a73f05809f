"""Fusion: one answer from several QC methods.

Methods fail on different cases (a feature regressor trusts agreement with segqc's own
segmenter, a CNN looks at the image and mask directly), so their calibrated Dice
estimates carry partly independent errors and a weighted mean ranks cases better than
either alone. The fused raw score is a weighted mean of the members' calibrated Dice
(stacking: non-negative least squares, weights summing to one, so a weak member gets
little weight); it is then calibrated like any method (isotonic Dice, P(Dice ≥ τ),
conformal interval) on the same held-out reference pairs.

To keep the weights and the fusion calibrator from learning on scores that were
themselves fitted on those pairs, they are fitted on out-of-fold member calibrations
(5 folds); at predict time the members' full calibrators are used.
"""

from __future__ import annotations

import numpy as np

from segqc.calibration.calibrator import DiceCalibrator

__all__ = ["FUSION", "Fusion"]

# the name under which the fused answer appears in bundles, rows and tables
FUSION = "fusion"


def _out_of_fold_calibrated(raw: np.ndarray, true: np.ndarray, tau: float, n_folds: int = 5) -> np.ndarray:
    """Each pair's calibrated Dice by a `DiceCalibrator` fitted on the other folds."""
    from segqc.calibration.crossfit import DiceRegressor, out_of_fold

    return out_of_fold(DiceRegressor(DiceCalibrator(tau=tau)), raw, true, n_folds=n_folds, seed=0)


class Fusion:
    """Weighted mean of member methods' calibrated Dice, recalibrated on held-out reference pairs.

    Args:
        members: names of the fused methods (each has its own calibrator in the bundle).
        tau: pass threshold on Dice.
        coverage: nominal coverage of the conformal interval.
    """

    def __init__(self, members: list[str], *, tau: float = 0.8, coverage: float = 0.9):
        if len(members) < 2:
            raise ValueError(f"fusion needs at least two methods, got {members}")
        self.members = list(members)
        self.tau = tau
        self.coverage = coverage

    def fit(self, raw_by_member: dict[str, np.ndarray], true_dice: np.ndarray, groups=None) -> "Fusion":
        """``groups``: each pair's group for the calibrator's systematic error (`DiceCalibrator.fit`)."""
        true = np.asarray(true_dice, float)
        ok = np.isfinite(true) & np.all([np.isfinite(raw_by_member[m]) for m in self.members], axis=0)
        from scipy.optimize import nnls

        oof = np.stack([_out_of_fold_calibrated(np.asarray(raw_by_member[m], float)[ok], true[ok], self.tau)
                        for m in self.members], axis=1)
        w = nnls(oof, true[ok])[0]
        self.weights_ = w / w.sum() if w.sum() > 0 else np.full(len(self.members), 1.0 / len(self.members))
        fused = oof @ self.weights_
        kept = [g for g, keep in zip(groups, ok) if keep] if groups is not None else None
        self.calibrator_ = DiceCalibrator(tau=self.tau, coverage=self.coverage).fit(fused, true[ok], kept)
        # how the fused score (built from out-of-fold calibrations) follows true Dice: comparable
        # with the members' raw r on the same pairs, so `segqc fit` can pick a default fairly
        self.heldout_pearson_ = float(np.corrcoef(fused, true[ok])[0, 1]) if np.std(fused) > 0 else float("nan")
        return self

    def fused_raw(self, calibrated_by_member: dict[str, float]) -> float:
        """The fused score from each member's calibrated Dice."""
        return float(sum(w * calibrated_by_member[m] for m, w in zip(self.members, self.weights_)))

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        arrays, config = self.calibrator_.state()
        return arrays, {"members": self.members, "weights": self.weights_.tolist(), "calibration": config}

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], config: dict) -> Fusion:
        cal = DiceCalibrator.from_state(arrays, config["calibration"])
        fusion = cls(config["members"], tau=cal.tau, coverage=cal.coverage)
        weights = np.asarray(config["weights"], float)
        if weights.shape != (len(fusion.members),) or not np.all((weights >= 0) & (weights <= 1)):
            raise ValueError(f"fusion needs one weight in [0, 1] per member {fusion.members}, got {config['weights']}")
        fusion.calibrator_, fusion.weights_ = cal, weights
        return fusion
