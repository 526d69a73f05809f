"""Atlas-based RCA and its SimpleITK registration, on the real sample cases (tiny settings)."""

import numpy as np
import pytest
from scipy import ndimage

from segqc.components.pgt_scoring import diagonal_mm
from segqc.components.registration import register, warp_labels
from segqc.methods.base import FitContext
from segqc.methods.rca import RCA, _to_atlas_space, _to_original, _unpad
from segqc.metrics import binary_dice, dice
from segqc.plan.fingerprint import compute_fingerprint
from segqc.plan.plan import plan_from_fingerprint
from segqc.plan.preprocess import invert_mask, preprocess

FAST = {"iterations": (30, 5), "shrink": (2, 1)}


def _ctx(seed=0):
    return FitContext(rng=np.random.default_rng(seed), device="cpu")


def _atlas(case, plan):
    im, mk, props = preprocess(case, plan)
    lum, spacing = _to_atlas_space(im, props, plan.modality)
    return lum, _unpad(mk, props).reshape(lum.shape), spacing


@pytest.fixture(scope="module")
def kvasir_plan(kvasir_cases):
    return plan_from_fingerprint(compute_fingerprint(kvasir_cases), max_slice_size=64)


def test_registration_recovers_a_known_2d_motion(kvasir_cases, kvasir_plan):
    lum, mask, sp = _atlas(kvasir_cases[0], kvasir_plan)
    moved = ndimage.shift(ndimage.rotate(lum, 8, reshape=False, mode="nearest"), (4, -3), mode="nearest")
    moved_mask = ndimage.shift(ndimage.rotate(mask, 8, reshape=False, order=0), (4, -3), order=0)
    before = binary_dice(moved_mask > 0, mask > 0)
    tx, metric = register(lum, moved, sp, sp, stages=("rigid", "affine"), iterations=60)
    after = binary_dice(warp_labels(moved_mask, sp, tx, lum.shape, sp, [1]) > 0, mask > 0)
    assert np.isfinite(metric) and metric < 0  # Mattes MI is reported negated
    assert before < 0.85 and after > 0.93, (before, after)


def test_registration_3d_shift_and_bad_input(hippo_cases):
    plan = plan_from_fingerprint(compute_fingerprint(hippo_cases), max_slice_size=64)
    lum, mask, sp = _atlas(hippo_cases[0], plan)
    moved, moved_mask = ndimage.shift(lum, (2, 3, -2), order=1), ndimage.shift(mask, (2, 3, -2), order=0)
    tx, _ = register(lum, moved, sp, sp, stages=("rigid",), iterations=40)
    labels = sorted(plan.labels)
    assert dice(warp_labels(moved_mask, sp, tx, lum.shape, sp, [1, 2]), mask, [1, 2]) > \
        dice(moved_mask, mask, [1, 2]) + 0.2, labels
    with pytest.raises(ValueError, match="Did you mean 'affine'"):
        register(lum, moved, sp, sp, stages=("afine",))
    with pytest.raises(ValueError, match="both be 2D or 3D"):
        register(lum, moved[0], sp, sp[1:])


def test_rca_scores_rgb_good_above_bad_and_handles_empty(kvasir_cases, kvasir_plan):
    m = RCA(k=3, cache_size=8, **FAST).fit(kvasir_cases, kvasir_plan, _ctx())
    case = kvasir_cases[2]  # one of the atlases: its own expert mask registers onto itself
    good = m.score(case)
    assert good.dice[1] > 0.9 and good.features["n_atlases"] == 3
    shifted = np.roll(case.mask, case.mask.shape[0] // 3, axis=0)
    bad = m.score(case.with_mask(shifted))
    assert bad.dice[1] < good.dice[1] - 0.2
    # the second and third candidates of an image reuse its registrations
    assert bad.features["register_seconds"] == good.features["register_seconds"]
    empty = m.score(case.with_mask(np.zeros_like(case.mask)))
    assert empty.dice[1] == 0.0 and np.isfinite(empty.mean_dice)
    # exactly one of candidate and best atlas empty: HD95 is the image diagonal (segqc.components.pgt_scoring)
    assert empty.hd95[1] == pytest.approx(diagonal_mm(case.shape, case.spacing))
    for s in (good, bad, empty):
        assert s.maps["pgt"].shape == case.shape and s.maps["error"].shape == case.shape
        assert s.maps["error"].dtype == np.float32
        assert 0.0 <= s.maps["error"].min() and s.maps["error"].max() <= 1.0
        assert set(np.unique(s.maps["pgt"]).tolist()) <= {0, 1}
    # with one atlas, the most similar one (the image itself), the vote is its expert mask
    one = RCA(k=1, **FAST).fit(kvasir_cases, kvasir_plan, _ctx()).score(case)
    assert binary_dice(one.maps["pgt"] > 0, case.mask > 0) > 0.9
    assert one.dice[1] == pytest.approx(one.features["dice_vote_1"])


def test_rca_params_and_atlas_cap(kvasir_cases, kvasir_plan):
    with pytest.raises(ValueError, match="Did you mean 'bspline'"):
        RCA(stages=("affine", "bspine"))
    with pytest.raises(ValueError, match="iterations"):
        RCA(stages=("affine", "bspline"), iterations=(5, 5, 5))
    with pytest.raises(ValueError, match="'k' = 0 must be > 0"):
        RCA(k=0)
    with pytest.raises(ValueError, match="bspline_shrink"):
        RCA(bspline_shrink=())
    with pytest.raises(ValueError, match="unknown aggregate"):
        RCA(aggregate="median")
    m = RCA(k=2, max_atlases=3, n_jobs=1, cache_size=0, stages=("affine",), iterations=10)
    m.fit(kvasir_cases, kvasir_plan, _ctx())
    assert len(m.atlas_ids_) == 3 and set(m.atlas_ids_) <= {c.case_id for c in kvasir_cases}
    arrays, config = m.state()
    assert arrays["atlas_images_"].dtype == np.float16 and arrays["atlas_masks_"].dtype == np.uint8
    shapes = config["fitted"]["atlas_shapes_"]
    assert arrays["atlas_images_"].size == sum(int(np.prod(s)) for s in shapes) == arrays["atlas_masks_"].size
    assert not any(k.startswith("_thumbs") for k in arrays)  # rebuilt at load, not stored
    s = m.score(kvasir_cases[5])
    assert set(s.dice) == {1} and 0.0 <= s.dice[1] <= 1.0
    back = RCA.from_state(arrays, config, kvasir_plan, device="cpu")
    again = back.score(kvasir_cases[5])
    assert again.dice == s.dice and np.array_equal(again.maps["pgt"], s.maps["pgt"])
    short = {**arrays, "atlas_masks_": arrays["atlas_masks_"][:-1]}
    with pytest.raises(ValueError, match="the atlas shapes need"):
        RCA.from_state(short, config, kvasir_plan, device="cpu")


def test_warped_atlases_back_on_the_original_grid_as_invert_mask(kvasir_cases, hippo_cases, kvasir_plan):
    """The stacked inversion gives every warped atlas exactly `invert_mask`'s answer."""
    plan3 = plan_from_fingerprint(compute_fingerprint(hippo_cases), max_slice_size=64)
    for case, plan, labels in ((kvasir_cases[0], kvasir_plan, [1]), (hippo_cases[0], plan3, [1, 2])):
        _, mk, props = preprocess(case, plan)
        atlas = _unpad(mk, props)
        stack = np.stack([atlas, np.roll(atlas, 3, axis=-1), np.zeros_like(atlas)])
        stack = stack[:, 0] if props["ndim"] == 2 else stack
        out = _to_original(stack.astype(np.uint8), props)
        assert out.shape == (3, *case.shape) and out.dtype == np.uint8
        for one, got in zip(stack, out):
            pad = [(0, 0)] * (one.ndim - 2) + [tuple(p) for p in props["pad"]]
            np.testing.assert_array_equal(got, invert_mask(np.pad(one, pad), props))
        assert set(np.unique(out)) <= {0, *labels}


def test_rca_3d_two_labels_vote_and_mean(hippo_cases):
    plan = plan_from_fingerprint(compute_fingerprint(hippo_cases), max_slice_size=64)
    case = hippo_cases[0]
    scores = {}
    for agg in ("max", "vote"):
        m = RCA(k=2, aggregate=agg, stages=("affine", "bspline"), iterations=(20, 5), bspline_shrink=(2,))
        scores[agg] = m.fit(hippo_cases[1:], plan, _ctx()).score(case)
    s = scores["max"]
    assert set(s.dice) == {1, 2} and set(s.hd95) == {1, 2}
    assert all(np.isfinite(v) and v >= 0 for v in s.hd95.values())  # mm, both masks non-empty
    # two unseen atlases of another head: a fair but imperfect agreement with the expert mask
    assert 0.3 < s.dice[1] <= 1.0 and 0.3 < s.dice[2] <= 1.0
    assert s.features["dice_max_1"] >= s.features["dice_mean_1"] - 1e-12
    assert scores["vote"].dice[1] == pytest.approx(s.features["dice_vote_1"])
    assert s.maps["pgt"].shape == case.shape
