"""Tests for segqc.plan.preprocess: model-space shapes and the exact inverse back to the original grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import segqc
from segqc.data import load_dataset
from segqc.data.case import Case, Geometry
from segqc.plan.fingerprint import compute_fingerprint
from segqc.plan.plan import Plan, plan_from_fingerprint
from segqc.plan.preprocess import invert_map, invert_mask, original_geometry, preprocess

SAMPLES = Path(segqc.__file__).parent / "sample_data"


def _dice(a: np.ndarray, b: np.ndarray, labels) -> float:
    """Mean Dice over labels; a label absent from both counts as 1."""
    out = []
    for lab in labels:
        x, y = a == lab, b == lab
        s = x.sum() + y.sum()
        out.append(1.0 if s == 0 else 2.0 * (x & y).sum() / s)
    return float(np.mean(out))


@pytest.fixture(scope="module")
def kvasir():
    cases = [r.load() for r in load_dataset(SAMPLES / "kvasir" / "reference")]
    return cases, plan_from_fingerprint(compute_fingerprint(cases))


@pytest.fixture(scope="module")
def hippo():
    cases = [r.load() for r in load_dataset(SAMPLES / "hippocampus" / "reference")]
    return cases, plan_from_fingerprint(compute_fingerprint(cases))


def _round_trip(cases, plan) -> list[float]:
    dices = []
    for case in cases:
        image_ms, mask_ms, props = preprocess(case, plan)
        S = plan.slice_size
        z = 1 if case.ndim == 2 else case.shape[0]
        assert image_ms.shape == (case.n_channels, z, S, S) and image_ms.dtype == np.float32
        assert mask_ms.shape == (z, S, S) and mask_ms.dtype == case.mask.dtype
        json.dumps(props)
        back = invert_mask(mask_ms, props)
        assert back.shape == case.mask.shape and back.dtype == case.mask.dtype
        dices.append(_dice(back, case.mask, plan.labels))
    return dices


def test_hippocampus_round_trip(hippo):
    cases, plan = hippo
    dices = _round_trip(cases, plan)
    assert min(dices) >= 0.98, dices


def test_hippocampus_round_trip_with_resampling(hippo):
    # slice 128 at 0.6 mm: every slice is upsampled, padded, and brought back
    cases, plan = hippo
    plan = Plan.from_dict({**plan.to_dict(), "slice_size": 128, "target_spacing": [0.6, 0.6]})
    assert min(_round_trip(cases, plan)) >= 0.98


def test_kvasir_round_trip(kvasir):
    # 256 → 128 → 256 loses detail on the smallest polyp (min ≈ 0.966 observed)
    cases, plan = kvasir
    dices = _round_trip(cases, plan)
    assert min(dices) >= 0.95 and np.mean(dices) >= 0.98, dices


def test_kvasir_model_space(kvasir):
    cases, plan = kvasir
    image_ms, mask_ms, props = preprocess(cases[0], plan)
    assert image_ms.shape == (3, 1, 128, 128)
    assert 0.0 <= image_ms.min() and image_ms.max() <= 1.0  # rgb: x / 255
    assert props["resampled_shape"] == [128, 128] and props["model_spacing"] == [1.0, 2.0, 2.0]
    assert props["original_shape"] == [256, 256] and props["ndim"] == 2
    assert set(np.unique(mask_ms)) <= {0, 1}
    assert original_geometry(props) == cases[0].geometry


def test_hippocampus_model_space(hippo):
    cases, plan = hippo
    case = cases[0]
    image_ms, mask_ms, props = preprocess(case, plan)
    z, y, x = case.shape
    assert image_ms.shape == (1, z, 64, 64) and mask_ms.shape == (z, 64, 64)
    (pb0, pa0), (pb1, pa1) = props["pad"]
    assert pb0 + pa0 == 64 - y and pb1 + pa1 == 64 - x and abs(pb0 - pa0) <= 1
    inner = image_ms[:, :, pb0:64 - pa0, pb1:64 - pa1]
    assert inner.mean() == pytest.approx(0.0, abs=1e-4) and inner.std() == pytest.approx(1.0, abs=1e-3)
    assert np.all(image_ms[:, :, :pb0] == 0)  # padding is 0 after normalisation
    assert np.array_equal(mask_ms[:, pb0:64 - pa0, pb1:64 - pa1], case.mask)
    assert original_geometry(props) == case.geometry
    no_mask = preprocess(case.with_mask(None), plan)
    assert no_mask[1] is None and np.array_equal(no_mask[0], image_ms)


def test_crop_of_a_large_image():
    """An image bigger than the slice is centre-cropped; cropped parts come back as background."""
    mask = np.zeros((2, 40, 30), np.uint8)
    mask[:, 15:25, 10:20] = 1
    mask[:, 0:3, 0:3] = 2  # in a corner that the crop removes
    case = Case("big", np.ones((1, 2, 40, 30), np.float32), mask, Geometry.identity(3))
    plan = Plan(ndim=3, n_channels=1, modality="MR", labels=(1, 2), target_spacing=(1.0, 1.0), slice_size=16,
                normalization="zscore")
    image_ms, mask_ms, props = preprocess(case, plan)
    assert image_ms.shape == (1, 2, 16, 16) and props["crop"] == [[12, 28], [7, 23]]
    back = invert_mask(mask_ms, props)
    assert back.shape == mask.shape
    assert np.array_equal(back == 1, mask == 1) and not (back == 2).any()
    score = invert_map(np.ones((2, 16, 16), np.float32), props, fill=-1.0)
    assert score.shape == mask.shape and (score[:, :12] == -1).all() and (score[:, 12:28, 7:23] == 1).all()


def test_anisotropic_2d_fit_keeps_aspect():
    mask = np.zeros((50, 100), np.uint8)
    mask[10:40, 20:80] = 1
    case = Case("photo", np.full((3, 50, 100), 128.0, np.float32), mask, Geometry.identity(2))
    plan = Plan(ndim=2, n_channels=3, modality="RGB", labels=(1,), target_spacing=(1.0, 1.0), slice_size=32,
                normalization="rgb", normalization_kwargs={"scale": 255.0}, resize_mode="fit")
    image_ms, mask_ms, props = preprocess(case, plan)
    assert props["resampled_shape"] == [16, 32] and props["pad"] == [[8, 8], [0, 0]]
    assert image_ms.shape == (3, 1, 32, 32) and mask_ms.shape == (1, 32, 32)
    assert invert_mask(mask_ms[0], props).shape == (50, 100)  # (S, S) accepted for 2D
    # 50 × 100 → 16 × 32: a boundary moves by up to ~1.5 px, on a 30 px tall box
    assert _dice(invert_mask(mask_ms, props), mask, [1]) > 0.93


def test_invert_map(kvasir, hippo):
    # identity resampling (hippocampus at 1 mm): undoing the pad and the z-score gives the image back
    cases, plan = hippo
    case = cases[1]
    image_ms, _, props = preprocess(case, plan)
    norm = props["normalization"]
    back = invert_map(image_ms, props) * norm["std"][0] + norm["mean"][0]
    assert back.shape == case.image.shape
    np.testing.assert_allclose(back, case.image, rtol=1e-4, atol=1e-3 * norm["std"][0])
    # a smooth map survives 256 → 128 → 256 (Kvasir) with a small error
    cases, plan = kvasir
    case = cases[0]
    yy, xx = np.mgrid[0:256, 0:256].astype(np.float32)
    smooth = np.sin(yy / 20.0) * np.cos(xx / 30.0)
    image = np.repeat(127.5 + 100 * smooth[None], 3, axis=0).astype(np.float32)
    image_ms, _, props = preprocess(Case("smooth", image, None, case.geometry), plan)
    back = invert_map(image_ms, props) * 255.0
    assert back.shape == (3, 256, 256)
    err = np.abs(back - image)
    assert err.mean() < 0.5 and err[:, 2:-2, 2:-2].max() < 2.0  # amplitude 100; edges clamp
    # a leading class axis is kept
    probs = np.stack([image_ms[0], 1 - image_ms[0]])  # (2, 1, S, S)
    assert invert_map(probs, props).shape == (2, 256, 256)


def test_bad_inputs_are_refused(hippo, kvasir):
    cases, plan = hippo
    with pytest.raises(ValueError, match="plan is for 2D"):
        preprocess(cases[0], kvasir[1])
    _, mask_ms, props = preprocess(cases[0], plan)
    with pytest.raises(ValueError, match="must have shape"):
        invert_mask(mask_ms[:, :32], props)
