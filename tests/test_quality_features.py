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


def _blobs(rng, shape, n=12):
    """Random masks of ``shape``: blobs anywhere (on the array's edges too), single voxels, nothing."""
    from scipy import ndimage

    out = [np.zeros(shape, bool), np.ones(shape, bool)]
    for _ in range(n):
        out.append(ndimage.gaussian_filter(rng.random(shape), 2) > rng.uniform(0.5, 0.56))
    dot = np.zeros(shape, bool)
    dot[(0,) * len(shape)] = dot[tuple(s - 1 for s in shape)] = True
    return out + [dot]


def test_morphology_on_a_masks_box_equals_it_on_the_whole_array():
    """Rings, boundaries and filled holes are computed on the mask's bounding box for speed: the very same
    voxels as on the whole image, wherever the mask lies (on the edges too), in 2D and 3D."""
    from scipy import ndimage

    import segqc.components.quality_features as qf

    rng = np.random.default_rng(0)
    for shape in ((40, 52), (9, 30, 26)):
        for m in _blobs(rng, shape):
            for width in (1, 3, 7):
                np.testing.assert_array_equal(qf._ring(m, width), ndimage.binary_dilation(m, iterations=width) & ~m)
            np.testing.assert_array_equal(qf._edge(m), m ^ ndimage.binary_erosion(m))
            fill = qf._on_box(m, 1, ndimage.binary_fill_holes)
            np.testing.assert_array_equal(fill, ndimage.binary_fill_holes(m))


def test_an_images_measures_shared_by_its_candidates_give_each_the_rows_of_its_own():
    """`measure_candidates` measures an image once for all its candidates; each row is the row
    `mask_features` gives that candidate alone."""
    from scipy import ndimage

    from segqc.components.quality_features import measure_candidates

    cases = _kvasir(4)
    stats = reference_stats(cases, [1], np.random.default_rng(0))
    rng = np.random.default_rng(1)
    jobs = []
    for c in cases:
        p = ndimage.gaussian_filter((c.mask == 1).astype(np.float32), 3)
        proba = np.stack([1 - p, p])
        jobs += [(c.with_mask(m.astype(np.uint8)), proba) for m in _blobs(rng, c.mask.shape, 3)]
    rows = measure_candidates(jobs, [1], stats)
    for (case, proba), (row,) in zip(jobs, rows):
        alone = mask_features(case, 1, stats, proba)
        assert alone.keys() == row.keys()
        np.testing.assert_array_equal([alone[k] for k in row], [row[k] for k in row])
