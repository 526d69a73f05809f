"""Raw QC scores → calibrated Dice, P(Dice ≥ τ) and a conformal interval.

Fitted on held-out reference cases (never on the cases being judged):

* `DiceCalibrator`: isotonic regression raw → true Dice (monotone, so it keeps the
  method's ranking and only fixes its scale);
* P(Dice ≥ τ): isotonic regression raw → 1[Dice ≥ τ], a monotone probability;
* systematic error: how far the mean calibrated Dice of a whole group of pairs (one
  model's masks, one site's) strays from its true mean when that group, and every group
  its network(s) made (`source_family`), was left out of the fit — a conformal bound over
  groups. Averaging a batch removes the cases' own
  noise, not this error, so a batch's mean Dice interval must carry it
  (`segqc.calibration.population`);
* batch correction (when the method describes its candidates): the cross-fitted residuals
  and the pairs' descriptors, from which a batch's mean is corrected for where its
  candidates lie (`segqc.calibration.batch_correction`);
* interval: the conformal radius of cross-fitted |true − calibrated| residuals, plus the
  systematic error. A case's error is its own noise plus its group's systematic error.
  The radius alone covers the first, at the stated level, only for cases exchangeable
  with the calibration pairs, where each group's error has been fitted away. The cases
  segqc judges come from a model and a site it was not calibrated on. With both parts, a
  case is missed only if its noise exceeds the radius (probability 1 − coverage) or its
  group's error exceeds the bound (5 %), so coverage stays above `coverage` − 0.05 for
  a new group, and above `coverage` for exchangeable cases.
  The radius is conformal within bins of the calibrated Dice (Mondrian conformal
  prediction), each of at least `MIN_BIN_PAIRS` pairs: QC's errors are not the same size
  at every level (a mask judged 0.95 is rarely 0.5, one judged 0.5 may be anything), and
  one radius for all would be too wide for the first and too narrow for the second. Each
  bin's radius covers its own cases at the stated level; fewer pairs make one bin.

State is a few arrays (isotonic breakpoints) rebuilt into interpolators on load.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DiceCalibrator", "conformal_quantile", "cross_fitted_residuals", "dice_bins", "group_bound",
           "group_errors", "source_family"]

# a batch's mean Dice interval is at 95 %: the systematic bound is the same level over groups
GROUP_COVERAGE = 0.95
# groups smaller than this are too noisy to say what a group's mean error is
MIN_GROUP = 10
# a bin of the interval's radius holds at least this many pairs: the coverage of a 90 % conformal radius from
# n pairs spreads by sqrt(0.9 × 0.1 / n), 0.017 at 300
MIN_BIN_PAIRS = 300


def conformal_quantile(residuals: np.ndarray, coverage: float) -> float:
    """Split-conformal radius: the ⌈(n+1)·coverage⌉-th smallest |residual|."""
    r = np.sort(np.abs(np.asarray(residuals, dtype=float)))
    n = len(r)
    if n == 0:
        return 1.0
    k = int(np.ceil((n + 1) * coverage))
    return float(r[min(k, n) - 1]) if k <= n else 1.0


def source_family(group: str) -> str:
    """The network(s) that made a group of calibration pairs, from the group's source name
    (`segqc.pipeline.training_pairs`): one fold network of segqc's segmenter for its snapshots
    (``segmenter:fold1_ep34`` → ``segmenter:fold1``), its networks at the simulated sites
    (``segmenter:site2`` → ``segmenter:sites``), one outsider architecture's networks, at their
    snapshots, finals and sites alike (``outsider:segresnet_site1`` → ``outsider:segresnet``); any
    other source is its own family (``user_model``, ``manifest``)."""
    kind, _, tag = group.partition(":")
    if kind == "segmenter" and tag:
        return "segmenter:sites" if tag.startswith("site") else f"segmenter:{tag.split('_')[0]}"
    if kind == "outsider" and tag:
        return f"outsider:{tag.split('_')[0]}"
    return group


def group_errors(raw: np.ndarray, true_dice: np.ndarray, groups) -> dict[str, float]:
    """Per group, mean isotonic-calibrated Dice minus true mean Dice, the group's whole family (`source_family`)
    left out of the fit.

    A model segqc judges is none of the networks that made its calibration pairs. Left out alone, a
    snapshot of a fold network would still be calibrated by that network's other snapshots, and one
    outsider site by the same outsider at the others: the error would be the one of a model segqc had
    met (on Kvasir the bound was 0.064 that way, 0.073 with families left out: README, "Strong models
    underestimated in distribution").

    ``groups`` names each pair's group (``None`` for pairs that are no group, e.g.
    synthetic corruptions: they are fitted on, never a left-out group). Groups of fewer
    than `MIN_GROUP` pairs are skipped, as are groups whose family leaves fewer than `MIN_GROUP` pairs.
    """
    from sklearn.isotonic import IsotonicRegression

    raw, true_dice = np.asarray(raw, float), np.asarray(true_dice, float)
    g = np.asarray([x if x is not None else "" for x in groups], dtype=object)
    family = np.asarray([source_family(x) if x else "" for x in g.tolist()], dtype=object)
    out = {}
    for name in sorted(set(g.tolist()) - {""}):
        held = g == name
        rest = family != source_family(name)
        if held.sum() < MIN_GROUP or rest.sum() < MIN_GROUP:
            continue
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(raw[rest], true_dice[rest])
        out[str(name)] = float(iso.predict(raw[held]).mean() - true_dice[held].mean())
    return out


def group_bound(errors) -> float:
    """The conformal `GROUP_COVERAGE` bound on |group error| (NaN without groups).

    With fewer groups than that bound needs (19 for 95 %) it is the largest error seen,
    an optimistic bound; the calibrator's ``n_groups_`` says how many there were.
    """
    e = np.abs(np.asarray(errors, float))
    if not e.size:
        return float("nan")
    if np.ceil((e.size + 1) * GROUP_COVERAGE) > e.size:  # conformal_quantile would say 1: no bound at all
        return float(e.max())
    return conformal_quantile(e, GROUP_COVERAGE)


def cross_fitted_residuals(raw: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``y`` minus the isotonic map of ``raw`` to ``y`` fitted without it (5-fold cross-fitting): in-sample
    residuals are too small, and would make the interval under-cover and the batch correction too weak."""
    from sklearn.isotonic import IsotonicRegression

    from segqc.calibration.crossfit import out_of_fold

    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
    return y - out_of_fold(iso, raw, y, n_folds=5, seed=0)


def dice_bins(dice: np.ndarray, min_pairs: int = MIN_BIN_PAIRS) -> np.ndarray:
    """Inner edges of bins of equal counts of ``dice``, each of at least ``min_pairs`` values (none: one bin).
    Tied values (isotonic plateaus) never straddle an edge, so a bin may hold more."""
    dice = np.asarray(dice, float)
    k = len(dice) // min_pairs
    if k < 2:
        return np.empty(0)
    edges = np.unique(np.quantile(dice, np.arange(1, k) / k))
    # a plateau can pile values on one edge: merge the shortest bin into its upper neighbour (the last into its
    # lower one) until none is short
    while edges.size:
        counts = np.bincount(np.digitize(dice, edges), minlength=edges.size + 1)
        if counts.min() >= min_pairs:
            break
        edges = np.delete(edges, min(int(np.argmin(counts)), edges.size - 1))
    return edges


def _isotonic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(x, y)
    return np.asarray(iso.X_thresholds_, float), np.asarray(iso.y_thresholds_, float)


class DiceCalibrator:
    """Monotone map from a method's raw score to Dice, P(Dice ≥ τ) and an interval.

    Args:
        tau: the Dice a segmentation must reach to pass.
        coverage: nominal coverage of the conformal radius on cases like the calibration pairs;
            the interval adds the systematic error for models and sites it was not calibrated on.
    """

    def __init__(self, *, tau: float = 0.8, coverage: float = 0.9):
        self.tau = tau
        self.coverage = coverage

    def fit(self, raw: np.ndarray, true_dice: np.ndarray, groups=None, descriptors: np.ndarray | None = None,
            names=None) -> "DiceCalibrator":
        """Fit on held-out pairs; ``groups`` (one name per pair, ``None`` for no group) gives the
        systematic error bound (`group_errors`), NaN without groups; ``descriptors`` (one row per
        pair, columns ``names``) the batch correction (`correction_`, None without)."""
        raw, true_dice = np.asarray(raw, float), np.asarray(true_dice, float)
        ok = np.isfinite(raw) & np.isfinite(true_dice)
        if ok.sum() < 10:
            raise ValueError(f"calibration needs at least 10 held-out cases with finite scores, got {int(ok.sum())}")
        if not 0 < self.tau < 1 or not 0 < self.coverage < 1:
            raise ValueError(f"tau and coverage must lie in (0, 1), got tau={self.tau}, coverage={self.coverage}")
        kept = [g for g, keep in zip(groups, ok) if keep] if groups is not None else None
        described = np.asarray(descriptors, float)[ok] if descriptors is not None else None
        raw, true_dice = raw[ok], true_dice[ok]
        self.dice_x_, self.dice_y_ = _isotonic(raw, true_dice)
        self.pass_x_, self.pass_y_ = _isotonic(raw, (true_dice >= self.tau).astype(float))
        resid = cross_fitted_residuals(raw, true_dice)
        self.radius_ = conformal_quantile(resid, self.coverage)
        dice = self.predict_dice(raw)
        self.bin_edges_ = dice_bins(dice)
        bins = np.digitize(dice, self.bin_edges_)
        self.bin_radii_ = np.array([conformal_quantile(resid[bins == b], self.coverage)
                                    for b in range(self.bin_edges_.size + 1)])
        self.correction_ = None
        if described is not None:
            from segqc.calibration.batch_correction import BatchCorrection

            self.correction_ = BatchCorrection().fit(described, resid, names)
        self.n_ = int(ok.sum())
        errors = list(group_errors(raw, true_dice, kept).values()) if kept is not None else []
        self.systematic_, self.n_groups_ = group_bound(errors), len(errors)
        return self

    def predict_dice(self, raw) -> np.ndarray:
        return np.interp(np.asarray(raw, float), self.dice_x_, self.dice_y_)

    def predict_pass(self, raw) -> np.ndarray:
        """P(Dice ≥ τ)."""
        return np.interp(np.asarray(raw, float), self.pass_x_, self.pass_y_)

    @property
    def half_widths_(self) -> np.ndarray:
        """The interval's half width in each bin of calibrated Dice (`bin_edges_`): that bin's conformal radius
        plus the systematic error (when known)."""
        return self.bin_radii_ + (0.0 if np.isnan(self.systematic_) else self.systematic_)

    def half_width(self, raw) -> np.ndarray:
        """Each case's interval half width, from the bin its calibrated Dice falls in."""
        return self._half_width_at(self.predict_dice(raw))

    def _half_width_at(self, dice: np.ndarray) -> np.ndarray:
        return self.half_widths_[np.digitize(dice, self.bin_edges_)]

    def interval(self, raw) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated Dice ± `half_width`, within [0, 1]."""
        d = self.predict_dice(raw)
        h = self._half_width_at(d)
        return np.clip(d - h, 0, 1), np.clip(d + h, 0, 1)

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        arrays = {k: getattr(self, k) for k in ("dice_x_", "dice_y_", "pass_x_", "pass_y_", "bin_edges_", "bin_radii_")}
        correction = None
        if getattr(self, "correction_", None) is not None:
            more, correction = self.correction_.state()
            arrays |= {f"correction_{k}": v for k, v in more.items()}
        return arrays, {"tau": self.tau, "coverage": self.coverage, "radius_": self.radius_, "n_": self.n_,
                        "systematic_": None if np.isnan(self.systematic_) else self.systematic_,
                        "n_groups_": self.n_groups_, "correction": correction}

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], config: dict) -> DiceCalibrator:
        """Rebuild from `state`, refusing state that would fail or answer nonsense only at predict time."""
        cal = cls(tau=float(config["tau"]), coverage=float(config["coverage"]))
        cal.radius_, cal.n_ = float(config["radius_"]), int(config["n_"])
        systematic = config.get("systematic_")  # absent in bundles fitted without groups
        cal.systematic_ = float("nan") if systematic is None else float(systematic)
        cal.n_groups_ = int(config.get("n_groups_", 0))
        if not (0 < cal.tau < 1 and 0 < cal.coverage < 1 and 0 <= cal.radius_ <= 1
                and (np.isnan(cal.systematic_) or 0 <= cal.systematic_ <= 1)):
            raise ValueError(f"calibrator needs tau and coverage in (0, 1), a radius and a systematic error in [0, 1], "
                             f"got tau={cal.tau}, coverage={cal.coverage}, radius={cal.radius_}, "
                             f"systematic error={cal.systematic_}")
        for x, y in (("dice_x_", "dice_y_"), ("pass_x_", "pass_y_")):
            xs, ys = (np.asarray(arrays.get(k, []), float) for k in (x, y))
            # np.interp needs non-empty, increasing breakpoints; isotonic values lie in [0, 1]
            if not (xs.ndim == 1 and xs.size and xs.shape == ys.shape and np.all(np.diff(xs) >= 0)
                    and np.isfinite(xs).all() and np.all((ys >= 0) & (ys <= 1))):
                raise ValueError(f"calibrator arrays {x} / {y} must be equal-length 1-D breakpoints, increasing "
                                 "and finite, with values in [0, 1]")
            setattr(cal, x, xs)
            setattr(cal, y, ys)
        # bundles fitted before the bins have one radius
        cal.bin_edges_ = np.asarray(arrays.get("bin_edges_", np.empty(0)), float)
        cal.bin_radii_ = np.asarray(arrays.get("bin_radii_", [cal.radius_]), float)
        if not (cal.bin_edges_.ndim == cal.bin_radii_.ndim == 1 and cal.bin_radii_.size == cal.bin_edges_.size + 1
                and np.all(np.diff(cal.bin_edges_) > 0) and np.all((cal.bin_radii_ >= 0) & (cal.bin_radii_ <= 1))):
            raise ValueError("calibrator interval bins must be increasing edges and one radius in [0, 1] per bin")
        cal.correction_ = None  # absent in bundles fitted before it, or by a method that does not describe
        if config.get("correction") is not None:
            from segqc.calibration.batch_correction import BatchCorrection

            state = {k: arrays.get(f"correction_{k}") for k in ("descriptors", "residuals")}
            if any(v is None for v in state.values()):
                raise ValueError("calibrator names a batch correction but its arrays are missing")
            cal.correction_ = BatchCorrection.from_state(state, config["correction"])
        return cal
