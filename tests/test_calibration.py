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
