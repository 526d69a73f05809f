"""The hand-crafted features of `features` (`segqc.components.quality_features`)."""

import numpy as np
from conftest import SAMPLE

from segqc.components.quality_features import image_units, mask_features, reference_stats
from segqc.data import load_dataset
from segqc.data.case import Case


def _kvasir(n=8):
    return [r.load() for r in load_dataset(SAMPLE / "kvasir" / "reference")][:n]


def test_a_new_cameras_colour_balance_and_gain_leave_every_feature_as_it_was():
    """Intensities are measured in each image's own units: a per-channel gain and offset (another camera's
    colour balance, another window) is not a change of the mask's quality."""
    cases = _kvasir()
    stats = reference_stats(cases, [1], np.random.default_rng(0))
    case = cases[0]
    gain, offset = np.array([0.7, 1.1, 1.4])[:, None, None], np.array([15.0, -8.0, 30.0])[:, None, None]
    moved = Case(case.case_id, case.image * gain + offset, case.mask, case.geometry)
    before, after = mask_features(case, 1, stats), mask_features(moved, 1, stats)
    assert before.keys() == after.keys()
    for k in before:  # float32 rounding of the z-scores apart
        assert np.isclose(after[k], before[k], rtol=1e-3, atol=1e-3), (k, before[k], after[k])
    z = image_units(case.image)
    np.testing.assert_allclose(z.mean(axis=(1, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=(1, 2)), 1, atol=1e-3)


def test_statistics_of_an_older_bundle_keep_the_raw_intensities_its_booster_learnt():
    cases = _kvasir()
    stats = reference_stats(cases, [1], np.random.default_rng(0))
    assert stats["intensity_units"] == "image"
    old = {k: v for k, v in stats.items() if k != "intensity_units"}  # as bundles made before it saved them
    case = cases[1]
    brighter = Case(case.case_id, case.image * 1.3, case.mask, case.geometry)
    assert mask_features(brighter, 1, old)["c0_in_mean"] != mask_features(case, 1, old)["c0_in_mean"]
    assert abs(mask_features(brighter, 1, stats)["c0_in_mean"] - mask_features(case, 1, stats)["c0_in_mean"]) < 1e-4
