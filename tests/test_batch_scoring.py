"""Batched scoring of the network methods: `score_batch` answers what `score` answers, case by case."""

import copy

import numpy as np
import pytest
from test_methods import TINY, _tiny_models

from segqc.methods import make_method
from segqc.methods.base import FitContext
from segqc.plan.fingerprint import compute_fingerprint
from segqc.plan.plan import plan_from_fingerprint
from segqc.utils import torch_threads

NETWORK_METHODS = ["cnn", "autoencoder", "nnqc", "diffusion", "model_uncertainty"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the tests run on shared CPUs, where more threads oversubscribe them (much slower)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def fitted(kvasir_cases, hippo_cases, tmp_path_factory):
    """``fitted(name, data)`` → the method fitted on 3 reference cases (once per module) and 3 other cases."""
    done = {}

    def get(name: str, data: str):
        if (name, data) not in done:
            cases = kvasir_cases if data == "kvasir" else hippo_cases
            plan = plan_from_fingerprint(compute_fingerprint(cases[:3]), max_slice_size=32)
            method = make_method(name, **TINY[name])
            models = _tiny_models(cases[0], plan, tmp_path_factory.mktemp(name)) if method.needs_model else ()
            ctx = FitContext(rng=np.random.default_rng(0), device="cpu", models=models)
            done[name, data] = method.fit(cases[:3], plan, ctx), cases[3:6]
        return done[name, data]

    return get


def _copies(method):
    """Two fresh copies: one scores case by case, the other in batches, which must not fall back to
    scoring case by case (`score_batch` does after an error); nothing remembered per image crosses over."""
    def refuse(case):
        raise AssertionError("score_batch fell back to scoring case by case")

    one, many = copy.deepcopy(method), copy.deepcopy(method)
    many._try_score = refuse
    return one, many


def _assert_same(got, want):
    assert not isinstance(got, Exception), got
    assert got.dice == pytest.approx(want.dice, abs=1e-5)
    assert (got.hd95 is None) == (want.hd95 is None)
    if want.hd95 is not None:
        assert got.hd95 == pytest.approx(want.hd95, abs=1e-5, nan_ok=True)
    assert got.features == pytest.approx(want.features, abs=1e-5, nan_ok=True)
    assert got.maps.keys() == want.maps.keys()
    for k, v in want.maps.items():
        np.testing.assert_allclose(got.maps[k], v, rtol=0, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("data", ["kvasir", "hippocampus"])
@pytest.mark.parametrize("name", NETWORK_METHODS)
def test_batch_equals_one_by_one(name, data, fitted):
    method, cases = fitted(name, data)
    one, many = _copies(method)
    want = [one.score(c) for c in cases]
    got = many.score_batch(cases)
    assert len(got) == len(cases)
    for g, w in zip(got, want):
        _assert_same(g, w)


@pytest.mark.parametrize("data", ["kvasir", "hippocampus"])
@pytest.mark.parametrize("name", NETWORK_METHODS)
def test_batch_with_a_bad_case(name, data, fitted):
    method, (c1, c2, c3) = fitted(name, data)
    wrong = c2.with_mask(np.full_like(c2.mask, 7))
    same_image = c1.with_mask(np.zeros_like(c1.mask))  # another candidate of c1's image: sampled once
    one, many = _copies(method)
    got = many.score_batch([c1, wrong, c3, same_image])
    assert isinstance(got[1], ValueError) and "7" in str(got[1])
    for g, case in zip([got[0], got[2], got[3]], [c1, c3, same_image]):
        _assert_same(g, one.score(case))


def test_features_measures_a_large_batch_on_worker_processes_with_the_same_answers(kvasir_cases, fitted):
    """Enough candidates go to worker processes (`measure_candidates`); answers are those of `score`."""
    from segqc.components.quality_features import MIN_PARALLEL
    from segqc.data.corrupt import sample_corruptions

    method, _ = fitted("features", "kvasir")
    method.n_jobs = 2
    rng = np.random.default_rng(1)
    cases = [c.with_mask(bad) for c in kvasir_cases[3:8] for bad, _ in sample_corruptions(c.mask, c.spacing, rng, 13)]
    assert len(cases) >= MIN_PARALLEL
    one, many = _copies(method)
    one.n_jobs = 1
    got = many.score_batch(cases)
    for g, case in zip(got, cases):
        _assert_same(g, one.score(case))


def test_measuring_on_workers_gives_the_rows_of_measuring_in_process(kvasir_cases):
    """Rows come back in the jobs' order, candidates of one image measured together, whatever the workers."""
    from scipy import ndimage

    from segqc.components.quality_features import MIN_PARALLEL, measure_candidates, reference_stats
    from segqc.data.corrupt import sample_corruptions

    rng = np.random.default_rng(2)
    stats = reference_stats(kvasir_cases, [1], rng)
    jobs = []
    for c in kvasir_cases:
        soft = ndimage.gaussian_filter(c.mask.astype(np.float32), 3)
        proba = np.stack([1 - soft, soft])
        jobs += [(c.with_mask(bad), proba) for bad, _ in sample_corruptions(c.mask, c.spacing, rng, 9)]
    jobs = [jobs[i] for i in rng.permutation(len(jobs))]  # images interleaved: rows must still come back in order
    assert len(jobs) >= MIN_PARALLEL
    done = []
    serial = measure_candidates(jobs, [1], stats, n_jobs=1)
    parallel = measure_candidates(jobs, [1], stats, n_jobs=2, progress=done.append)
    assert parallel == serial
    assert done[-1] == len(jobs) and done == sorted(done)
    assert len({tuple(sorted(r[0].items())) for r in serial}) > len(jobs) // 2  # the candidates differ


def test_a_simulated_sites_copy_of_a_fitting_case_is_judged_on_its_own_pixels(kvasir_cases):
    """A training pair's image may be a simulated site's copy of a reference case: the out-of-fold network
    must judge the changed image, not the original's probabilities kept for the case's other candidates."""
    from segqc.components.quality_features import reference_stats
    from segqc.methods.base import TrainingPair
    from segqc.pipeline.training_pairs import simulated_cases

    case = kvasir_cases[0]
    plan = plan_from_fingerprint(compute_fingerprint(kvasir_cases), max_slice_size=32)

    class Judge:  # stands for the cross-fitted segmenter: notes what it was asked about
        asked: list = []

        def predict_proba(self, image_ms, case_id=None, fold=None):
            self.asked.append((case_id, float(image_ms.mean())))
            return np.stack([np.full(image_ms.shape[1:], 0.5), np.full(image_ms.shape[1:], 0.5)]).astype(np.float32)

    method = make_method("features", n_jobs=1)
    method.plan_, method.labels_, method.segmenter_ = plan, [1], Judge()
    method.ref_stats_ = reference_stats(kvasir_cases, [1], np.random.default_rng(0))
    _, (moved,) = simulated_cases([case], np.random.default_rng(1), 1)
    original_proba = np.zeros((2,) + case.mask.shape, np.float32)
    original_proba[1] = case.mask > 0
    probas = {case.case_id: original_proba}
    pairs = [TrainingPair(case, case.mask), TrainingPair(moved, case.mask), TrainingPair(moved, case.mask)]
    X, y = method._table(pairs, probas, lambda msg: None)
    assert len(method.segmenter_.asked) == 1 and method.segmenter_.asked[0][0] == case.case_id  # once per image
    assert set(probas) == {case.case_id, f"{case.case_id}@site1"}
    assert X[0] != X[1] and X[1] == X[2] and y == [1.0, 1.0, 1.0]


def test_calibration_scores_the_candidates_of_one_image_together_and_answers_in_the_pairs_order(kvasir_cases):
    """`raw_scores` sorts the pairs by image so an image's own work is done once, and puts the answers back."""
    from segqc.methods.base import RawScore, TrainingPair
    from segqc.pipeline.fit import raw_scores

    pairs = [TrainingPair(c, c.mask, f"src{k}") for k in range(3) for c in kvasir_cases[:4]]  # images interleaved

    class Recorder:  # answers each candidate with its position in `pairs`, notes the batches it was given
        name = "recorder"
        batches: list = []

        def score_batch(self, cases):
            self.batches.append([c.case_id for c in cases])
            return [RawScore(dice={1: next(i for i, p in enumerate(pairs) if p.case is c) / 100}) for c in cases]

    method = Recorder()
    got = raw_scores(method, pairs, "calibrating", chunk=3)
    np.testing.assert_allclose(got, np.arange(len(pairs)) / 100)
    assert all(len(set(b)) == 1 for b in method.batches)  # 3 candidates of each image: one chunk per image
