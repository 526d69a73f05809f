"""How good are QC predictions? Metrics that compare predicted scores with the true Dice.

Conventions used throughout:

* Argument order follows scikit-learn: ``(y_true, y_score)``, i.e. true Dice first.
* Inputs are 1-D array-likes of equal length. Pairs that contain a NaN are dropped
  before a metric is computed (``evaluate`` reports how many).
* A case *fails* when its true Dice is below ``tau`` (default 0.8); failure is the
  positive class for AUROC / AUPR / sensitivity.
* Quality scores (predicted Dice, pass probability) are "higher is better".
* A metric that is undefined on the given data (one class only, constant input, too
  few points) is ``nan``; ``evaluate`` turns ``nan`` into ``None`` so that its result
  is JSON-serialisable.

The input checks (`as_1d`, `check_same_length`, `drop_nan_pairs`, `check_tau`) and
`calibration_bins` are shared with `segqc.evaluation.plots`; they are not re-exported
by `segqc.evaluation`.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "pearson",
    "spearman",
    "mae",
    "auroc_fail",
    "aupr_fail",
    "sensitivity_specificity",
    "risk_coverage_curve",
    "aurc",
    "eaurc",
    "expected_calibration_error",
    "evaluate",
    "METRIC_KEYS",
]

#: Keys of one row of ``evaluate(...)["overall"]`` / ``["groups"][name]``, in table order.
METRIC_KEYS: tuple[str, ...] = (
    "n",
    "n_dropped_nan",
    "pearson",
    "spearman",
    "mae",
    "auroc",
    "aupr",
    "sensitivity",
    "specificity",
    "aurc",
    "eaurc",
    "ece",
    "mean_true_dice",
    "mean_pred_dice",
    "frac_fail_true",
)


# --------------------------------------------------------------------------- input checks


def as_1d(x: ArrayLike, name: str, dtype: Any = float) -> np.ndarray:
    """``x`` as a 1-D array of ``dtype``; ValueError naming ``name`` otherwise."""
    arr = np.asarray(x, dtype=dtype)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def check_same_length(*named: tuple[str, np.ndarray]) -> None:
    """ValueError unless every ``(name, array)`` has the length of the first."""
    (name0, a0), *rest = named
    for name, a in rest:
        if len(a) != len(a0):
            raise ValueError(f"{name0} and {name} must have the same length, got {len(a0)} and {len(a)}")


def drop_nan_pairs(a: ArrayLike, b: ArrayLike, name_a: str, name_b: str) -> tuple[np.ndarray, np.ndarray]:
    """Two float arrays of equal length with every pair containing a NaN removed."""
    x, y = as_1d(a, name_a), as_1d(b, name_b)
    check_same_length((name_a, x), (name_b, y))
    keep = ~(np.isnan(x) | np.isnan(y))
    return x[keep], y[keep]


def check_tau(tau: float) -> float:
    """``tau`` as a float; ValueError unless it is a Dice threshold in [0, 1]."""
    tau = float(tau)
    if not (0.0 <= tau <= 1.0):
        raise ValueError(f"tau must be a Dice threshold in [0, 1], got {tau}")
    return tau


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if x.size else math.nan


def _is_constant(x: np.ndarray) -> bool:
    return bool(np.all(x == x[0]))


# --------------------------------------------------------------------------- regression


def pearson(true_dice: ArrayLike, pred_dice: ArrayLike) -> float:
    """Pearson correlation between true and predicted Dice (linear agreement).

    ``nan`` with fewer than 2 points or when either input is constant.
    """
    t, p = drop_nan_pairs(true_dice, pred_dice, "true_dice", "pred_dice")
    if t.size < 2 or _is_constant(t) or _is_constant(p):
        return math.nan
    tc, pc = t - t.mean(), p - p.mean()
    r = float(np.sum(tc * pc) / math.sqrt(float(np.sum(tc * tc)) * float(np.sum(pc * pc))))
    return max(-1.0, min(1.0, r))


def spearman(true_dice: ArrayLike, pred_dice: ArrayLike) -> float:
    """Spearman rank correlation (does the score *rank* cases right?); ties get average ranks.

    ``nan`` with fewer than 2 points or when either input is constant.
    """
    from scipy.stats import rankdata

    t, p = drop_nan_pairs(true_dice, pred_dice, "true_dice", "pred_dice")
    if t.size < 2 or _is_constant(t) or _is_constant(p):
        return math.nan
    return pearson(rankdata(t), rankdata(p))


def mae(true_dice: ArrayLike, pred_dice: ArrayLike) -> float:
    """Mean absolute error between true and predicted Dice; ``nan`` when empty."""
    t, p = drop_nan_pairs(true_dice, pred_dice, "true_dice", "pred_dice")
    return _mean(np.abs(t - p))


# --------------------------------------------------------------------------- failure detection


def _fail_labels_and_scores(true_dice: ArrayLike, score: ArrayLike, tau: float) -> tuple[np.ndarray, np.ndarray] | None:
    """(failure labels, failure scores) or None when only one class is present."""
    tau = check_tau(tau)
    t, s = drop_nan_pairs(true_dice, score, "true_dice", "score")
    fail = t < tau
    if fail.size == 0 or fail.all() or not fail.any():
        return None
    return fail.astype(int), -s  # higher quality score = less likely failure


def auroc_fail(true_dice: ArrayLike, score: ArrayLike, tau: float = 0.8) -> float:
    """AUROC for detecting failures (true Dice < ``tau`` is positive).

    ``score`` is a quality score, higher = better (e.g. predicted Dice), so failures are
    ranked by ``-score``. 1.0 means every failure scores below every good case; 0.5 is
    chance. ``nan`` when only one class is present.
    """
    from sklearn.metrics import roc_auc_score

    ls = _fail_labels_and_scores(true_dice, score, tau)
    return math.nan if ls is None else float(roc_auc_score(*ls))


def aupr_fail(true_dice: ArrayLike, score: ArrayLike, tau: float = 0.8) -> float:
    """Area under the precision–recall curve for failure detection (average precision).

    Same conventions as :func:`auroc_fail`; unlike AUROC its chance level is the failure
    rate, which makes it informative when failures are rare. ``nan`` with one class only.
    """
    from sklearn.metrics import average_precision_score

    ls = _fail_labels_and_scores(true_dice, score, tau)
    return math.nan if ls is None else float(average_precision_score(*ls))


def sensitivity_specificity(true_dice: ArrayLike, pred_pass: ArrayLike, tau: float = 0.8) -> tuple[float, float]:
    """(sensitivity, specificity) of a pass/flag decision for catching failures.

    A case is *flagged* when ``pred_pass`` is False, or, for float input (a pass
    probability), when it is below 0.5. Sensitivity = flagged failures / failures,
    specificity = passed good cases / good cases (good = true Dice >= ``tau``).
    Each is ``nan`` when its denominator is 0.
    """
    tau = check_tau(tau)
    t = as_1d(true_dice, "true_dice")
    raw = np.asarray(pred_pass)
    if raw.dtype == bool:
        q = as_1d(raw, "pred_pass", dtype=bool)
        check_same_length(("true_dice", t), ("pred_pass", q))
        keep = ~np.isnan(t)
        t, passed = t[keep], q[keep]
    else:
        t, p = drop_nan_pairs(t, raw, "true_dice", "pred_pass")
        passed = p >= 0.5
    fail = t < tau
    n_fail, n_good = int(fail.sum()), int((~fail).sum())
    sens = float(np.sum(fail & ~passed) / n_fail) if n_fail else math.nan
    spec = float(np.sum(~fail & passed) / n_good) if n_good else math.nan
    return sens, spec


# --------------------------------------------------------------------------- risk–coverage


def risk_coverage_curve(risk: ArrayLike, confidence: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points of the risk–coverage curve: ``(coverages, selective_risks, weights)``.

    Cases are sorted by ``confidence``, highest first; the selective risk at coverage
    k/n is the mean ``risk`` of the k most confident cases. Cases with tied confidence
    cannot be separated by any threshold, so a point is only emitted at the end of each
    tie group, and its weight is the group size / n (as fd-shifts does). Coverages are
    ascending and end at 1; ``weights`` sum to 1. NaN pairs are dropped; empty input
    gives empty arrays.
    """
    r, c = drop_nan_pairs(risk, confidence, "risk", "confidence")
    n = r.size
    if n == 0:
        empty = np.empty(0)
        return empty, empty, empty
    order = np.argsort(-c, kind="stable")
    r, c = r[order], c[order]
    ends = np.flatnonzero(np.r_[c[1:] != c[:-1], True])  # last index of each tie group
    k = ends + 1
    selective = np.cumsum(r)[ends] / k
    weights = np.diff(np.r_[0, k]) / n
    return k / n, selective, weights


def aurc(risk: ArrayLike, confidence: ArrayLike) -> float:
    """Area under the risk–coverage curve (lower is better).

    Follows Jaeger et al. 2023 (ICLR, "A call to reflect on evaluation practices for
    failure detection in image classification") as used for segmentation by Zenk et al.
    2024 (MedIA, "Comparative benchmarking of failure detection methods in medical image
    segmentation"), with a *continuous* risk, here typically ``risk = 1 - Dice`` and
    ``confidence = predicted Dice``:

        AURC = (1/n) * sum_{k=1..n} mean(risk of the k most confident cases)

    Ties in confidence are handled deterministically: the selective risk is evaluated only
    at the end of each tie group and weighted by the group size (see
    :func:`risk_coverage_curve`), so the result does not depend on input order.
    ``nan`` when empty.
    """
    _, selective, weights = risk_coverage_curve(risk, confidence)
    return float(np.sum(selective * weights)) if selective.size else math.nan


def eaurc(risk: ArrayLike, confidence: ArrayLike) -> float:
    """Excess AURC: ``aurc(risk, confidence) - aurc(risk, -risk)``.

    The second term is the AURC of the optimal ranking (least risky cases first), which
    depends only on the risk distribution; subtracting it isolates the ranking quality.
    0 for a perfect ranking, >= 0 otherwise (up to rounding). ``nan`` when empty.
    """
    r, c = drop_nan_pairs(risk, confidence, "risk", "confidence")
    return aurc(r, c) - aurc(r, -r)


# --------------------------------------------------------------------------- calibration


def calibration_bins(
    true_dice: ArrayLike, p_pass: ArrayLike, tau: float, n_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width bin on [0, 1]: (count, mean p, observed pass rate); empty bins → nan."""
    tau = check_tau(tau)
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    n_bins = int(n_bins)
    t, p = drop_nan_pairs(true_dice, p_pass, "true_dice", "p_pass")
    bad = p[(p < 0) | (p > 1)]
    if bad.size:
        raise ValueError(f"p_pass must be probabilities in [0, 1], got {bad[0]}")
    # bins [i/B, (i+1)/B), the last one closed so that p = 1 lands in it
    idx = np.minimum((p * n_bins).astype(int), n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(idx, weights=p, minlength=n_bins) / counts
        frac_pass = np.bincount(idx, weights=(t >= tau).astype(float), minlength=n_bins) / counts
    return counts, mean_p, frac_pass


def expected_calibration_error(true_dice: ArrayLike, p_pass: ArrayLike, tau: float = 0.8, n_bins: int = 10) -> float:
    """ECE of a predicted probability of passing, ``p_pass ≈ P(Dice >= tau)``.

    Equal-width bins on p (``[i/B, (i+1)/B)``, last bin closed):
    ``ECE = sum_b (n_b / n) * |mean(p in b) - mean(1[Dice >= tau] in b)|``.
    0 is perfectly calibrated. ``nan`` when empty.
    """
    counts, mean_p, frac_pass = calibration_bins(true_dice, p_pass, tau, n_bins)
    n = counts.sum()
    if n == 0:
        return math.nan
    used = counts > 0
    return float(np.sum(counts[used] / n * np.abs(mean_p[used] - frac_pass[used])))


# --------------------------------------------------------------------------- summary


def _json_float(x: float | int) -> float | int | None:
    """Plain Python number, with nan/inf → None (JSON has no nan)."""
    if isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        return int(x)
    x = float(x)
    return x if math.isfinite(x) else None


def _summary(t: np.ndarray, p: np.ndarray, pp: np.ndarray | None, tau: float, n_dropped: int) -> dict[str, Any]:
    passed = (pp >= 0.5) if pp is not None else (p >= tau)
    sens, spec = sensitivity_specificity(t, passed, tau)
    risk = 1.0 - t
    row: dict[str, float | int] = {
        "n": int(t.size),
        "n_dropped_nan": int(n_dropped),
        "pearson": pearson(t, p),
        "spearman": spearman(t, p),
        "mae": mae(t, p),
        "auroc": auroc_fail(t, p, tau),
        "aupr": aupr_fail(t, p, tau),
        "sensitivity": sens,
        "specificity": spec,
        "aurc": aurc(risk, p),
        "eaurc": eaurc(risk, p),
        "ece": expected_calibration_error(t, pp, tau) if pp is not None else math.nan,
        "mean_true_dice": _mean(t),
        "mean_pred_dice": _mean(p),
        "frac_fail_true": _mean((t < tau).astype(float)),
    }
    return {k: _json_float(row[k]) for k in METRIC_KEYS}


def evaluate(
    true_dice: ArrayLike,
    pred_dice: ArrayLike,
    p_pass: ArrayLike | None = None,
    groups: Sequence[Hashable] | None = None,
    tau: float = 0.8,
) -> dict[str, Any]:
    """All metrics, overall and per group, as a JSON-serialisable dict.

    * ``pred_dice`` is the QC prediction; it is the score for AUROC/AUPR and the
      confidence for AURC/E-AURC (risk = 1 - true Dice).
    * The pass decision for sensitivity/specificity is ``p_pass >= 0.5`` when ``p_pass``
      is given, else ``pred_dice >= tau``; ECE needs ``p_pass`` and is None without it.
    * ``groups`` (one label per case, e.g. model or checkpoint name) adds one row per
      group under ``"groups"``, keyed by ``str(label)`` in order of first appearance.
    * Cases with a NaN in ``true_dice``, ``pred_dice`` or ``p_pass`` are dropped and
      counted in ``n_dropped_nan``. Undefined metrics are None.

    Returns ``{"tau": tau, "overall": {metric: value}, "groups": {name: {metric: value}}}``
    with the metric keys of :data:`METRIC_KEYS`.
    """
    tau = check_tau(tau)
    t = as_1d(true_dice, "true_dice")
    p = as_1d(pred_dice, "pred_dice")
    named = [("true_dice", t), ("pred_dice", p)]
    pp = None
    if p_pass is not None:
        pp = as_1d(p_pass, "p_pass")
        named.append(("p_pass", pp))
    labels: list[str] | None = None
    if groups is not None:
        labels = [str(g) for g in groups]
        named.append(("groups", np.empty(len(labels))))
    check_same_length(*named)

    nan = np.isnan(t) | np.isnan(p)
    if pp is not None:
        nan |= np.isnan(pp)

    def rows(mask: np.ndarray) -> dict[str, Any]:
        keep = mask & ~nan
        return _summary(t[keep], p[keep], pp[keep] if pp is not None else None, tau, int(np.sum(mask & nan)))

    result: dict[str, Any] = {"tau": tau, "overall": rows(np.ones(t.size, dtype=bool)), "groups": {}}
    if labels is not None:
        lab = np.asarray(labels, dtype=object)
        for name in dict.fromkeys(labels):
            result["groups"][name] = rows(lab == name)
    return result
