"""Corruptions on real masks from the embedded sample data (Kvasir 2D, hippocampus 3D)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from segqc.data.corrupt import CORRUPTIONS, corrupt, erode_dilate, sample_corruptions
from segqc.data.corrupt.geometry import mean_dice

SAMPLE = Path(__file__).resolve().parents[1] / "segqc" / "sample_data"
KVASIR = sorted((SAMPLE / "kvasir" / "reference" / "masks").glob("*.png"))
HIPPO = sorted((SAMPLE / "hippocampus" / "reference" / "labelsTr").glob("*.nii.gz"))


def _kvasir(i: int = 0) -> tuple[np.ndarray, tuple[float, ...]]:
    m = np.asarray(Image.open(KVASIR[i]))
    if m.ndim == 3:
        m = m[..., 0]
    return (m > 127).astype(np.uint8), (1.0, 1.0)


def _hippo(i: int = 0) -> tuple[np.ndarray, tuple[float, ...]]:
    img = sitk.ReadImage(str(HIPPO[i]))
    return sitk.GetArrayFromImage(img), tuple(img.GetSpacing()[::-1])


@pytest.fixture(params=["2d", "3d"])
def case(request) -> tuple[np.ndarray, tuple[float, ...]]:
    return _kvasir(0) if request.param == "2d" else _hippo(0)


def test_sample_data_present():
    assert KVASIR and HIPPO
    m3, _ = _hippo(0)
    assert set(np.unique(m3)) == {0, 1, 2}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
@pytest.mark.parametrize("severity", [0.1, 0.5, 0.9])
def test_kind_keeps_shape_dtype_and_input(case, kind, severity):
    mask, spacing = case
    before = mask.copy()
    out, info = corrupt(mask, spacing, np.random.default_rng(0), kind=kind, severity=severity)
    assert out.shape == mask.shape and out.dtype == mask.dtype
    assert out is not mask
    np.testing.assert_array_equal(mask, before)
    assert info["kinds"] == [kind]
    assert set(np.unique(out)) <= set(np.unique(mask)) | {0}
    # direct call with the registry's default parameters too
    direct = CORRUPTIONS[kind](mask, spacing, np.random.default_rng(0))
    assert direct.shape == mask.shape and direct.dtype == mask.dtype
    np.testing.assert_array_equal(mask, before)


def test_severity_hurts(case):
    mask, spacing = case
    for kind in ["erode_dilate", "shift", "partial_deletion", "false_positive_blobs"]:
        light, _ = corrupt(mask, spacing, np.random.default_rng(3), kind=kind, severity=0.1)
        heavy, _ = corrupt(mask, spacing, np.random.default_rng(3), kind=kind, severity=0.9)
        assert mean_dice(mask, heavy) < mean_dice(mask, light), kind


@pytest.mark.parametrize("kind", [None, *sorted(CORRUPTIONS)])
def test_deterministic_with_seed(case, kind):
    mask, spacing = case
    a, ia = corrupt(mask, spacing, np.random.default_rng(42), kind=kind)
    b, ib = corrupt(mask, spacing, np.random.default_rng(42), kind=kind)
    np.testing.assert_array_equal(a, b)
    assert ia["kinds"] == ib["kinds"] and ia["severity"] == ib["severity"]


def test_sampler_deterministic():
    mask, spacing = _kvasir(1)
    a = sample_corruptions(mask, spacing, np.random.default_rng(5), 5)
    b = sample_corruptions(mask, spacing, np.random.default_rng(5), 5)
    for (ma, da), (mb, db) in zip(a, b):
        np.testing.assert_array_equal(ma, mb)
        assert da == db


def test_erosion_shrinks_dilation_grows(case):
    mask, spacing = case
    rng = np.random.default_rng(0)
    for lab in np.unique(mask[mask > 0]):
        n = np.count_nonzero(mask == lab)
        eroded = erode_dilate(mask, spacing, rng, radius=-0.2, labels=[int(lab)])
        dilated = erode_dilate(mask, spacing, rng, radius=0.2, labels=[int(lab)])
        assert np.count_nonzero(eroded == lab) < n < np.count_nonzero(dilated == lab)
        # erosion only removes voxels of that label; dilation only adds
        assert np.all((eroded == lab) <= (mask == lab))
        assert np.all((mask == lab) <= (dilated == lab))


def test_empty(case):
    mask, spacing = case
    out, _ = corrupt(mask, spacing, np.random.default_rng(0), kind="empty")
    assert not out.any()
    assert mean_dice(mask, out) == 0.0


def test_missing_slices_blanks_whole_axial_slices():
    mask, spacing = _hippo(1)
    out = CORRUPTIONS["missing_slices"](mask, spacing, np.random.default_rng(1), fraction=0.4)
    blank = ~out.reshape(out.shape[0], -1).any(axis=1)
    had = mask.reshape(mask.shape[0], -1).any(axis=1)
    assert np.any(blank & had)  # some structure slices were dropped entirely
    z = np.nonzero(blank & had)[0]
    assert np.all(np.diff(z) == 1)  # as one run
    keep = ~blank
    np.testing.assert_array_equal(out[keep], mask[keep])  # the rest is untouched
    m2, sp2 = _kvasir(0)
    np.testing.assert_array_equal(CORRUPTIONS["missing_slices"](m2, sp2, np.random.default_rng(1)), m2)


def test_label_swap_only_on_multiclass():
    m2, sp2 = _kvasir(0)
    np.testing.assert_array_equal(CORRUPTIONS["label_swap"](m2, sp2, np.random.default_rng(0), fraction=0.8), m2)
    m3, sp3 = _hippo(0)
    out = CORRUPTIONS["label_swap"](m3, sp3, np.random.default_rng(0), fraction=0.5)
    assert np.array_equal(out > 0, m3 > 0)  # the foreground stays, only labels change
    assert np.any(out != m3)
    full = CORRUPTIONS["label_swap"](m3, sp3, np.random.default_rng(0), fraction=1.0, swap=True)
    np.testing.assert_array_equal(full == 1, m3 == 2)
    np.testing.assert_array_equal(full == 2, m3 == 1)


def testmean_dice():
    a = np.zeros((4, 4), np.uint8)
    assert mean_dice(a, a) == 1.0
    b = a.copy()
    b[0, 0] = 1
    assert mean_dice(a, b) == 0.0
    assert mean_dice(b, a) == 0.0
    c = b.copy()
    c[0, 1] = 1
    assert mean_dice(b, c) == pytest.approx(2 / 3)
    d = b.copy()
    d[3, 3] = 2
    assert mean_dice(d, b) == pytest.approx(0.5)  # label 2 missing -> 0, mean with 1


def test_sampler_spreads_dice_over_unit_interval():
    mask, spacing = _kvasir(2)
    results = sample_corruptions(mask, spacing, np.random.default_rng(0), 40)
    assert len(results) == 40
    dice = np.array([d for _, d in results])
    for m, d in results:
        assert m.shape == mask.shape and m.dtype == mask.dtype
        assert d == pytest.approx(mean_dice(mask, m))
    assert np.all((dice >= 0) & (dice <= 1))
    bins = np.histogram(dice, bins=5, range=(0, 1))[0]
    assert np.count_nonzero(bins) >= 3, bins
    assert dice.max() - dice.min() > 0.6


def test_sampler_3d_and_explicit_targets():
    mask, spacing = _hippo(2)
    targets = [0.1, 0.5, 0.9]
    results = sample_corruptions(mask, spacing, np.random.default_rng(1), 3, target=targets)
    assert len(results) == 3
    assert all(m.shape == mask.shape for m, _ in results)


def test_corrupt_2d_is_fast():
    mask, spacing = _kvasir(0)
    rng = np.random.default_rng(0)
    corrupt(mask, spacing, rng)  # warm-up
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        corrupt(mask, spacing, rng)
        times.append(time.perf_counter() - t0)
    assert np.median(times) < 0.020
