"""The batch's mean Dice corrected by the calibration pairs that look like its candidates."""

import numpy as np
import pytest

from segqc.calibration.batch_correction import BatchCorrection
from segqc.calibration.calibrator import DiceCalibrator
from segqc.calibration.population import estimate_groups

NAMES = ["a", "b", "c"]


def two_families(rng, n=300):
    """Pairs of family A (descriptors near 0) the map leaves 0.1 too low, of family B (near 3) 0.1 too high."""
    a = rng.normal(0, 1, (n, 3))
    b = rng.normal(3, 1, (n, 3))
    resid = np.r_[np.full(n, 0.1), np.full(n, -0.1)] + rng.normal(0, 0.05, 2 * n)
    return np.vstack([a, b]), resid


def test_a_batch_inherits_the_error_of_the_pairs_it_looks_like():
    rng = np.random.default_rng(0)
    x, resid = two_families(rng)
    bc = BatchCorrection().fit(x, resid, NAMES)
    like_a = bc.correct(rng.normal(0, 1, (60, 3)))
    like_b = bc.correct(rng.normal(3, 1, (60, 3)))
    like_all = bc.correct(np.vstack([rng.normal(0, 1, (30, 3)), rng.normal(3, 1, (30, 3))]))
    assert like_a["correction"] > 0.06 and like_b["correction"] < -0.06
    assert abs(like_all["correction"]) < 0.03
    assert 1 <= like_a["effective_pairs"] <= len(x) and like_a["n"] == 60 and like_a["calibration_pairs"] == len(x)
    # the weights it rests on: a share per pair, most of it on the family the batch looks like
    w = bc.weights(rng.normal(0, 1, (60, 3)))
    assert w.shape == (len(x),) and w.min() >= 0 and w.sum() == pytest.approx(1.0) and w[: len(x) // 2].sum() > 0.8


def test_a_map_right_everywhere_is_not_corrected_whatever_the_batch():
    rng = np.random.default_rng(1)
    x, _ = two_families(rng)
    bc = BatchCorrection().fit(x, rng.normal(0, 0.05, len(x)), NAMES)
    assert abs(bc.correct(rng.normal(3, 1, (60, 3)))["correction"]) < 0.02


def test_small_batches_missing_numbers_and_wrong_shapes():
    rng = np.random.default_rng(2)
    x, resid = two_families(rng)
    x[::7, 1] = np.nan  # a feature a candidate did not have: the pairs' median stands in
    bc = BatchCorrection(min_batch=10).fit(x, resid, NAMES)
    assert bc.correct(rng.normal(0, 1, (9, 3))) is None
    batch = rng.normal(0, 1, (20, 3))
    batch[:, 2] = np.nan
    assert np.isfinite(bc.correct(batch)["correction"])
    with pytest.raises(ValueError, match="3 descriptors"):
        bc.correct(rng.normal(0, 1, (20, 2)))
    with pytest.raises(ValueError, match="one row"):
        BatchCorrection().fit(x[:, :2], resid, NAMES)
    with pytest.raises(ValueError, match="finite or missing"):
        BatchCorrection().fit(np.where(x > 4, np.inf, x), resid, NAMES)
    np.testing.assert_array_equal(bc.vector({"c": 1.0, "a": 2.0}), [2.0, np.nan, 1.0])


def test_calibrator_keeps_its_correction_through_its_state():
    rng = np.random.default_rng(3)
    x, _ = two_families(rng)
    true = rng.uniform(0, 1, len(x))
    raw = np.clip(true + np.where(x[:, 0] > 1.5, 0.15, -0.05) + rng.normal(0, 0.05, len(x)), 0, 1)
    cal = DiceCalibrator().fit(raw, true, descriptors=x, names=NAMES)
    arrays, config = cal.state()
    again = DiceCalibrator.from_state(arrays, config)
    batch = rng.normal(3, 1, (40, 3))
    assert again.correction_.correct(batch) == cal.correction_.correct(batch)
    # pairs the map overestimates (family B): a batch like them is corrected downwards
    assert cal.correction_.correct(batch)["correction"] < -0.03
    plain = DiceCalibrator().fit(raw, true)
    assert plain.correction_ is None
    arrays, config = plain.state()
    config.pop("correction")  # a bundle fitted before the correction existed
    assert DiceCalibrator.from_state(arrays, config).correction_ is None
    arrays, config = cal.state()
    arrays.pop("correction_residuals")
    with pytest.raises(ValueError, match="arrays are missing"):
        DiceCalibrator.from_state(arrays, config)


def test_group_means_are_corrected_and_the_uncorrected_kept():
    rng = np.random.default_rng(4)
    x, resid = two_families(rng)
    bc = BatchCorrection().fit(x, resid, NAMES)
    pred = rng.uniform(0.5, 0.9, 80)
    desc = np.vstack([rng.normal(0, 1, (40, 3)), rng.normal(3, 1, (40, 3))])
    groups = ["a"] * 40 + ["b"] * 40
    plain = estimate_groups(pred, pred > 0.8, groups, n_boot=300)
    out = estimate_groups(pred, pred > 0.8, groups, n_boot=300, correction=bc, descriptors=desc)
    for g, sign in (("a", 1), ("b", -1)):
        by = out[g]["batch_correction"]["correction"]
        assert sign * by > 0.06
        assert out[g]["mean_dice"] == pytest.approx(plain[g]["mean_dice"] + by)
        assert out[g]["mean_dice_uncorrected"] == pytest.approx(plain[g]["mean_dice"])
        assert out[g]["mean_dice_ci"][0] == pytest.approx(plain[g]["mean_dice_ci"][0] + by, abs=1e-9)
    assert plain["a"]["batch_correction"] is None
    other = estimate_groups(pred, pred > 0.8, groups, n_boot=300, correction=bc, descriptors=desc[:, :2])
    assert other["a"]["batch_correction"] is None and other["a"]["mean_dice"] == plain["a"]["mean_dice"]


def test_a_correction_within_its_own_noise_is_not_made():
    rng = np.random.default_rng(5)
    x = rng.normal(0, 1, (40, 3))
    resid = rng.normal(0.0, 0.3, 40)  # few pairs, noisy residuals, no real error anywhere
    c = BatchCorrection().fit(x, resid, NAMES).correct(rng.normal(0.5, 1, (30, 3)))
    assert c["standard_error"] > 0.03
    assert abs(c["correction"]) <= abs(c["weighted_residual"])
    if abs(c["weighted_residual"]) <= c["standard_error"]:
        assert c["correction"] == 0.0
    # the same residual pattern, clear and on many pairs, is kept nearly whole
    x, resid = two_families(rng)
    c = BatchCorrection().fit(x, resid, NAMES).correct(rng.normal(0, 1, (60, 3)))
    assert c["correction"] == pytest.approx(c["weighted_residual"], rel=0.05)


def test_descriptor_cells_that_were_changed_are_not_used():
    from segqc.pipeline.outputs import descriptors

    good = [{"features_descriptor": "0.5;1;nan"}, {"features_descriptor": "0.25;2;3"}]
    np.testing.assert_array_equal(descriptors(good, "features"), [[0.5, 1, np.nan], [0.25, 2, 3]])
    assert descriptors(good + [{"features_descriptor": ""}], "features") is None
    assert descriptors(good + [{"features_descriptor": "0.5;x;1"}], "features") is None
    assert descriptors(good + [{"features_descriptor": "0.5;1"}], "features") is None
    assert descriptors([], "features") is None


def test_the_share_of_passing_cases_is_left_as_it_is():
    """The same weighting of the pairs' pass residuals moved the share away from the truth (README), so the
    share stays the mean P(pass); a bundle that stored those residuals (fitted while it was made) still loads."""
    rng = np.random.default_rng(6)
    x, _ = two_families(rng)
    true = rng.uniform(0, 1, len(x))
    raw = np.clip(true + np.where(x[:, 0] > 1.5, 0.15, -0.05) + rng.normal(0, 0.05, len(x)), 0, 1)
    cal = DiceCalibrator().fit(raw, true, descriptors=x, names=NAMES)
    batch = rng.normal(3, 1, (50, 3))
    pred = rng.uniform(0.5, 0.9, 50)
    plain = estimate_groups(pred, pred > 0.8, n_boot=300)["all"]
    out = estimate_groups(pred, pred > 0.8, n_boot=300, correction=cal.correction_, descriptors=batch)["all"]
    assert out["batch_correction"]["correction"] < -0.03  # the mean is corrected
    assert "share_pass_correction" not in out["batch_correction"] and "share_pass_uncorrected" not in out
    assert out["share_pass"] == plain["share_pass"] and out["share_pass_ci"] == plain["share_pass_ci"]
    arrays, config = cal.state()
    arrays["correction_pass_residuals"] = rng.normal(0, 0.1, len(x)).astype(np.float32)
    assert DiceCalibrator.from_state(arrays, config).correction_.correct(batch) == cal.correction_.correct(batch)
