"""How good are QC predictions? Numbers (`scores`), rich tables (`tables`) and plots (`plots`).

``from segqc import evaluation as ev`` gives the numbers and the plots: ``ev.evaluate``,
``ev.pearson``, ``ev.plot_scatter``...; the tables are in `segqc.evaluation.tables`.
"""

from segqc.evaluation.plots import plot_calibration, plot_risk_coverage, plot_scatter
from segqc.evaluation.scores import (
    METRIC_KEYS,
    aupr_fail,
    aurc,
    auroc_fail,
    eaurc,
    evaluate,
    expected_calibration_error,
    mae,
    pearson,
    risk_coverage_curve,
    sensitivity_specificity,
    spearman,
)

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
    "plot_scatter",
    "plot_risk_coverage",
    "plot_calibration",
]
