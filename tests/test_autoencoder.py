"""Tests for the mask-autoencoder QC method on embedded real cases (tiny configs, CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segqc.components.pgt_scoring import diagonal_mm
from segqc.data import load_dataset
from segqc.methods import get_method_class
from segqc.methods.autoencoder import MaskAutoencoder, _corrupt_onehot, build_mask_autoencoder
from segqc.methods.base import FitContext, NotFittedError
from segqc.plan.fingerprint import compute_fingerprint
from segqc.plan.plan import plan_from_fingerprint

TINY = {"epochs": 2, "batch_size": 4, "channels": (8, 16), "max_minutes": 0.5, "n_threads": 1, "seed": 0}


def _ctx(seed: int = 0) -> FitContext:
    return FitContext(rng=np.random.default_rng(seed), device="cpu")


def _load(path: str, n: int):
    cases = [r.load() for r in load_dataset(path)[:n]]
    plan = plan_from_fingerprint(compute_fingerprint(cases), max_slice_size=64)
    return cases, plan


@pytest.fixture(scope="module")
def kvasir():
    cases, plan = _load("segqc/sample_data/kvasir/reference", 6)
    method = MaskAutoencoder(**TINY).fit(cases, plan, _ctx())
    return cases, plan, method


@pytest.fixture(scope="module")
def hippo():
    cases, plan = _load("segqc/sample_data/hippocampus/reference", 3)
    method = MaskAutoencoder(**TINY).fit(cases, plan, _ctx())
    return cases, plan, method


def _check_score(score, case, labels):
    assert set(score.dice) == set(labels)
    for k in labels:
        assert 0.0 <= score.dice[k] <= 1.0
        assert np.isfinite(score.dice[k])
    assert set(score.hd95) == set(labels)
    assert all(np.isfinite(v) and v >= 0.0 for v in score.hd95.values())
    pgt, err = score.maps["pgt"], score.maps["error"]
    assert pgt.shape == case.mask.shape and pgt.dtype == np.uint8
    assert set(np.unique(pgt).tolist()) <= {0, *labels}
    assert err.shape == case.mask.shape and err.dtype == np.float32
    assert err.min() >= 0.0 and err.max() <= 1.0
    assert all(np.isfinite(v) for v in score.features.values())


def test_registry_names_the_class():
    assert get_method_class("autoencoder") is MaskAutoencoder
    assert MaskAutoencoder.name == "autoencoder"


@pytest.mark.slow
@pytest.mark.parametrize("which", ["kvasir", "hippo"])
def test_fit_and_score_on_original_grid(which, request):
    cases, plan, method = request.getfixturevalue(which)
    assert method.labels_ == list(plan.labels)
    for case in cases[:2]:
        _check_score(method.score(case), case, list(plan.labels))
    # a damaged candidate (half the label map removed) is scored too
    bad = cases[0].mask.copy()
    bad[..., : bad.shape[-1] // 2] = 0
    _check_score(method.score(cases[0].with_mask(bad)), cases[0], list(plan.labels))


@pytest.mark.parametrize("which", ["kvasir", "hippo"])
def test_state_round_trip_gives_identical_scores(which, request):
    cases, plan, method = request.getfixturevalue(which)
    arrays, config = method.state()
    assert arrays and all(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in arrays.values())
    config = json.loads(json.dumps(config))  # JSON only, no pickle
    loaded = MaskAutoencoder.from_state(arrays, config, plan, device="cpu")
    assert loaded.get_params() == method.get_params() and loaded.channels == tuple(method.channels)
    assert loaded.labels_ == method.labels_ and loaded.net_args_ == method.net_args_
    for case in cases[:2]:
        a, b = method.score(case), loaded.score(case)
        assert a.dice == b.dice
        assert a.hd95 == pytest.approx(b.hd95, nan_ok=True)
        np.testing.assert_array_equal(a.maps["pgt"], b.maps["pgt"])
        np.testing.assert_array_equal(a.maps["error"], b.maps["error"])


@pytest.mark.parametrize("which", ["kvasir", "hippo"])
def test_empty_candidate_gives_a_number(which, request):
    cases, plan, method = request.getfixturevalue(which)
    case = cases[0].with_mask(np.zeros_like(cases[0].mask))
    score = method.score(case)
    _check_score(score, case, list(plan.labels))
    for k, d in score.dice.items():
        # Dice conventions: both empty → 1, only the reconstruction non-empty → 0
        recon_empty = not (score.maps["pgt"] == k).any()
        assert d == (1.0 if recon_empty else 0.0)
        # HD95 conventions (pgt_scoring): both empty → 0, only one empty → the image diagonal in mm
        assert score.hd95[k] == (0.0 if recon_empty else pytest.approx(diagonal_mm(case.mask.shape, case.spacing)))


def test_unfitted_state_is_refused():
    # (scoring unfitted or with unknown labels is covered for every method by test_methods.py)
    with pytest.raises(NotFittedError):
        MaskAutoencoder(**TINY).state()


def test_bad_params_are_refused(kvasir):
    cases, plan, _ = kvasir
    with pytest.raises(ValueError, match="epochs"):
        MaskAutoencoder(epochs=0).fit(cases, plan, _ctx())
    with pytest.raises(ValueError, match="denoise"):
        MaskAutoencoder(denoise=1.5).fit(cases, plan, _ctx())
    with pytest.raises(ValueError, match="channels"):
        MaskAutoencoder(channels=(8, 0))
    with pytest.raises(TypeError, match="device"):
        MaskAutoencoder(device="cpu")  # the device is the FitContext's / the loader's


def test_fit_is_reproducible(hippo):
    cases, plan, method = hippo
    again = MaskAutoencoder(**TINY).fit(cases, plan, _ctx())
    a, _ = method.state()
    b, _ = again.state()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


@pytest.mark.slow
def test_bottleneck_is_smaller_than_the_input():
    import torch

    net = build_mask_autoencoder(3, channels=(8, 16), latent_channels=4).eval()
    x = torch.zeros(2, 3, 64, 48)
    x[:, 0] = 1.0
    assert net.encode(x).shape == (2, 4, 8, 6)  # S/8 per side: 16x fewer numbers than the one-hot input
    assert net(x).shape == x.shape
    # a side that is not a multiple of 8 is padded inside and cropped back
    assert net(torch.zeros(1, 3, 50, 37)).shape == (1, 3, 50, 37)
    dense = build_mask_autoencoder(3, channels=(8, 16), latent_dim=16, size=64).eval()
    assert dense.encode(torch.zeros(2, 3, 64, 64)).shape == (2, 16)
    assert dense(torch.zeros(2, 3, 60, 64)).shape == (2, 3, 60, 64)
    with pytest.raises(ValueError, match="size"):
        build_mask_autoencoder(3, channels=(8, 16), latent_dim=16)


@pytest.mark.slow
def test_dense_latent_fits_and_round_trips(hippo):
    cases, plan, _ = hippo
    method = MaskAutoencoder(**TINY, latent_dim=8).fit(cases, plan, _ctx())
    arrays, config = method.state()
    loaded = MaskAutoencoder.from_state(arrays, json.loads(json.dumps(config)), plan, device="cpu")
    a, b = method.score(cases[1]), loaded.score(cases[1])
    _check_score(a, cases[1], list(plan.labels))
    assert a.dice == b.dice


def test_corruption_keeps_one_hot_and_changes_some_masks():
    import torch

    y = torch.zeros(8, 2, 32, 32)
    y[:, 0] = 1.0
    y[:, 1, 8:24, 8:24], y[:, 0, 8:24, 8:24] = 1.0, 0.0
    out = _corrupt_onehot(y, torch.Generator().manual_seed(0), p_corrupt=1.0)
    assert torch.all(out.sum(1) == 1)
    assert (out != y).any()
    assert torch.equal(_corrupt_onehot(y, torch.Generator().manual_seed(0), p_corrupt=0.0), y)
