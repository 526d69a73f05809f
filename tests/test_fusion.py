"""Fusion of QC methods: stacking weights, recalibration, state round trip."""

import numpy as np
import pytest

from segqc.calibration.calibrator import DiceCalibrator
from segqc.calibration.fusion import Fusion


def _members(n=600, seed=0):
    rng = np.random.default_rng(seed)
    true = rng.uniform(0, 1, n)
    raws = {
        "a": true + rng.normal(0, 0.15, n),           # informative, independent errors
        "b": 2 * true + rng.normal(0, 0.30, n) - 1,   # informative on another raw scale
        "noise": rng.normal(0, 1, n),                 # says nothing
    }
    return true, raws


def test_fusion_beats_members_and_ignores_noise():
    true, raws = _members()
    fusion = Fusion(["a", "b", "noise"]).fit(raws, true)
    w = dict(zip(fusion.members, fusion.weights_))
    assert w["noise"] < 0.1 and w["a"] > 0.3 and w["b"] > 0.3 and sum(w.values()) == pytest.approx(1)
    # on fresh cases, fused calibrated Dice follows the truth better than either member alone
    t2, r2 = _members(seed=1)
    member_cal = {m: DiceCalibrator(tau=0.8).fit(raws[m], true) for m in fusion.members}
    cal = {m: member_cal[m].predict_dice(r2[m]) for m in fusion.members}
    fused = np.array([fusion.fused_raw({m: cal[m][i] for m in fusion.members}) for i in range(len(t2))])
    pred = fusion.calibrator_.predict_dice(fused)
    r = lambda x: np.corrcoef(x, t2)[0, 1]  # noqa: E731
    assert r(pred) > max(r(cal["a"]), r(cal["b"])) + 0.01
    assert fusion.heldout_pearson_ > 0.9


def test_fusion_state_round_trip_and_errors():
    true, raws = _members(200)
    fusion = Fusion(["a", "b"], tau=0.7, coverage=0.8).fit(raws, true)
    back = Fusion.from_state(*fusion.state())
    assert back.members == ["a", "b"] and back.calibrator_.tau == 0.7
    assert np.allclose(back.weights_, fusion.weights_)
    x = np.linspace(0, 1, 11)
    assert np.allclose(back.calibrator_.predict_dice(x), fusion.calibrator_.predict_dice(x))
    with pytest.raises(ValueError, match="at least two"):
        Fusion(["a"])
