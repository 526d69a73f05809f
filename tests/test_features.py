"""`features`' object-level agreement with segqc's segmenter: a blob it does not see, an object left out."""

import numpy as np
import pytest

from segqc.components.quality_features import _object_agreement


def _square(shape, y, x, size):
    m = np.zeros(shape, bool)
    m[y:y + size, x:x + size] = True
    return m


def test_a_false_positive_blob_and_a_missed_object_are_measured_apart_from_boundary_disagreement():
    lesion = _square((64, 64), 10, 10, 10)
    seg = lesion | _square((64, 64), 40, 5, 6)  # the segmenter also finds a second object
    p = np.where(seg, 0.9, 0.05)
    # the candidate draws the lesion one voxel wider (a boundary disagreement) and adds a blob
    candidate = _square((64, 64), 9, 9, 12) | _square((64, 64), 40, 40, 5)
    f = _object_agreement(candidate, seg, p)
    assert f["seg_unsupported_fraction"] == pytest.approx(25 / (144 + 25))
    assert f["seg_largest_component_support"] == pytest.approx((100 * 0.9 + 44 * 0.05) / 144)
    assert f["seg_untouched_fraction"] == pytest.approx(36 / 136)
    assert f["seg_untouched_confidence"] == pytest.approx(0.9)

    agreeing = _object_agreement(seg, seg, p)
    assert agreeing["seg_unsupported_fraction"] == 0 and agreeing["seg_untouched_fraction"] == 0
    assert agreeing["seg_untouched_confidence"] == 0


def test_an_empty_candidate_or_an_empty_opinion_gives_only_the_features_that_exist():
    lesion = _square((32, 32), 4, 4, 8)
    p = np.where(lesion, 0.8, 0.1)
    assert set(_object_agreement(np.zeros_like(lesion), lesion, p)) == {"seg_untouched_fraction",
                                                                         "seg_untouched_confidence"}
    assert _object_agreement(np.zeros_like(lesion), lesion, p)["seg_untouched_fraction"] == 1
    assert set(_object_agreement(lesion, np.zeros_like(lesion), p)) == {"seg_unsupported_fraction",
                                                                         "seg_largest_component_support"}


def test_objects_are_components_in_3d_too():
    seg = np.zeros((6, 20, 20), bool)
    seg[1:4, 2:8, 2:8] = True
    seg[1:4, 12:18, 12:18] = True
    cand = np.zeros_like(seg)
    cand[1:4, 2:8, 2:8] = True
    f = _object_agreement(cand, seg, np.where(seg, 0.7, 0.0))
    assert f["seg_untouched_fraction"] == pytest.approx(0.5)
    assert f["seg_largest_component_support"] == pytest.approx(0.7)
