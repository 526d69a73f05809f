"""Tests for segqc.evaluation; expected values are worked out by hand in the comments."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest

from segqc.evaluation import (
    METRIC_KEYS,
    aupr_fail,
    aurc,
    auroc_fail,
    eaurc,
    evaluate,
    expected_calibration_error,
    mae,
    pearson,
    plot_calibration,
    plot_risk_coverage,
    plot_scatter,
    risk_coverage_curve,
    sensitivity_specificity,
    spearman,
)
from segqc.evaluation.tables import format_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- regression


def test_mae_by_hand():
    # |0.9-0.8| + |0.5-0.6| + |0.7-0.7| = 0.1 + 0.1 + 0 = 0.2 ; / 3 = 0.0667
    assert mae([0.9, 0.5, 0.7], [0.8, 0.6, 0.7]) == pytest.approx(0.2 / 3)


def test_pearson_perfect_linear():
    t = np.array([0.2, 0.5, 0.7, 0.9])
    # pred = 0.5 * t + 0.1 is an exact increasing linear function → r = +1
    assert pearson(t, 0.5 * t + 0.1) == pytest.approx(1.0)
    # a decreasing linear function → r = -1
    assert pearson(t, 1.0 - t) == pytest.approx(-1.0)


def test_spearman_monotone_nonlinear():
    t = np.array([0.1, 0.4, 0.6, 0.9])
    p = t**3  # same ordering (ranks 1,2,3,4 both) → rho = 1, but not linear → r < 1
    assert spearman(t, p) == pytest.approx(1.0)
    assert pearson(t, p) < 0.99
    # reversed order: ranks (1,2,3,4) vs (4,3,2,1) → rho = -1
    assert spearman(t, -p) == pytest.approx(-1.0)


def test_correlations_undefined_are_nan():
    assert math.isnan(pearson([0.5], [0.4]))  # one point
    assert math.isnan(spearman([0.5], [0.4]))
    assert math.isnan(pearson([0.5, 0.7, 0.9], [0.8, 0.8, 0.8]))  # constant prediction
    assert math.isnan(spearman([0.6, 0.6], [0.1, 0.9]))  # constant truth
    assert math.isnan(mae([], []))


# --------------------------------------------------------------------------- failure detection

# tau = 0.8: cases 0 and 1 fail (true Dice 0.5, 0.7), cases 2 and 3 are good (0.85, 0.95)
FD_TRUE = [0.5, 0.7, 0.85, 0.95]
FD_PRED = [0.6, 0.9, 0.8, 0.95]


def test_auroc_known_ranking():
    # failure score = -pred. (failure, good) pairs ranked right iff pred_fail < pred_good:
    #   0.6 < 0.8 ✓   0.6 < 0.95 ✓   0.9 < 0.8 ✗   0.9 < 0.95 ✓   → 3 / 4 = 0.75
    assert auroc_fail(FD_TRUE, FD_PRED, tau=0.8) == pytest.approx(0.75)
    # a perfect ranking gives 1, the reversed one 0
    assert auroc_fail(FD_TRUE, FD_TRUE) == pytest.approx(1.0)
    assert auroc_fail(FD_TRUE, [-x for x in FD_TRUE]) == pytest.approx(0.0)


def test_aupr_known_ranking():
    # ranked by failure score (pred ascending): 0.6 F, 0.8 G, 0.9 F, 0.95 G
    # precision when each failure is reached: rank 1 → 1/1, rank 3 → 2/3
    # AP = (1 + 2/3) / 2 = 5/6
    assert aupr_fail(FD_TRUE, FD_PRED) == pytest.approx(5 / 6)


def test_auroc_aupr_one_class_is_nan():
    assert math.isnan(auroc_fail([0.9, 0.95], [0.1, 0.2]))  # no failures
    assert math.isnan(aupr_fail([0.1, 0.2], [0.1, 0.2]))  # only failures


def test_sensitivity_specificity_bool_and_prob():
    t = [0.5, 0.7, 0.85, 0.95, 0.9]  # failures: 0.5, 0.7 ; goods: 0.85, 0.95, 0.9
    passed = [False, True, False, True, True]
    # flagged failures: 0.5 only → sens = 1/2 ; passed goods: 0.95, 0.9 → spec = 2/3
    sens, spec = sensitivity_specificity(t, passed, tau=0.8)
    assert sens == pytest.approx(0.5)
    assert spec == pytest.approx(2 / 3)
    # same decisions from pass probabilities (flag iff p < 0.5; 0.5 itself passes)
    sens_p, spec_p = sensitivity_specificity(t, [0.1, 0.6, 0.4, 0.9, 0.5], tau=0.8)
    assert (sens_p, spec_p) == pytest.approx((0.5, 2 / 3))
    # no failures → sensitivity undefined
    sens_n, spec_n = sensitivity_specificity([0.9, 0.95], [True, True])
    assert math.isnan(sens_n) and spec_n == 1.0


# --------------------------------------------------------------------------- risk–coverage


def test_aurc_three_cases_step_by_step():
    risk = [0.1, 0.4, 0.2]
    conf = [0.9, 0.5, 0.7]
    # sorted by confidence, highest first: (0.9, r=0.1), (0.7, r=0.2), (0.5, r=0.4)
    # selective risk k=1: 0.1
    #                k=2: (0.1 + 0.2) / 2       = 0.15
    #                k=3: (0.1 + 0.2 + 0.4) / 3 = 0.2333
    # AURC = (0.1 + 0.15 + 0.2333) / 3 = 0.48333 / 3 = 0.161111
    assert aurc(risk, conf) == pytest.approx((0.1 + 0.15 + 0.7 / 3) / 3)
    cov, sel, w = risk_coverage_curve(risk, conf)
    np.testing.assert_allclose(cov, [1 / 3, 2 / 3, 1.0])
    np.testing.assert_allclose(sel, [0.1, 0.15, 0.7 / 3])
    np.testing.assert_allclose(w, [1 / 3, 1 / 3, 1 / 3])
    # the worst ranking: order r = 0.4, 0.2, 0.1 → sel 0.4, 0.3, 0.2333 → AURC = 0.93333 / 3 = 0.311111
    bad = [0.5, 0.9, 0.7]
    assert aurc(risk, bad) == pytest.approx((0.4 + 0.3 + 0.7 / 3) / 3)
    # E-AURC = 0.311111 - 0.161111 (optimal) = 0.15
    assert eaurc(risk, bad) == pytest.approx(0.15)


def test_aurc_ties_are_grouped_and_order_free():
    risk = [0.1, 0.3, 0.5]
    conf = [0.9, 0.9, 0.1]  # first two tied
    # tie group {0.1, 0.3} ends at k=2: selective risk 0.2, weight 2/3
    # group {0.5} ends at k=3:            selective risk 0.3, weight 1/3
    # AURC = 0.2 * 2/3 + 0.3 * 1/3 = 0.23333
    expected = 0.2 * 2 / 3 + 0.3 / 3
    assert aurc(risk, conf) == pytest.approx(expected)
    assert aurc(risk[::-1], conf[::-1]) == pytest.approx(expected)  # input order does not matter


def test_eaurc_zero_for_perfect_ranking():
    true_dice = np.array([0.95, 0.3, 0.8, 0.6, 0.9])
    risk = 1 - true_dice
    # predicted Dice equal to the true Dice, or any increasing transform of it, ranks perfectly
    assert eaurc(risk, true_dice) == pytest.approx(0.0, abs=1e-12)
    assert eaurc(risk, true_dice**2 + 1) == pytest.approx(0.0, abs=1e-12)
    assert eaurc(risk, -true_dice) > 0


# --------------------------------------------------------------------------- calibration


def test_ece_small_example():
    t = [0.5, 0.85, 0.9, 0.7]  # pass (>= 0.8): no, yes, yes, no
    p = [0.2, 0.4, 0.6, 0.9]
    # 2 bins: [0, 0.5) holds p 0.2, 0.4 → mean p 0.3, pass rate 1/2 → |0.3 - 0.5| = 0.2 ; weight 2/4
    #         [0.5, 1] holds p 0.6, 0.9 → mean p 0.75, pass rate 1/2 → |0.75 - 0.5| = 0.25 ; weight 2/4
    # ECE = 0.5 * 0.2 + 0.5 * 0.25 = 0.225
    assert expected_calibration_error(t, p, tau=0.8, n_bins=2) == pytest.approx(0.225)
    # p = 1 falls in the last (closed) bin; a confident, right predictor has ECE 0
    assert expected_calibration_error([0.9, 0.1], [1.0, 0.0]) == pytest.approx(0.0)


def test_ece_rejects_bad_probabilities():
    with pytest.raises(ValueError, match="1.5"):
        expected_calibration_error([0.9], [1.5])
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error([0.9], [0.5], n_bins=0)


# --------------------------------------------------------------------------- evaluate


def test_evaluate_groups_split():
    t = [0.9, 0.5, 0.85, 0.6, 0.7]
    p = [0.8, 0.6, 0.85, 0.4, 0.7]
    g = ["b", "b", "a", "a", "b"]
    res = evaluate(t, p, groups=g, tau=0.8)
    assert list(res["groups"]) == ["b", "a"]  # order of first appearance
    assert res["overall"]["n"] == 5
    assert res["groups"]["b"]["n"] == 3 and res["groups"]["a"]["n"] == 2
    # group b: |0.9-0.8| + |0.5-0.6| + |0.7-0.7| = 0.2 → MAE 0.2/3
    assert res["groups"]["b"]["mae"] == pytest.approx(0.2 / 3)
    # group a: |0.85-0.85| + |0.6-0.4| = 0.2 → MAE 0.1 ; true fail rate 1/2
    assert res["groups"]["a"]["mae"] == pytest.approx(0.1)
    assert res["groups"]["a"]["frac_fail_true"] == pytest.approx(0.5)
    # group a: failure (0.6) has pred 0.4 < good's 0.85 → AUROC 1
    assert res["groups"]["a"]["auroc"] == pytest.approx(1.0)
    # pass decision from pred >= tau: overall failures 0.5, 0.6, 0.7 have pred 0.6, 0.4, 0.7 → all flagged
    # goods 0.9 (pred 0.8, passed), 0.85 (pred 0.85, passed) → sens 1, spec 1
    assert res["overall"]["sensitivity"] == 1.0 and res["overall"]["specificity"] == 1.0
    assert res["overall"]["ece"] is None  # no p_pass
    assert set(res["overall"]) == set(METRIC_KEYS)
    json.dumps(res)  # JSON-serialisable


def test_evaluate_with_p_pass():
    t = [0.5, 0.85, 0.9, 0.7]
    p = [0.6, 0.9, 0.95, 0.85]
    pp = [0.2, 0.4, 0.6, 0.9]
    res = evaluate(t, p, p_pass=pp, tau=0.8)
    # same numbers as test_ece_small_example, but with the default 10 bins:
    # every case alone in its bin → ECE = mean |p - pass| = (0.2 + 0.6 + 0.4 + 0.9) / 4 = 0.525
    assert res["overall"]["ece"] == pytest.approx(0.525)
    # decision p >= 0.5: failures 0.5 (p .2, flagged), 0.7 (p .9, passed) → sens 1/2
    # goods 0.85 (p .4, flagged), 0.9 (p .6, passed) → spec 1/2
    assert res["overall"]["sensitivity"] == pytest.approx(0.5)
    assert res["overall"]["specificity"] == pytest.approx(0.5)


def test_evaluate_drops_nan_pairs():
    t = [0.9, np.nan, 0.5, 0.7, 0.8]
    p = [0.8, 0.6, 0.6, np.nan, 0.8]
    res = evaluate(t, p, groups=["x", "x", "y", "y", "y"])
    assert res["overall"]["n"] == 3 and res["overall"]["n_dropped_nan"] == 2
    assert res["groups"]["x"]["n_dropped_nan"] == 1 and res["groups"]["y"]["n_dropped_nan"] == 1
    # kept pairs (0.9, 0.8), (0.5, 0.6), (0.8, 0.8) → MAE (0.1 + 0.1 + 0) / 3
    assert res["overall"]["mae"] == pytest.approx(0.2 / 3)
    # group x keeps one good case only → correlations and AUROC undefined → None in the dict
    gx = res["groups"]["x"]
    assert gx["n"] == 1 and gx["pearson"] is None and gx["auroc"] is None
    # the plain functions drop NaN pairs the same way
    assert mae(t, p) == pytest.approx(0.2 / 3)
    assert "NaN" not in json.dumps(res)


def test_length_mismatch_raises():
    with pytest.raises(ValueError, match="same length, got 3 and 2"):
        mae([0.1, 0.2, 0.3], [0.1, 0.2])
    with pytest.raises(ValueError, match="groups"):
        evaluate([0.1, 0.2], [0.1, 0.2], groups=["a"])
    with pytest.raises(ValueError, match="tau"):
        auroc_fail([0.1, 0.9], [0.1, 0.9], tau=80)


def test_format_table_renders():
    from rich.console import Console

    res = evaluate([0.9, 0.5, 0.85, 0.6], [0.8, 0.6, 0.85, 0.4], groups=["m1", "m1", "m2", "m2"])
    buf = io.StringIO()
    Console(file=buf, width=300).print(format_table(res))
    text = buf.getvalue()
    assert "overall" in text and "m1" in text and "m2" in text
    assert "0.100" in text  # overall MAE = (0.1 + 0.1 + 0 + 0.2) / 4 = 0.100
    assert "–" in text  # ECE is None


def test_printed_tables(capsys):
    from segqc import evaluation as ev
    from segqc.evaluation import plots, scores, tables

    assert set(ev.__all__) == set(scores.__all__) | set(plots.__all__)  # tables are imported from their module
    res = evaluate([0.9, 0.5, 0.85, 0.6], [0.8, 0.6, 0.85, 0.4], p_pass=[0.9, 0.2, 0.7, 0.1])
    buf = io.StringIO()
    from rich.console import Console

    Console(file=buf, width=300).print(tables.short_table(res, "demo table"))
    assert "demo table" in buf.getvalue() and "0.100" in buf.getvalue()
    tables.print_eval(res, "accuracy title")
    tables.print_dataset({"groups": {"all": {"n": 4, "mean_dice": 0.7, "mean_dice_ci": (0.6, 0.8), "share_pass": 0.5,
                                             "share_pass_ci": (0.25, 0.75), "true_mean_dice": 0.71}},
                          "shift": {"score": 0.9, "expected_in_distribution": 0.05, "warning": "far away"}})
    tables.print_bench({"cases": "cases.csv", "n": 4, "tau": 0.8, "methods": {"features": {
        "overall": res["overall"], "interval_coverage": 0.75, "deployed": {"pearson": None, "mae": 0.1},
        "dataset_level": {"all": {"abs_error_mean_dice": 0.01}, "g": {"abs_error_mean_dice": 0.02}}}}})
    out = capsys.readouterr().out  # on stdout, beside the commands' other output
    assert "accuracy title" in out and "0.600, 0.800" in out and "0.710" in out
    assert "shift score 0.90" in out and "far away" in out
    assert "QC methods on cases.csv (n = 4, tau = 0.8)" in out and "0.750" in out


# --------------------------------------------------------------------------- plots


def _assert_png(path) -> None:
    data = path.read_bytes()
    assert len(data) > 100 and data[:8] == PNG_MAGIC


def test_plots_write_png(tmp_path):
    rng = np.random.default_rng(0)
    t = rng.uniform(0.3, 1.0, 20)
    p = np.clip(t + rng.normal(0, 0.1, 20), 0, 1)
    groups = ["a"] * 10 + ["b"] * 10
    out = plot_scatter(t, p, tmp_path / "scatter.png", groups=groups, title="test")
    _assert_png(out)
    _assert_png(plot_scatter(t, p, tmp_path / "scatter_nogroup.png"))
    _assert_png(plot_risk_coverage(1 - t, p, tmp_path / "sub" / "rc.png"))
    _assert_png(plot_calibration(t, p, tmp_path / "calib.png", tau=0.8, n_bins=5))
