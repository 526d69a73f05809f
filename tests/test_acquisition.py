"""Simulated acquisition sites (`segqc.data.acquisition`) and the calibration pairs made with them."""

import json

import numpy as np
import pytest

from segqc.data.acquisition import Site, draw_sites


def _image(shape, rng):
    yy, xx = np.mgrid[: shape[-2], : shape[-1]]
    base = 100 + 80 * np.sin(xx / 5.0) * np.cos(yy / 7.0)
    return np.broadcast_to(base, shape).astype(np.float32) + rng.normal(0, 1, shape).astype(np.float32)


@pytest.mark.parametrize("shape", [(3, 40, 50), (1, 6, 33, 27)])
def test_a_site_keeps_shape_and_range_and_moves_more_when_more_severe(shape, rng):
    img = _image(shape, rng)
    sites = draw_sites(4, shape[0], np.random.default_rng(1))
    assert [s.severity for s in sites] == [0.25, 0.5, 0.75, 1.0] and len({s.name for s in sites}) == 4
    moved = [s.acquire(img, np.random.default_rng(2)) for s in sites]
    for m in moved:
        assert m.shape == img.shape and m.dtype == np.float32
        # each channel stays within its own original range: a photo stays 0–255, a CT keeps its window
        for c in range(shape[0]):
            assert img[c].min() - 1e-3 <= m[c].min() and m[c].max() <= img[c].max() + 1e-3
    change = [float(np.mean(np.abs(m - img))) for m in moved]
    assert change[0] > 0 and change[-1] > change[0]
    # a site is fixed numbers: the same image through it twice differs only by the noise drawn
    again = sites[1].acquire(img, np.random.default_rng(2))
    np.testing.assert_array_equal(again, moved[1])


def test_identity_site_changes_nothing_and_slices_stay_apart(rng):
    img = _image((1, 4, 30, 30), rng)
    same = Site("s0", 0.0, (1.0,), (0.0,), 1.0, 0.0, 0.0, 1.0)
    np.testing.assert_allclose(same.acquire(img, rng), img, atol=1e-3)
    # blur and resolution act in-plane only: a volume's slices are not mixed
    img[:, 2] = img[:, 2].min()
    soft = Site("s1", 1.0, (1.0,), (0.0,), 1.0, 2.0, 0.0, 0.5).acquire(img, rng)
    assert np.ptp(soft[:, 2]) < 1e-3 and np.ptp(soft[:, 1]) > 1.0


@pytest.mark.slow
def test_fit_calibrates_on_simulated_sites(tiny_bundle):
    """Every held-out case is segmented again at each simulated site; those pairs are calibration pairs."""
    info = json.loads((tiny_bundle("kvasir") / "bundle.json").read_text())["info"]
    sources = info["calibration_pairs"]["source"]
    cal_ids = set(info["calibration_ids"])
    for k in range(1, 5):
        at_site = [i for i, s in enumerate(sources) if s == f"segmenter:site{k}"]
        assert len(at_site) == len(cal_ids)
        assert {info["calibration_pairs"]["reference_id"][i] for i in at_site} == cal_ids
    assert "systematic_error" in info["fit"]["features"]


def test_site_candidates_come_from_one_fold_network_never_the_average(kvasir_cases, rng):
    """The folds' average is the opinion QC judges against: a candidate equal to it would look perfect."""
    from segqc.pipeline.training_pairs import simulated_cases, site_pairs
    from segqc.plan.fingerprint import compute_fingerprint
    from segqc.plan.plan import plan_from_fingerprint

    cases = kvasir_cases[:3]
    plan = plan_from_fingerprint(compute_fingerprint(cases), max_slice_size=32)

    class Recorder:  # stands for a fitted 2-fold segmenter: answers "background" and notes which fold it was
        nets_ = [object(), object()]
        folds: list = []

        def predict_proba(self, image_ms, case_id=None, fold=None):
            self.folds.append(fold)
            return np.stack([np.ones(image_ms.shape[1:]), np.zeros(image_ms.shape[1:])]).astype(np.float32)

    seg = Recorder()
    sites, moved = simulated_cases(cases, rng, 2)
    assert [s.name for s in sites] == ["site1", "site2"]
    assert [c.meta["site"] for c in moved] == ["site1"] * 3 + ["site2"] * 3
    pairs = site_pairs(seg, moved, plan)
    assert all(p.image_id == f"{c.case_id}@{c.meta['site']}" for p, c in zip(pairs, moved))
    assert len(pairs) == 6 and [p.source for p in pairs] == ["segmenter:site1"] * 3 + ["segmenter:site2"] * 3
    assert seg.folds == [0, 1, 0, 0, 1, 0]  # one fold network per case, in turn
    for p, c in zip(pairs, cases + cases):
        assert p.reference_id == c.case_id and not np.array_equal(p.reference.image, c.image)
        np.testing.assert_array_equal(p.truth, c.mask)
        assert p.candidate.shape == c.mask.shape and not p.candidate.any()
