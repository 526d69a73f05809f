"""The shift score: how far a batch's images are from the reference images (`segqc.calibration.shift`)."""

import numpy as np
from conftest import SAMPLE
from scipy import ndimage as ndi

from segqc.calibration.shift import appearance, appearance_names, shift_score
from segqc.data import load_dataset


def _kvasir():
    return [r.load() for r in load_dataset(SAMPLE / "kvasir" / "reference")]


def test_descriptor_names_match_and_volumes_work(hippo_cases):
    c = _kvasir()[0]
    d = appearance(c.image, c.spacing)
    assert d.shape == (len(appearance_names(3)),) and np.all(np.isfinite(d))
    v = hippo_cases[0]
    assert appearance(v.image, v.spacing).shape == (len(appearance_names(1)),)


def test_alike_images_score_low_and_a_new_camera_high():
    cases = _kvasir()
    desc = np.array([appearance(c.image, c.spacing) for c in cases])
    ref, alike = desc[:24], desc[24:]
    same = shift_score(ref, alike)
    assert same["score"] < 0.5 and same["warning"] is None

    def new_camera(img):  # darker, blurred, noisy
        x = np.clip((img / 255.0) ** 2.2, 0, 1)
        x = ndi.gaussian_filter(x, (0, 2, 2)) + np.random.default_rng(0).normal(0, 0.03, x.shape)
        return np.clip(x, 0, 1) * 255

    moved = np.array([appearance(new_camera(c.image), c.spacing) for c in cases[24:]])
    far = shift_score(ref, moved)
    assert far["score"] >= 0.9 and "unlike the reference images" in far["warning"]
    assert far["distance_ratio"] > same["distance_ratio"]
    assert far["most_different"][0]["descriptor"] in appearance_names(3)


def test_too_few_cases_give_no_score():
    rng = np.random.default_rng(0)
    out = shift_score(rng.normal(size=(20, 4)), rng.normal(size=(3, 4)))
    assert np.isnan(out["score"]) and out["warning"] is None and out["n_batch"] == 3


def test_appearance_cells_that_were_changed_are_left_out_of_the_batch_shift():
    from segqc.pipeline.outputs import batch_shift

    rng = np.random.default_rng(0)
    width = len(appearance_names(3))
    ref = rng.normal(size=(30, width))
    rows = [{"appearance": ";".join(f"{v:.7g}" for v in x)} for x in rng.normal(size=(12, width))]
    whole = batch_shift(rows, ref)
    assert whole["n_batch"] == 12 and "unreadable" not in whole
    cell = rows[0]["appearance"]
    edited = rows + [{"appearance": cell.replace(";", ";oops", 1)}, {"appearance": cell.rsplit(";", 1)[0]},
                     {"appearance": "inf;" + cell.split(";", 1)[1]}, {}]
    out = batch_shift(edited, ref)  # the run's end must not fail on them, nor measure them
    assert out["n_batch"] == 12 and out["unreadable"] == 3 and out["score"] == whole["score"]
    assert batch_shift([{"appearance": "x"}], ref) is None and batch_shift(rows, None) is None

    from segqc.report.template import _summary  # the report says what was left out

    info = {"n": 16, "n_ok": 16, "n_error": 0, "n_review": 3, "tau": 0.8, "shift": out}
    assert "3 edited appearance cells left out" in _summary(info, {"all": {"mean_dice": 0.7}})
