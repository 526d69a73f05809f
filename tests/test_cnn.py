"""CNNRegressor on a few real sample cases (Kvasir 2D RGB, hippocampus 3D two labels), tiny configs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segqc.data import load_dataset
from segqc.methods.base import FitContext, TrainingPair
from segqc.methods.cnn import CNNRegressor
from segqc.plan.fingerprint import compute_fingerprint
from segqc.plan.plan import plan_from_fingerprint
from segqc.plan.preprocess import preprocess, soft_mask_to_model_space

SAMPLE = Path(__file__).resolve().parents[1] / "segqc" / "sample_data"
TINY = dict(epochs=2, pairs_per_case=2, batch_size=4, widths=(4, 8, 8, 16), n_threads=2, seed=0)


def _ctx(seed: int, **kw) -> FitContext:
    return FitContext(rng=np.random.default_rng(seed), device="cpu", **kw)


def _fit(folder: str, n: int):
    cases = [r.load() for r in load_dataset(SAMPLE / folder / "reference")[:n]]
    plan = plan_from_fingerprint(compute_fingerprint(cases), max_slice_size=64)
    method = CNNRegressor(**TINY).fit(cases, plan, _ctx(0))
    return method, cases, plan


@pytest.fixture(scope="module")
def kvasir():
    return _fit("kvasir", 6)


@pytest.fixture(scope="module")
def hippo():
    return _fit("hippocampus", 4)


def _bad(mask: np.ndarray) -> np.ndarray:
    """A clearly bad candidate: the expert mask's bounding box only in the top-left quarter."""
    out = np.zeros_like(mask)
    sl = tuple(slice(0, max(1, s // 4)) for s in mask.shape)
    out[sl] = mask.max()
    return out


@pytest.mark.parametrize("which", ["kvasir", "hippo"])
def test_scores_are_dice_per_label(which, request):
    method, cases, plan = request.getfixturevalue(which)
    assert method.labels_ == list(plan.labels)
    assert method.spatial_dims_ == plan.ndim
    for mask in (cases[0].mask, _bad(cases[0].mask), np.zeros_like(cases[0].mask)):
        s = method.score(cases[0].with_mask(mask))
        assert sorted(s.dice) == list(plan.labels)
        assert all(0.0 <= v <= 1.0 and np.isfinite(v) for v in s.dice.values())
    assert method.history_ and np.isfinite(method.history_[-1]["loss"])
    assert method.fit_info_["epochs_run"] >= 1


@pytest.mark.parametrize("which", ["kvasir", "hippo"])
def test_state_round_trip(which, request):
    method, cases, plan = request.getfixturevalue(which)
    arrays, config = method.state()
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in arrays.values())
    config = json.loads(json.dumps(config))  # plain JSON, nothing pickled
    loaded = CNNRegressor.from_state(arrays, config, plan, device="cpu")
    assert loaded.device_ == "cpu" and loaded.z_pad_ == method.z_pad_ and loaded.labels_ == method.labels_
    for mask in (cases[1].mask, _bad(cases[1].mask)):
        case = cases[1].with_mask(mask)
        assert loaded.score(case).dice == method.score(case).dice
    assert loaded.get_params() == method.get_params()


def test_extra_pairs_and_hippo_input_shape(hippo):
    method, cases, plan = hippo
    # 3D input: image + one channel per label, Z padded to the fitted multiple of 8
    img, _, props = preprocess(cases[0].with_mask(None), plan)
    soft = soft_mask_to_model_space(cases[0].mask, props, method.labels_, plan)
    assert soft.shape == (2,) + img.shape[1:]
    x = method._input(img, soft)
    assert x.shape[0] == 3 and x.shape[1] == method.z_pad_ and x.shape[1] % 8 == 0
    extra = [TrainingPair(cases[0], _bad(cases[0].mask), "user_model")]
    m = CNNRegressor(**{**TINY, "epochs": 1, "pairs_per_case": 1}).fit(cases[:2], plan, _ctx(1, pairs=extra))
    assert m.n_train_ == 3


def test_soft_mask_matches_label_resampling(kvasir):
    _, cases, plan = kvasir
    img, mask_ms, props = preprocess(cases[2], plan)
    soft = soft_mask_to_model_space(cases[2].mask, props, [1], plan)
    assert soft.shape == (1,) + mask_ms.shape
    agree = np.mean((soft[0] > 0.5) == (mask_ms == 1))
    assert agree > 0.99


def test_params_are_checked():
    with pytest.raises(ValueError, match="4 stages"):
        CNNRegressor(widths=(4, 8))
    with pytest.raises(ValueError, match="epochs"):
        CNNRegressor(epochs=0)
    with pytest.raises(TypeError, match="device"):
        CNNRegressor(device="cpu")  # the device is the FitContext's / the loader's
    assert CNNRegressor(widths=[4, 8, 8, 16]).widths == (4, 8, 8, 16)
