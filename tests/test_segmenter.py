"""segqc's reference segmenter: appearance augmentation, its fold networks as members, `features`' fold scoring."""

import numpy as np
import pytest
import torch

from segqc.components.segmenter import CrossFittedSegmenter
from segqc.data.labels import to_index
from segqc.methods import make_method
from segqc.nets.augment import appearance_jitter
from segqc.plan.preprocess import preprocess


def test_appearance_jitter_changes_the_look_not_the_shape():
    x = torch.randn(32, 3, 40, 48, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    y = appearance_jitter(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    changed = (y - x).abs().flatten(1).amax(1) > 1e-6
    # each change is drawn with probability 1/2: nearly every sample gets at least one, not always the same
    assert int(changed.sum()) >= 24
    torch.manual_seed(0)
    assert torch.equal(appearance_jitter(x), y)  # drawn from torch's seeded generator: reproducible
    assert torch.equal(appearance_jitter(x, p=0.0), x)  # p=0: nothing changes


def test_appearance_jitter_blur_and_resolution_keep_a_flat_image_flat():
    x = torch.full((8, 1, 32, 32), 2.0)
    torch.manual_seed(1)
    y = appearance_jitter(x, p=1.0)
    # gain, offset, gamma and noise move values, but a flat image must not grow edges from padding
    centre_spread = (y[..., 8:24, 8:24] - y[..., 8:24, 8:24].mean(dim=(-1, -2), keepdim=True)).abs().amax()
    edge_spread = (y - y.mean(dim=(-1, -2), keepdim=True)).abs().amax()
    assert edge_spread <= centre_spread * 1.5 + 0.35



@pytest.mark.parametrize("sigma", [0.5, 1.0, 1.5])
def test_appearance_blur_is_a_gaussian_with_edges_replicated(sigma):
    from scipy import ndimage

    from segqc.nets.augment import _blur

    x = torch.randn(2, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    radius = max(1, int(round(2.5 * sigma)))
    # scipy's Gaussian of the same radius ("nearest" = replicated edges), per sample and channel
    want = ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, sigma, sigma), mode="nearest",
                                   radius=(0, 0, radius, radius))
    np.testing.assert_allclose(_blur(x, sigma).numpy(), want, atol=1e-5)

@pytest.fixture(scope="module")
def trained(kvasir_cases):
    from segqc.plan.fingerprint import compute_fingerprint
    from segqc.plan.plan import plan_from_fingerprint

    cases = kvasir_cases[:6]
    plan = plan_from_fingerprint(compute_fingerprint(cases), max_slice_size=32)
    ms = [preprocess(c, plan) for c in cases]
    seg = CrossFittedSegmenter(n_folds=2, epochs=1, channels=(4, 8), device="cpu")
    seg.fit([(im, to_index(mk, plan.labels)) for im, mk, _ in ms], len(plan.labels), np.random.default_rng(0),
            case_ids=[c.case_id for c in cases])
    return seg, ms


def test_members_average_to_the_ensemble(trained):
    seg, ms = trained
    image = ms[0][0]
    members = seg.predict_members(image)
    assert len(members) == seg.n_folds
    np.testing.assert_allclose(np.mean(members, axis=0), seg.predict_proba(image), atol=1e-6)


def test_segmenter_remembers_whether_it_was_augmented(trained):
    seg, _ = trained
    arrays, config = seg.state()
    assert config["params"]["appearance"] is True  # the default: robust to another camera
    again = CrossFittedSegmenter.from_state(arrays, config, device="cpu")
    assert again.appearance is True


def test_fold_scoring_averages_the_members_predictions(kvasir_cases):
    from segqc.methods.base import FitContext
    from segqc.plan.fingerprint import compute_fingerprint
    from segqc.plan.plan import plan_from_fingerprint

    cases = kvasir_cases[:6]
    plan = plan_from_fingerprint(compute_fingerprint(cases), max_slice_size=32)
    m = make_method("features", pairs_per_case=2, n_estimators=10, n_jobs=1, segmenter_epochs=1, fold_scoring=True)
    m.fit(cases[:5], plan, FitContext(rng=np.random.default_rng(0), device="cpu"))
    case = cases[5]
    by_member = [m._predict(case, p)[0] for p in m.segmenter_members(case)]
    assert m.score(case).dice[1] == pytest.approx(float(np.mean(by_member)))
    m.fold_scoring = False  # the averaged segmenter instead: another answer, from the same fit
    averaged = m.score(case).dice[1]
    assert averaged == pytest.approx(m._predict(case, m.segmenter_proba(case))[0])
    # another judge in the segmenter's place: the same score against the same probabilities, and a member's
    # own answer against the others' (a sibling pair, benchmarks/sibling_pairs.py) is another number
    same = m.score_against(case, m.segmenter_proba(case))
    assert same.dice[1] == pytest.approx(averaged) and same.features == m.score(case).features
    first = m.segmenter_members(case)[0]
    assert m.score_against(case, first).dice[1] == pytest.approx(by_member[0])
    # a bundle saved before fold scoring existed keeps answering as it did (the averaged segmenter)
    m.fold_scoring = True
    arrays, config = m.state()
    del config["params"]["fold_scoring"]
    old = type(m).from_state(arrays, config, m.plan_, device="cpu")
    assert old.fold_scoring is False and old.score(case).dice[1] == pytest.approx(averaged)
    assert make_method("features").fold_scoring is False  # the default: the folds' average


def test_snapshot_candidates_are_rendered_from_probabilities(kvasir_cases, monkeypatch):
    """Snapshots become candidates on the case's own grid from their resampled probabilities, not from a
    model-space argmax brought back: that one keeps the model grid's polygonal edges, which a regressor
    learns to recognise as 'made by segqc's segmenter' (and then trusts every smooth mask)."""
    from segqc.data.labels import to_labels
    from segqc.pipeline.training_pairs import segmenter_pairs
    from segqc.plan.fingerprint import compute_fingerprint
    from segqc.plan.plan import plan_from_fingerprint
    from segqc.plan.preprocess import invert_map, invert_mask

    cases = kvasir_cases[:6]
    plan = plan_from_fingerprint(compute_fingerprint(cases), max_slice_size=32)
    # the probabilities each snapshot network gave, to recompute its candidate here
    seen = {}
    snapshot = CrossFittedSegmenter._snapshot

    def spy(self, net, held, tag, render):
        seen.update({(cid, tag): self._proba_with([net], image) for cid, image in held.items()})
        return snapshot(self, net, held, tag, render)

    monkeypatch.setattr(CrossFittedSegmenter, "_snapshot", spy)
    seg, fit_pairs, cal_pairs = segmenter_pairs(cases[:4], cases[4:], plan, np.random.default_rng(0), "cpu",
                                                {"n_folds": 2, "epochs": 3, "channels": (4, 8),
                                                 "snapshot_epochs": (2,), "outsider_architectures": ()})
    assert len(fit_pairs) == 4 and len(cal_pairs) == 2
    differs = 0
    for p in cal_pairs:
        image_ms, _, props = preprocess(p.case.with_mask(None), plan)
        proba = seen[(p.case.case_id, p.source.split(":", 1)[1])]
        assert p.candidate.shape == p.truth.shape
        np.testing.assert_array_equal(p.candidate, to_labels(invert_map(proba, props).argmax(0), plan.labels))
        differs += not np.array_equal(p.candidate, to_labels(invert_mask(proba.argmax(0), props), plan.labels))
    assert differs  # the old way (argmax, then back to the grid) gives other masks


def test_image_cache_serves_one_image_once_and_never_a_changed_one():
    from segqc.components.image_cache import ImageCache

    calls = []
    cache = ImageCache(max_bytes=3 * 64 * 8)
    image = np.zeros((1, 8, 8))

    def compute():
        calls.append(1)
        return np.ones(64)

    a = cache.get(image, (1.0, 1.0), compute)
    assert cache.get(image.copy(), (1.0, 1.0), compute) is a and len(calls) == 1  # same pixels: one computation
    with pytest.raises(ValueError):
        a[0] = 5  # a cached answer is shared: read-only
    changed = image.copy()
    changed[0, 3, 3] = 1e-9
    cache.get(changed, (1.0, 1.0), compute)
    cache.get(image, (1.0, 2.0), compute)
    cache.get(image, (1.0, 1.0), compute, tag="other")
    assert len(calls) == 4  # other pixels, spacing or computation: computed again
    cache.get(np.full((1, 8, 8), 7.0), (1.0, 1.0), compute)  # a fourth entry pushes the oldest out
    cache.get(image, (1.0, 1.0), compute)
    assert len(calls) == 6


def test_budgeted_schedule_ends_annealed_and_never_lengthens_after_the_warm_up():
    """A run the clock cuts short still ends at a learning rate of (nearly) zero: the schedule is fitted
    to the steps the budget affords, and once past its warm-up a faster pace never lengthens it again."""
    from segqc.nets.schedule import BudgetedSchedule

    sched = BudgetedSchedule(1000, seconds=100.0, lr=1.0, warmup=2, timing_steps=None)
    sched.step = 10
    sched.refit(seconds_per_step=1.0, reserve=40.0)  # about 60 s left for steps of 1 s
    assert sched.capped and 68 <= sched.total <= 70
    total = sched.total
    sched.refit(seconds_per_step=0.01)  # faster now: the schedule keeps its length
    assert sched.total == total
    sched.step = sched.total - 1
    assert sched.lr_now() < 0.01


def test_a_slow_start_does_not_cut_the_run():
    """Steps timed while another job held the cores shorten the run; while the learning rate is still
    climbing, the pace of later steps lengthens it again, never beyond the steps it was given, and the
    climb only slows (the learning rate does not jump up)."""
    from segqc.nets.schedule import BudgetedSchedule

    sched = BudgetedSchedule(1000, seconds=100.0, lr=1.0, timing_steps=None, shape="one_cycle")
    sched.step = 20
    sched.refit(seconds_per_step=0.3)  # a slow first epoch: 20 + ~300 steps
    assert sched.capped and sched.total < 400 and sched.warming_up()
    lr = sched.lr_now()
    sched.refit(seconds_per_step=0.05)  # the cores are free again: the run gets its steps back
    assert sched.total == 1000 and not sched.capped and sched.lr_now() <= lr
    sched.step = 400  # past the peak: a faster pace keeps the length, a slower one still shortens
    assert not sched.warming_up()
    sched.refit(seconds_per_step=1e-6)
    assert sched.total == 1000
    sched.refit(seconds_per_step=10.0)
    assert sched.capped and sched.total < 1000


def test_final_network_makes_no_snapshot_and_training_is_recorded(kvasir_cases):
    """Snapshots are taken only from networks that train on: a candidate of the final network would be
    judged by that very network. The epochs each fold network got are recorded."""
    from segqc.plan.fingerprint import compute_fingerprint
    from segqc.plan.plan import plan_from_fingerprint

    plan = plan_from_fingerprint(compute_fingerprint(kvasir_cases[:4]), max_slice_size=32)
    data = [(im, to_index(mk, plan.labels)) for im, mk, _ in (preprocess(c, plan) for c in kvasir_cases[:4])]
    seg = CrossFittedSegmenter(n_folds=2, epochs=2, channels=(4, 8), device="cpu")
    seg.fit(data, 1, np.random.default_rng(0), case_ids=["a", "b", "c", "d"], snapshot_epochs=(1, 2))
    tags = {tag for masks in seg.snapshot_masks_.values() for tag, _ in masks}
    assert tags == {"fold0_ep1", "fold1_ep1"}
    assert [h["epochs"] for h in seg.history_] == [2, 2] and not any(h["capped_by_time"] for h in seg.history_)


def test_one_cycle_shape_is_torchs_while_the_run_keeps_its_length():
    """Uncapped, the budgeted OneCycle gives torch's OneCycleLR learning rates and Adam β₁ step by step
    (the reference segmenter's schedule before it was fitted to the budget, measured better on Kvasir)."""
    from segqc.nets.schedule import BudgetedSchedule

    net = torch.nn.Linear(2, 1)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=120)
    sched = BudgetedSchedule(120, seconds=1e6, lr=2e-3, shape="one_cycle", timing_steps=None)
    for _ in range(120):
        assert sched.lr_now() == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9)
        assert sched.momentum_now() == pytest.approx(opt.param_groups[0]["betas"][0], rel=1e-9)
        opt.step()
        ref.step()
        sched.step += 1
    with pytest.raises(ValueError, match="cosine or one_cycle"):
        BudgetedSchedule(10, 1.0, 1e-3, shape="linear")


@pytest.mark.slow
def test_folds_of_several_architectures_train_save_and_reload(kvasir_cases):
    """Fold networks cycle through the architectures; each is rebuilt as what it was when the bundle loads."""
    from monai.networks.nets import SegResNet, UNet

    from segqc.plan.fingerprint import compute_fingerprint
    from segqc.plan.plan import plan_from_fingerprint

    plan = plan_from_fingerprint(compute_fingerprint(kvasir_cases[:4]), max_slice_size=32)
    ms = [preprocess(c, plan) for c in kvasir_cases[:4]]
    seg = CrossFittedSegmenter(n_folds=3, epochs=1, channels=(8, 16), architectures=["unet", "segresnet"],
                               device="cpu")
    seg.fit([(im, to_index(mk, plan.labels)) for im, mk, _ in ms], 1, np.random.default_rng(0))
    assert [type(n) for n in seg.nets_] == [UNet, SegResNet, UNet]
    assert [h["architecture"] for h in seg.history_] == ["unet", "segresnet", "unet"]
    again = CrossFittedSegmenter.from_state(*seg.state(), device="cpu")
    assert [type(n) for n in again.nets_] == [UNet, SegResNet, UNet]
    np.testing.assert_allclose(again.predict_proba(ms[0][0]), seg.predict_proba(ms[0][0]), atol=1e-5)
    with pytest.raises(ValueError, match="architectures must be among"):
        CrossFittedSegmenter(architectures=("unet", "vit"))
    assert CrossFittedSegmenter(architectures="segresnet").architectures == ("segresnet",)


def test_outsider_networks_make_pairs_of_cases_they_never_trained_on(kvasir_cases):
    """Networks of another architecture, cross-fitted on the fitting cases, segment each case they did not train
    on once trained and after epoch 3 (an unfamiliar architecture's early failures); the pairs name them, one
    group per epoch, and the fit's global torch randomness is left alone."""
    from segqc.pipeline.training_pairs import OUTSIDER_FOLDS, mask_on_grid, outsider_pairs
    from segqc.plan.fingerprint import compute_fingerprint
    from segqc.plan.plan import plan_from_fingerprint

    fit_cases, cal_cases = kvasir_cases[:4], kvasir_cases[4:6]
    plan = plan_from_fingerprint(compute_fingerprint(fit_cases), max_slice_size=32)
    ms = {c.case_id: preprocess(c, plan) for c in fit_cases + cal_cases}
    data = [(ms[c.case_id][0], to_index(ms[c.case_id][1], plan.labels)) for c in fit_cases]
    cal_images = {c.case_id: ms[c.case_id][0] for c in cal_cases}
    seg = CrossFittedSegmenter(n_folds=3, epochs=4, channels=(8, 16), device="cpu")  # the judges' settings
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    fit_pairs, cal_pairs, history = outsider_pairs(
        seg, ["segresnet"], data, fit_cases, cal_images, cal_cases, plan, np.random.default_rng(0),
        lambda cid, proba: mask_on_grid(proba, ms[cid][2], plan))
    assert torch.equal(torch.rand(3), expected)
    assert [h["architecture"] for h in history] == ["segresnet"] * OUTSIDER_FOLDS
    assert all(h["epochs"] == 4 and h["snapshots"] == 1 for h in history)  # epoch 8 is never reached
    # the final networks' masks and the epoch-3 ones: a group each, over every case, each case's by a network
    # that did not train on it
    for pairs, cases in ((fit_pairs, fit_cases), (cal_pairs, cal_cases)):
        assert {p.source for p in pairs} == {"outsider:segresnet_final", "outsider:segresnet_ep3"}
        for source in ("outsider:segresnet_final", "outsider:segresnet_ep3"):
            assert sorted(p.reference_id for p in pairs if p.source == source) == sorted(c.case_id for c in cases)
        assert all(p.candidate.shape == p.truth.shape for p in pairs)


def test_outsiders_trained_without_appearance_changes_segment_the_simulated_sites(kvasir_cases):
    """A network that never learned a new camera's look degrades there: the outsiders train with flips only and
    segment every held-out case at every site (one calibration group per site) and every fitting case at one site
    (training pairs, on the changed image, by the network that did not train on it)."""
    from segqc.pipeline.training_pairs import mask_on_grid, outsider_pairs, simulated_cases
    from segqc.plan.fingerprint import compute_fingerprint
    from segqc.plan.plan import plan_from_fingerprint

    fit_cases, cal_cases = kvasir_cases[:4], kvasir_cases[4:6]
    plan = plan_from_fingerprint(compute_fingerprint(fit_cases), max_slice_size=32)
    ms = {c.case_id: preprocess(c, plan) for c in fit_cases + cal_cases}
    data = [(ms[c.case_id][0], to_index(ms[c.case_id][1], plan.labels)) for c in fit_cases]
    cal_images = {c.case_id: ms[c.case_id][0] for c in cal_cases}
    seg = CrossFittedSegmenter(n_folds=3, epochs=2, channels=(8, 16), device="cpu")
    rng = np.random.default_rng(0)
    sites, moved_cal = simulated_cases(cal_cases, rng, 2)
    fit_pairs, cal_pairs, history = outsider_pairs(
        seg, ["segresnet"], data, fit_cases, cal_images, cal_cases, plan, rng,
        lambda cid, proba: mask_on_grid(proba, ms[cid][2], plan), sites=sites, moved_cal=moved_cal)
    assert all(h["appearance"] is False for h in history)
    at_sites = [p for p in fit_pairs if p.source != "outsider:segresnet_final"]
    assert sorted(p.reference_id for p in at_sites) == sorted(c.case_id for c in fit_cases)
    for p in at_sites:
        original = next(c for c in fit_cases if c.case_id == p.reference_id)
        site = p.reference.meta["site"]
        assert p.source == f"outsider:segresnet_{site}" and p.image_id == f"{p.reference_id}@{site}"
        assert not np.array_equal(p.reference.image, original.image)
        np.testing.assert_array_equal(p.truth, original.mask)
    sources = [p.source for p in cal_pairs]
    assert sources.count("outsider:segresnet_site1") == sources.count("outsider:segresnet_site2") == len(cal_cases)


def test_an_unknown_outsider_architecture_is_refused_before_any_training(kvasir_cases, rng):
    from segqc.pipeline.training_pairs import segmenter_pairs
    from segqc.plan.fingerprint import compute_fingerprint
    from segqc.plan.plan import plan_from_fingerprint

    plan = plan_from_fingerprint(compute_fingerprint(kvasir_cases[:4]), max_slice_size=32)
    with pytest.raises(ValueError, match="outsider_architectures must be among"):
        segmenter_pairs(kvasir_cases[:3], kvasir_cases[3:4], plan, rng, "cpu",
                        {"epochs": 1, "outsider_architectures": ["vit"]})


def test_a_volumetric_outsider_is_refused_on_2d_images_before_any_training(kvasir_cases, rng):
    from segqc.pipeline.training_pairs import segmenter_pairs
    from segqc.plan.fingerprint import compute_fingerprint
    from segqc.plan.plan import plan_from_fingerprint

    plan = plan_from_fingerprint(compute_fingerprint(kvasir_cases[:4]), max_slice_size=32)
    with pytest.raises(ValueError, match="need a 3D plan"):
        segmenter_pairs(kvasir_cases[:3], kvasir_cases[3:4], plan, rng, "cpu",
                        {"epochs": 1, "outsider_architectures": ["unet3d"]})
    with pytest.raises(ValueError, match="need a 3D plan"):  # the judge's own architectures, one named alone
        segmenter_pairs(kvasir_cases[:3], kvasir_cases[3:4], plan, rng, "cpu",
                        {"epochs": 1, "architectures": "unet3d", "outsider_architectures": []})


def test_volumetric_networks_see_whole_volumes_of_any_depth(hippo_cases, monkeypatch):
    """A ``unet3d`` fold network trains on whole volumes (cropped at a random depth when deeper than the
    crop), makes snapshots of the volumes it never trained on, and predicts a volume of any depth."""
    from segqc.nets import samples
    from segqc.pipeline.training_pairs import default_outsiders
    from segqc.plan.fingerprint import compute_fingerprint
    from segqc.plan.plan import plan_from_fingerprint

    assert "unet3d" in default_outsiders(3) and "unet3d" not in default_outsiders(2)
    monkeypatch.setattr(samples, "MAX_DEPTH", 4)  # shallower than the volumes: crops are drawn
    cases = hippo_cases[:4]
    plan = plan_from_fingerprint(compute_fingerprint(cases), max_slice_size=16)
    data = [(im, to_index(mk, plan.labels)) for im, mk, _ in (preprocess(c, plan) for c in cases)]
    assert min(mk.shape[0] for _, mk in data) > 4
    ids = [c.case_id for c in cases]
    seg = CrossFittedSegmenter(n_folds=2, epochs=2, channels=(4, 8, 16), architectures=("unet3d",), device="cpu",
                               appearance=True)
    seg.fit(data, len(plan.labels), np.random.default_rng(0), case_ids=ids, snapshot_epochs=(1,))
    assert all(n.dimensions == 3 for n in seg.nets_) and [h["epochs"] for h in seg.history_] == [2, 2]
    assert sorted(seg.snapshot_masks_) == sorted(ids)  # each volume by the network that never trained on it
    for (image, _), cid in zip(data, ids):
        tag, mask = seg.snapshot_masks_[cid][0]
        assert tag == f"fold{seg.fold_of(cid)}_ep1" and mask.shape == image.shape[1:]
        p = seg.predict_proba(image)
        assert p.shape == (len(plan.labels) + 1, *image.shape[1:]) and np.allclose(p.sum(0), 1, atol=1e-5)
    odd = data[0][0][:, :5]  # a depth its strides do not divide: padded, then cut back
    assert seg.predict_proba(odd).shape[1] == 5
    arrays, config = seg.state()
    again = CrossFittedSegmenter.from_state(arrays, config, device="cpu")
    np.testing.assert_allclose(again.predict_proba(data[0][0]), seg.predict_proba(data[0][0]), atol=1e-6)
    flat = [(im[:, :1], mk[:1]) for im, mk in data]  # 2D images: nothing for a volume to see
    with pytest.raises(ValueError, match="need 3D images"):
        CrossFittedSegmenter(n_folds=2, epochs=1, channels=(4, 8), architectures=("unet3d",), device="cpu").fit(
            flat, len(plan.labels), np.random.default_rng(0))


def test_a_fit_says_when_the_time_budget_cut_the_reference_segmenter_short(kvasir_cases, rng, capsys):
    """The segmenter's schedule is fitted to a time budget: when that budget stops it early, the user is told
    that the judge is weaker than planned and how to give it its full schedule."""
    from segqc.pipeline.training_pairs import segmenter_pairs
    from segqc.plan.fingerprint import compute_fingerprint
    from segqc.plan.plan import plan_from_fingerprint

    plan = plan_from_fingerprint(compute_fingerprint(kvasir_cases[:4]), max_slice_size=32)
    seg, _, _ = segmenter_pairs(kvasir_cases[:3], kvasir_cases[3:4], plan, rng, "cpu",
                                {"n_folds": 2, "epochs": 3, "channels": (4, 8), "max_minutes": 1e-5,
                                 "snapshot_epochs": (), "outsider_architectures": ()})
    assert all(h["epochs"] < 3 for h in seg.history_)  # a budget this small ends before any epoch
    err = " ".join(capsys.readouterr().err.split())
    assert "cut 2 of 2 fold networks short of 3 epochs" in err and "segmenter.max_minutes" in err


def test_snapshots_run_slices_in_batches_with_the_answers_of_one_image_at_a_time(rng):
    """Batching the held-out images' slices changes no probability: the networks normalise each slice alone."""
    from segqc.components.segmenter import _build, _unet_kwargs

    for architecture in ("unet", "segresnet"):
        net = _build(_unet_kwargs(1, 3, (8, 16)), architecture).eval()
        images = [rng.normal(size=(1, z, 32, 32)).astype(np.float32) for z in (1, 5, 3)]  # volumes of 1–5 slices
        batched = CrossFittedSegmenter._probas_with(net, images, batch=4)  # batches cut across the volumes
        assert [p.shape for p in batched] == [(3, z, 32, 32) for z in (1, 5, 3)]
        for image, p in zip(images, batched):
            np.testing.assert_allclose(p, CrossFittedSegmenter._proba_with([net], image), atol=1e-5)
    assert CrossFittedSegmenter._probas_with(net, []) == []
