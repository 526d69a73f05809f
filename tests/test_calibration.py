import json

import numpy as np
import pytest

from segqc.calibration.calibrator import DiceCalibrator, conformal_quantile


def test_conformal_quantile_by_hand():
    # n = 9, coverage 0.8 → k = ceil(10 * 0.8) = 8 → 8th smallest of 0.1..0.9
    r = np.arange(1, 10) / 10
    assert conformal_quantile(r, 0.8) == pytest.approx(0.8)
    # too few points for the level → the whole [0, 1] range
    assert conformal_quantile(r[:3], 0.9) == 1.0


def test_calibrator_fixes_scale_and_keeps_order(rng):
    true = rng.uniform(0, 1, 400)
    raw = true**2 + rng.normal(0, 0.03, 400)  # monotone but distorted scale
    cal = DiceCalibrator(tau=0.8, coverage=0.9).fit(raw, true)
    pred = cal.predict_dice(raw)
    assert np.mean(np.abs(pred - true)) < np.mean(np.abs(raw - true))
    assert np.all(np.diff(cal.predict_dice(np.linspace(0, 1, 50))) >= 0)
    p = cal.predict_pass(raw)
    assert p.min() >= 0 and p.max() <= 1
    assert p[true > 0.95].mean() > 0.9 and p[true < 0.6].mean() < 0.1
    # coverage on fresh data from the same distribution is close to nominal
    t2 = rng.uniform(0, 1, 2000)
    r2 = t2**2 + rng.normal(0, 0.03, 2000)
    lo, hi = cal.interval(r2)
    assert abs(np.mean((t2 >= lo) & (t2 <= hi)) - 0.9) < 0.04


def test_state_roundtrip_and_errors(rng):
    true = rng.uniform(0, 1, 50)
    cal = DiceCalibrator().fit(true + 0.1, true)
    arrays, cfg = cal.state()
    back = DiceCalibrator.from_state(arrays, cfg)
    x = np.linspace(0, 1, 11)
    assert np.allclose(back.predict_dice(x), cal.predict_dice(x))
    assert np.allclose(back.predict_pass(x), cal.predict_pass(x))
    with pytest.raises(ValueError, match="at least 10"):
        DiceCalibrator().fit([0.1, 0.2], [0.1, 0.2])
    with pytest.raises(ValueError, match="tau"):
        DiceCalibrator(tau=1.5).fit(true, true)


def test_cross_fitted_residuals_use_the_fixed_folds(rng):
    """The interval's radius comes from `cross_val_predict` on segqc's fixed, seeded folds."""
    from sklearn.isotonic import IsotonicRegression

    from segqc.calibration.crossfit import cross_fit_folds

    true = rng.uniform(0, 1, 123)
    raw = true + rng.normal(0, 0.1, 123)
    folds = cross_fit_folds(123)
    assert folds.get_n_splits() == 5 and sorted(np.bincount(folds.test_fold)) == [24, 24, 25, 25, 25]
    resid = np.empty(123)
    for train, test in folds.split():  # the loop `cross_val_predict` stands for
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(raw[train], true[train])
        resid[test] = true[test] - iso.predict(raw[test])
    assert DiceCalibrator(coverage=0.9).fit(raw, true).radius_ == conformal_quantile(resid, 0.9)


def test_dataset_estimate_is_a_seeded_percentile_bootstrap():
    from segqc.calibration.population import estimate_groups

    pred = np.array([0.9, 0.8, 0.7, 0.95, 0.6, 0.85, 0.5, 0.75])
    p_pass = (pred >= 0.8).astype(float)
    est = estimate_groups(pred, p_pass, ["a"] * 4 + ["b"] * 4, n_boot=500, rng=np.random.default_rng(3))
    assert list(est) == ["all", "a", "b"] and est["a"]["n"] == 4
    # the same intervals by hand: resample cases with the same generator, 2.5th / 97.5th percentile of the means
    hand = np.random.default_rng(3)
    for name, sel in (("all", slice(None)), ("a", slice(0, 4)), ("b", slice(4, 8))):
        for key, values in (("mean_dice_ci", pred[sel]), ("share_pass_ci", p_pass[sel])):
            means = values[hand.integers(0, len(values), size=(500, len(values)))].mean(axis=1)
            assert est[name][key] == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])), abs=1e-12)
        assert est[name]["mean_dice_ci"][0] <= est[name]["mean_dice"] <= est[name]["mean_dice_ci"][1]
    one = estimate_groups([0.9], [1.0])["all"]  # one case: no interval
    assert np.isnan(one["mean_dice_ci"]).all() and one["mean_dice"] == 0.9


def test_systematic_error_is_a_bound_over_left_out_groups():
    """A group the calibration misjudges (an unfamiliar model's masks) sets the bound on a batch's mean."""
    from segqc.calibration.calibrator import group_errors

    rng = np.random.default_rng(0)
    raw = rng.uniform(0, 1, 600)
    true = np.clip(raw + rng.normal(0, 0.05, 600), 0, 1)
    groups = [None] * 200 + [f"model{k}" for k in range(20) for _ in range(20)]
    true[200:220] = np.clip(true[200:220] - 0.2, 0, 1)  # model0's masks are 0.2 worse than their scores say
    cal = DiceCalibrator().fit(raw, true, groups)
    errors = group_errors(raw, true, groups)
    assert set(errors) == {f"model{k}" for k in range(20)} and cal.n_groups_ == 20
    assert errors["model0"] > 0.15 and cal.systematic_ == pytest.approx(max(abs(e) for e in errors.values()))
    # ceil(21 × 0.95) = 20: with 20 groups the 95 % bound is the largest error; a group left out is refitted
    # without it, so its own error is not hidden by its own pairs
    assert DiceCalibrator().fit(raw, true).n_groups_ == 0 and np.isnan(DiceCalibrator().fit(raw, true).systematic_)
    arrays, config = cal.state()
    again = DiceCalibrator.from_state(arrays, json.loads(json.dumps(config)))
    assert again.systematic_ == cal.systematic_ and again.n_groups_ == 20
    no_groups = DiceCalibrator().fit(raw, true)
    arrays, config = no_groups.state()
    assert config["systematic_"] is None and np.isnan(DiceCalibrator.from_state(arrays, config).systematic_)
    from segqc.calibration.calibrator import group_bound

    assert group_bound([0.1, -0.3, 0.2]) == 0.3 and np.isnan(group_bound([]))  # too few groups: the largest
    assert group_bound(np.arange(1, 41) / 100) == 0.39  # ceil(41 × 0.95) = 39th smallest of 40
    with pytest.raises(ValueError, match="radius"):
        DiceCalibrator.from_state(*cal.state()[:1], {**cal.state()[1], "systematic_": 2.0})


def test_a_group_is_judged_without_the_other_groups_of_its_network():
    """A snapshot of a fold network is not calibrated by that network's other snapshots: a model segqc judges
    is none of its networks, and its error must be measured that way."""
    from segqc.calibration.calibrator import group_errors, source_family

    assert source_family("segmenter:fold1_ep34") == "segmenter:fold1" == source_family("segmenter:fold1_ep2")
    assert source_family("segmenter:site3") == "segmenter:sites"
    assert source_family("outsider:segresnet_site1") == "outsider:segresnet" == source_family("outsider:segresnet_ep3")
    assert source_family("user_model") == "user_model" and source_family("manifest") == "manifest"
    rng = np.random.default_rng(1)
    raw = rng.uniform(0, 1, 900)
    true = np.clip(raw + rng.normal(0, 0.05, 900), 0, 1)
    groups = [None] * 300 + [f"segmenter:fold{k}_ep{e}" for k in range(3) for e in (3, 8, 13, 21) for _ in range(50)]
    true[300:500] = np.clip(true[300:500] - 0.15, 0, 1)  # every snapshot of fold 0 is 0.15 worse than it scores
    errors = group_errors(raw, true, groups)
    # left out alone, fold 0's other snapshots would pull the map down for it (its error would look smaller)
    assert all(errors[f"segmenter:fold0_ep{e}"] > 0.12 for e in (3, 8, 13, 21))
    assert all(abs(errors[f"segmenter:fold{k}_ep8"]) < 0.05 for k in (1, 2))


def test_batch_interval_carries_the_systematic_error():
    from segqc.calibration.population import estimate_groups

    pred = np.linspace(0.6, 0.9, 40)
    plain = estimate_groups(pred, pred > 0.8, n_boot=300)["all"]
    wide = estimate_groups(pred, pred > 0.8, n_boot=300, systematic=0.05)["all"]
    assert plain["mean_dice_ci"] == plain["mean_dice_sampling_ci"] and plain["systematic_error"] is None
    assert plain["mean_dice_ci_covers"] == "sampling"
    lo, hi = plain["mean_dice_sampling_ci"]
    assert wide["mean_dice_ci"] == pytest.approx((lo - 0.05, hi + 0.05))
    assert wide["systematic_error"] == 0.05 and "systematic" in wide["mean_dice_ci_covers"]
    assert estimate_groups([0.99, 0.98], [1, 1], systematic=0.1)["all"]["mean_dice_ci"][1] == 1.0
    assert np.isnan(estimate_groups([0.9], [1.0], systematic=0.1)["all"]["mean_dice_ci"]).all()  # one case: none


def test_case_interval_carries_the_systematic_error(rng):
    """A case's interval is its own noise (the conformal radius) plus its group's systematic error."""
    true = rng.uniform(0, 1, 400)
    groups = [f"model{i % 20}" for i in range(400)]
    # each model's masks are judged with its own offset: an error that pooling the groups fits away
    raw = true + np.array([0.01 * (i % 20 - 10) for i in range(400)]) + rng.normal(0, 0.05, 400)
    cal = DiceCalibrator(coverage=0.9).fit(raw, true, groups)
    # 400 pairs: one bin of calibrated Dice, one radius
    assert cal.bin_edges_.size == 0 and cal.bin_radii_.tolist() == [cal.radius_]
    assert cal.systematic_ > 0 and cal.half_widths_[0] == pytest.approx(cal.radius_ + cal.systematic_)
    lo, hi = cal.interval(np.array([0.5]))
    d = cal.predict_dice(np.array([0.5]))
    assert (hi - d)[0] == pytest.approx(cal.half_widths_[0]) and (d - lo)[0] == pytest.approx(cal.half_widths_[0])
    # without groups the error is unknown: the radius alone
    plain = DiceCalibrator(coverage=0.9).fit(raw, true)
    assert np.isnan(plain.systematic_) and plain.half_width(np.array([0.5]))[0] == plain.radius_


def test_case_interval_is_as_wide_as_the_errors_at_its_level(rng):
    """Mondrian conformal: QC errs more on masks it judges middling than on masks it judges good, so each bin
    of calibrated Dice has its own radius, and covers its own cases at the stated level."""
    from segqc.calibration.calibrator import MIN_BIN_PAIRS, dice_bins

    n = 4000
    true = rng.uniform(0, 1, n)
    raw = true + rng.normal(0, 1, n) * (0.01 + 0.5 * true * (1 - true))  # noisy in the middle, sure at the ends
    cal = DiceCalibrator(coverage=0.9).fit(raw[:3000], true[:3000])
    assert cal.bin_edges_.size >= 2 and np.all(np.diff(cal.bin_edges_) > 0)
    bins = np.digitize(cal.predict_dice(raw[:3000]), cal.bin_edges_)
    assert np.bincount(bins).min() >= MIN_BIN_PAIRS
    assert cal.bin_radii_.max() > 1.5 * cal.bin_radii_.min()  # wider in the middle than at the ends
    # on new cases every bin holds about 90 % of its cases; one radius for all over-covers some, under-covers others
    new_raw, new_true = raw[3000:], true[3000:]
    lo, hi = cal.interval(new_raw)
    new_bins = np.digitize(cal.predict_dice(new_raw), cal.bin_edges_)

    def per_bin(inside):
        return [inside[new_bins == b].mean() for b in range(cal.bin_edges_.size + 1)]

    binned = per_bin((new_true >= lo) & (new_true <= hi))
    one = per_bin(np.abs(new_true - cal.predict_dice(new_raw)) <= cal.radius_)
    assert min(binned) >= 0.8 and max(binned) - min(binned) < max(one) - min(one), (binned, one)
    # the bins travel with the bundle; a bundle fitted before them has one radius
    arrays, config = cal.state()
    back = DiceCalibrator.from_state(arrays, json.loads(json.dumps(config)))
    assert np.array_equal(back.interval(new_raw)[0], lo) and np.array_equal(back.interval(new_raw)[1], hi)
    old = DiceCalibrator.from_state({k: v for k, v in arrays.items() if not k.startswith("bin_")}, config)
    assert np.all(old.half_width(new_raw) == cal.radius_)
    with pytest.raises(ValueError, match="bins"):
        DiceCalibrator.from_state({**arrays, "bin_radii_": arrays["bin_radii_"][:-1]}, config)
    # plateaus of an isotonic map never straddle an edge; too few values make one bin
    assert dice_bins(np.r_[np.zeros(700), np.ones(500)]).tolist() == [1.0]
    assert dice_bins(np.linspace(0, 1, 2 * MIN_BIN_PAIRS - 1)).size == 0


def test_calibration_pool_keeps_network_masks_and_corruptions_only_beyond_them():
    """Corruptions calibrate only where no network-made pair says what a score means; with too few
    network-made pairs every pair calibrates."""
    from segqc.calibration.pool import MIN_MODEL_PAIRS, calibration_pool

    n = MIN_MODEL_PAIRS
    raw = np.r_[np.linspace(0.2, 0.9, n), [0.1, 0.5, 0.95, np.nan]]
    sources = ["segmenter:fold0_ep1"] * (n // 2) + ["outsider:segresnet_final"] * (n - n // 2) + ["corruption"] * 4
    keep, said = calibration_pool(sources, raw)
    assert keep[:n].all() and keep[n:].tolist() == [True, False, True, False]
    assert said == "network-made pairs, and 2 corruptions beyond their scores"
    keep, said = calibration_pool(sources[1:], raw[1:])  # one network-made pair too few
    assert keep.all() and said.startswith(f"all pairs (only {n - 1} network-made")
    keep, said = calibration_pool(sources, raw, "all")
    assert keep.all() and said == "all pairs"
    with pytest.raises(ValueError, match="calibration pool must be one of"):
        calibration_pool(sources, raw, "corruptions")


def test_auto_pool_leaves_all_pairs_only_when_left_out_networks_say_so(rng):
    """``auto`` calibrates on the network-made pairs when, each network's group left out in turn, its batch
    mean is estimated better so (here the corruptions are easier than network masks at one raw score);
    otherwise, and when there is nothing to compare, on every pair."""
    from segqc.calibration.pool import choose_pool, left_out_batch_errors

    raw_net = rng.uniform(0.3, 0.95, 240)
    sources = [f"segmenter:fold{i % 8}" for i in range(240)] + ["corruption"] * 240
    raw = np.r_[raw_net, rng.uniform(0.3, 0.95, 240)]
    noise = rng.normal(0, 0.03, 480)
    easier = np.clip(raw + np.r_[np.full(240, -0.05), np.full(240, 0.05)] + noise, 0, 1)
    chosen, evidence = choose_pool(sources, raw, easier)
    assert chosen == "networks" and evidence["p_value"] < 0.05 and evidence["groups"] == 8
    assert evidence["networks"]["mean_abs_error"] < evidence["all"]["mean_abs_error"]
    groups = [s if s != "corruption" else None for s in sources]
    every = left_out_batch_errors(raw, easier, groups, np.ones(480, bool))
    assert len(every) == 8 and np.mean(list(every.values())) > 0.03  # the corruptions pull every estimate up
    alike = np.clip(raw - 0.05 + noise, 0, 1)  # corruptions no easier than network masks: nothing to gain
    chosen, evidence = choose_pool(sources, raw, alike)
    assert chosen == "all" and evidence["p_value"] >= 0.05 and "not better" in evidence["reason"]
    chosen, evidence = choose_pool(sources[:240], raw[:240], easier[:240])  # no corruption: one pool
    assert chosen == "all" and evidence["reason"] == "the pools are the same"


@pytest.mark.slow
@pytest.mark.parametrize("calibrate_on", ["all", "networks", "auto"])
def test_fit_records_which_pairs_calibrated(tiny_bundle, tmp_path, calibrate_on):
    """The bundle says, pair by pair, which pairs its calibrator was fitted on, and in words."""
    from conftest import SAMPLE, fit_tiny

    from segqc.calibration.pool import calibration_pool
    from segqc.data import load_dataset
    from segqc.pipeline.bundle import load_bundle

    if calibrate_on == "auto":  # the default
        path = tiny_bundle("kvasir")
    else:
        ref = SAMPLE / "kvasir" / "reference"
        path = fit_tiny(ref, tmp_path / "bundle", ids=[r.case_id for r in load_dataset(ref)][:8],
                        calibrate_on=calibrate_on)
    bundle = load_bundle(path)
    pairs = bundle.info["calibration_pairs"]
    assert bundle.info["calibrate_on"] == calibrate_on
    pool = calibrate_on
    if calibrate_on == "auto":  # the pool chosen, and why, beside the other's evidence
        choice = bundle.info["fit"]["features"]["pool_choice"]
        pool = choice["chosen"]
        assert pool in ("all", "networks") and choice["reason"]
    keep, said = calibration_pool(pairs["source"], np.asarray(pairs["raw"]["features"]), pool)
    assert pairs["calibrated"]["features"] == keep.tolist()
    assert bundle.info["fit"]["features"]["calibrated_on"] == said
    assert bundle.calibrators["features"].n_ == bundle.info["fit"]["features"]["calibration_pairs"] == keep.sum()
