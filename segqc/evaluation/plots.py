"""Plots of QC accuracy (matplotlib, Agg canvas, PNG files): predicted vs true Dice,
risk–coverage, reliability diagram. The numbers come from `segqc.evaluation.scores`."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from segqc.evaluation.scores import (
    as_1d,
    aurc,
    calibration_bins,
    check_same_length,
    check_tau,
    drop_nan_pairs,
    eaurc,
    expected_calibration_error,
    risk_coverage_curve,
)

__all__ = ["plot_scatter", "plot_risk_coverage", "plot_calibration"]


def _new_figure(figsize: tuple[float, float] = (5.0, 5.0)) -> Any:
    """A matplotlib Figure on the Agg canvas, without touching pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, format="png")
    return path


def plot_scatter(
    true_dice: ArrayLike,
    pred_dice: ArrayLike,
    path: str | Path,
    groups: Sequence[Hashable] | None = None,
    tau: float = 0.8,
    title: str = "",
) -> Path:
    """Scatter of predicted vs true Dice with the identity line and ``tau`` lines; PNG at ``path``.

    Points in the lower-right / upper-left quadrants formed by the ``tau`` lines are
    wrong pass/fail calls. One colour per group. NaN pairs are dropped.
    """
    tau = check_tau(tau)
    t, p = as_1d(true_dice, "true_dice"), as_1d(pred_dice, "pred_dice")
    named = [("true_dice", t), ("pred_dice", p)]
    labels = None if groups is None else np.asarray([str(g) for g in groups], dtype=object)
    if labels is not None:
        named.append(("groups", labels))
    check_same_length(*named)
    keep = ~(np.isnan(t) | np.isnan(p))

    fig = _new_figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.5", lw=1, ls="--", label="identity")
    ax.axvline(tau, color="tab:red", lw=0.8, ls=":")
    ax.axhline(tau, color="tab:red", lw=0.8, ls=":", label=f"tau = {tau:g}")
    if labels is None:
        ax.scatter(t[keep], p[keep], s=14, alpha=0.7)
    else:
        for name in dict.fromkeys(labels[keep]):
            m = keep & (labels == name)
            ax.scatter(t[m], p[m], s=14, alpha=0.7, label=str(name))
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), xlabel="true Dice", ylabel="predicted Dice", aspect="equal")
    ax.set_title(title or f"predicted vs true Dice (n = {int(keep.sum())})")
    ax.legend(loc="upper left", fontsize="small")
    return _save(fig, path)


def plot_risk_coverage(risk: ArrayLike, confidence: ArrayLike, path: str | Path, title: str = "") -> Path:
    """Risk–coverage curve (selective risk vs coverage) with the optimal curve; PNG at ``path``.

    Drawn as steps whose area is exactly :func:`aurc`; the legend gives AURC for both
    curves (their difference is E-AURC).
    """
    r, c = drop_nan_pairs(risk, confidence, "risk", "confidence")
    fig = _new_figure((6.0, 4.5))
    ax = fig.add_subplot()
    for conf, label, style in ((c, "QC score", "-"), (-r, "optimal", "--")):
        cov, sel, _ = risk_coverage_curve(r, conf)
        if cov.size:
            ax.step(np.r_[0.0, cov], np.r_[sel[0], sel], where="pre", ls=style,
                    label=f"{label} (AURC = {aurc(r, conf):.3f})")
    ax.set(xlim=(0, 1), xlabel="coverage", ylabel="selective risk (mean 1 − Dice)")
    ax.set_ylim(bottom=0)
    if not title and r.size:
        title = f"risk–coverage (n = {r.size}, E-AURC = {eaurc(r, c):.3f})"
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize="small")
    return _save(fig, path)


def plot_calibration(
    true_dice: ArrayLike, p_pass: ArrayLike, path: str | Path, tau: float = 0.8, n_bins: int = 10
) -> Path:
    """Reliability diagram of ``p_pass`` against the observed rate of Dice >= ``tau``; PNG at ``path``.

    Bars are the observed pass rate per equal-width bin, dots the mean predicted
    probability in the bin; a calibrated predictor has bars on the diagonal.
    """
    counts, mean_p, frac_pass = calibration_bins(true_dice, p_pass, tau, n_bins)
    ece = expected_calibration_error(true_dice, p_pass, tau, n_bins)
    width = 1.0 / n_bins
    left = np.arange(n_bins) * width
    used = counts > 0

    fig = _new_figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.5", lw=1, ls="--", label="perfect calibration")
    ax.bar(left[used], frac_pass[used], width=width, align="edge", edgecolor="k", alpha=0.6, label="observed")
    ax.scatter(mean_p[used], frac_pass[used], color="tab:red", s=16, zorder=3, label="mean p in bin")
    for x, y, k in zip(left[used], frac_pass[used], counts[used]):
        ax.annotate(str(int(k)), (x + width / 2, y), ha="center", va="bottom", fontsize="x-small")
    ax.set(xlim=(0, 1), ylim=(0, 1.05), aspect="equal", xlabel="predicted P(pass)",
           ylabel=f"observed fraction Dice ≥ {tau:g}")
    ece_txt = "nan" if math.isnan(ece) else f"{ece:.3f}"
    ax.set_title(f"reliability (n = {int(counts.sum())}, ECE = {ece_txt})")
    ax.legend(loc="upper left", fontsize="small")
    return _save(fig, path)
