"""Cross-fitting for calibration: out-of-fold predictions with scikit-learn's `cross_val_predict`.

The folds are segqc's fixed ones (case ``i`` in fold ``i % n_folds``, the assignment then
shuffled by ``numpy.random.default_rng(seed)``), given to scikit-learn as a
`PredefinedSplit`, so bundles fitted before and after this module answer the same.

Imported when fitting only: scikit-learn takes seconds to import.
"""

from __future__ import annotations

import copy

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.model_selection import PredefinedSplit, cross_val_predict

__all__ = ["cross_fit_folds", "out_of_fold", "DiceRegressor"]


def cross_fit_folds(n: int, n_folds: int = 5, seed: int = 0) -> PredefinedSplit:
    """The folds of ``n`` cases: case ``i`` in fold ``i % n_folds``, the assignment shuffled with ``seed``."""
    folds = np.arange(n) % n_folds
    np.random.default_rng(seed).shuffle(folds)
    return PredefinedSplit(folds)


def out_of_fold(estimator, x: np.ndarray, y: np.ndarray, n_folds: int = 5, seed: int = 0) -> np.ndarray:
    """Each case's prediction by ``estimator`` fitted on the other folds (`cross_fit_folds`)."""
    return cross_val_predict(estimator, x, y, cv=cross_fit_folds(len(x), n_folds, seed))


class DiceRegressor(BaseEstimator):
    """A Dice calibrator (``fit(raw, true)``, ``predict_dice(raw)``, e.g. an unfitted `DiceCalibrator`)
    as a scikit-learn regressor; each ``fit`` fits a copy, so the given calibrator stays unfitted."""

    def __init__(self, calibrator=None):
        self.calibrator = calibrator

    def fit(self, x: np.ndarray, y: np.ndarray) -> "DiceRegressor":
        self.calibrator_ = copy.deepcopy(self.calibrator).fit(x, y)
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.calibrator_.predict_dice(x)
