"""Sampling sources, exact TTA inversion, and aggregations on hand-made probability maps."""

import json

import numpy as np
import pytest
import torch

from segqc.components.uncertainty import (
    AGGREGATIONS,
    TTATransform,
    aggregate,
    binary_entropy,
    sample_probabilities,
    tta_transforms,
    uncertainty_maps,
)
from segqc.user_models import Preprocessing, TorchModel, load_model


def _smooth(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((1, 2, *[max(2, s // 4) for s in shape]), generator=g)
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return torch.nn.functional.interpolate(x, size=shape, mode=mode, align_corners=False)


@pytest.mark.parametrize("shape", [(32, 48), (12, 32, 40)])
def test_tta_inverse(shape):
    nd = len(shape)
    x = _smooth(shape)
    ts = tta_transforms(10, nd, np.random.default_rng(1))
    assert ts[0] == TTATransform() and len(ts) == 10
    for t in ts:
        # geometry: the inverse map composed with the forward one is the identity
        a, b = t.matrix(shape)[:, :-1].double(), t.inverse_matrix(shape)[:, :-1].double()
        assert torch.allclose(a @ b, torch.eye(nd, dtype=torch.float64), atol=1e-6)
        back = t.inverse(TTATransform(flips=t.flips, angle=t.angle, scale=t.scale).forward(x))
        if not t.is_affine:
            assert torch.equal(back, x)  # flips are undone exactly
        else:
            # interpolated twice: exact up to interpolation, away from the corners that rotate out
            c = tuple(slice(s // 4, s - s // 4) for s in shape)
            err = (back - x)[(..., *c)].abs()
            assert err.mean() < 0.01 and err.max() < 0.15
        assert t.forward(x).shape == x.shape
    # a 90° rotation on a square grid is a pure permutation: the inverse must be exact
    t = TTATransform(angle=90.0)
    sq = _smooth((16, 16))
    assert torch.allclose(t.inverse(t.forward(sq)), sq, atol=1e-5)


def test_intensity_jitter_needs_no_inverse():
    x = _smooth((16, 16))
    t = TTATransform(gain=1.1, bias=0.05)
    assert torch.equal(t.inverse(x), x)
    assert torch.allclose(t.forward(x), x * 1.1 + 0.05 * x.std())


def _samples(*fg_maps):
    fg = np.stack(fg_maps).astype(np.float32)
    return np.stack([1 - fg, fg], 1)


def test_aggregations_known_answers():
    m = np.zeros((20, 20), bool)
    m[5:15, 5:15] = True
    cand = m.astype(np.uint8)
    certain = aggregate(_samples(m, m, m), cand, [0, 1])
    assert set(certain) == set(AGGREGATIONS)
    for agg in AGGREGATIONS:  # identical, certain samples that agree with the candidate: perfect quality
        assert certain[agg][1] == pytest.approx(1.0, abs=1e-4), agg
    half = aggregate(_samples(np.full((20, 20), 0.5), np.full((20, 20), 0.5)), cand, [0, 1])
    for agg in ("mean_entropy", "foreground_entropy", "boundary_excluded_entropy", "patch_min_confidence"):
        assert half[agg][1] == pytest.approx(0.0, abs=1e-4), agg
    assert half["mutual_information"][1] == pytest.approx(1.0, abs=1e-4)  # same sample twice: no epistemic part
    # two certain samples that disagree on the right half: epistemic uncertainty there
    left = m.copy()
    left[:, 10:] = False
    dis = aggregate(_samples(m, left), cand, [0, 1])
    assert dis["pairwise_dice"][1] == pytest.approx(2 * 50 / (100 + 50))
    # mean p = 0.5 on the right half (50 px), entropy 1 there; weights max(p, cand) = 1 on the candidate
    assert dis["foreground_entropy"][1] == pytest.approx(1 - 50 / 100, abs=1e-4)
    assert dis["mutual_information"][1] == pytest.approx(1 - 50 / 100, abs=1e-4)
    assert dis["mean_entropy"][1] == pytest.approx(1 - 50 / 400, abs=1e-4)
    assert dis["patch_min_confidence"][1] < 0.5
    # mean mask = argmax of the mean (0.5 vs 0.5 → background): the left half
    assert dis["candidate_dice"][1] == pytest.approx(2 * 50 / (100 + 50))
    empty = aggregate(_samples(m, m), np.zeros_like(cand), [0, 1])
    assert empty["candidate_dice"][1] == 0.0
    one = aggregate(_samples(m), cand, [0, 1])
    assert np.isnan(one["pairwise_dice"][1])
    with pytest.raises(ValueError, match="do not match"):
        aggregate(_samples(m), cand[:5], [0, 1])


def test_binary_entropy_and_maps():
    assert binary_entropy(np.array([0.5]))[0] == pytest.approx(1.0)
    assert binary_entropy(np.array([0.0, 1.0])).max() < 1e-5
    m = np.zeros((8, 8), bool)
    m[2:6, 2:6] = True
    maps = uncertainty_maps(_samples(m, ~m), [0, 5])
    assert maps["entropy"].shape == (8, 8) and maps["entropy"].dtype == np.float32
    assert np.allclose(maps["entropy"], 1.0, atol=1e-4) and np.allclose(maps["mutual_information"], 1.0, atol=1e-4)
    assert np.allclose(maps["variance"], 1.0)
    assert set(np.unique(maps["pgt"])) <= {0, 5}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(spatial_dims=2, in_channels=3, out_channels=1, channels=[4, 8], strides=[2], num_res_units=0,
               dropout=0.3).eval()
    d = tmp_path_factory.mktemp("m")
    paths = []
    for i in range(2):
        torch.manual_seed(i)
        for p in net.parameters():
            p.data.normal_(0, 0.3)
        path = d / f"net{i}.pt"
        torch.jit.script(net).save(str(path))
        (d / f"net{i}.pt.json").write_text(json.dumps({"input_size": [32, 32], "preprocessing": "pixel/255"}))
        paths.append(path)
    return [load_model(p, "torchscript", device="cpu") for p in paths]


def test_sample_probabilities(tiny, kvasir_cases):
    case = kvasir_cases[0]
    rng = np.random.default_rng
    for src, n in [("mc_dropout", 5), ("tta", 6), ("ensemble", 2)]:
        s = sample_probabilities(tiny, case.image, source=src, n_samples=n, rng=rng(0), batch_size=4)
        assert s.shape == (n, 2, *case.shape) and s.dtype == np.float32
        assert np.allclose(s.sum(1), 1, atol=1e-5)
        again = sample_probabilities(tiny, case.image, source=src, n_samples=n, rng=rng(0), batch_size=4)
        assert np.allclose(s, again, atol=1e-6), src  # seeded: repeatable
        if src != "ensemble":
            assert s.std(0).max() > 0, src
    # the identity transform comes first: TTA sample 0 is the plain prediction
    s = sample_probabilities(tiny, case.image, source="tta", n_samples=2)
    assert np.allclose(s[0], tiny[0].predict_proba(case.image), atol=1e-5)
    with pytest.raises(ValueError, match="at least 2 models"):
        sample_probabilities(tiny[:1], case.image, source="ensemble")
    with pytest.raises(ValueError, match="Did you mean 'tta'"):
        sample_probabilities(tiny, case.image, source="ta")
    nodrop = TorchModel(torch.nn.Conv2d(3, 1, 1), Preprocessing(input_size=(16, 16)), device="cpu")
    with pytest.raises(ValueError, match="dropout"):
        sample_probabilities([nodrop], case.image, source="mc_dropout")


def test_method_single_aggregation_and_maps(tiny, kvasir_cases):
    from segqc.methods import make_method
    from segqc.methods.base import FitContext
    from segqc.plan.fingerprint import compute_fingerprint
    from segqc.plan.plan import plan_from_fingerprint

    cases = kvasir_cases[:3]
    plan = plan_from_fingerprint(compute_fingerprint(cases), max_slice_size=32)
    m = make_method("model_uncertainty", aggregation="ensemble:pairwise_dice", n_samples=2)
    with pytest.raises(ValueError, match="needs the segmentation model"):
        m.fit(cases, plan, FitContext(rng=np.random.default_rng(0), device="cpu"))
    m.fit(cases, plan, FitContext(rng=np.random.default_rng(0), device="cpu", models=tiny))
    assert m.sources_ == ["ensemble"]
    s = m.score(cases[0])
    s_all = sample_probabilities(tiny, cases[0].image, source="ensemble")
    assert s.dice[1] == pytest.approx(aggregate(s_all, cases[0].mask, [0, 1])["pairwise_dice"][1])
    for key in ("entropy", "variance", "mutual_information", "pgt", "error"):
        assert s.maps[key].shape == cases[0].shape, key
    assert set(m.last_seconds) == {"ensemble"}
    # a loaded method reopens the model files its state refers to, on the loader's device
    arrays, config = m.state()
    back = type(m).from_state(arrays, json.loads(json.dumps(config)), plan, device="cpu")
    assert back.score(cases[0]).dice == pytest.approx(s.dice)
    assert [x.path for x in back._get_models()] == [x.path for x in tiny]
    # an in-memory model has no file to refer to: its state is refused, never saved without it
    mem = TorchModel(torch.nn.Conv2d(3, 2, 1), Preprocessing(input_size=(16, 16)), device="cpu")
    alone = make_method("model_uncertainty", aggregation="tta:candidate_dice", n_samples=2)
    alone.fit(cases, plan, FitContext(rng=np.random.default_rng(0), device="cpu", models=[mem]))
    with pytest.raises(ValueError, match="in-memory model"):
        alone.state()
    # parameters are checked when the method is made, before any sampling
    with pytest.raises(ValueError, match="learned"):
        make_method("model_uncertainty", aggregation="pairwise_dice")
    with pytest.raises(ValueError, match="Did you mean 'tta'"):
        make_method("model_uncertainty", sources="ta")
    with pytest.raises(ValueError, match="needs at least 2 models|needs source"):
        make_method("model_uncertainty", aggregation="ensemble:pairwise_dice").fit(
            cases, plan, FitContext(rng=np.random.default_rng(0), device="cpu", models=tiny[:1]))


@pytest.mark.slow
def test_cli_fit_predict_with_model(tiny, sample, tmp_path):
    """`segqc fit/predict --model ... --model-kind torchscript`: the bundle refers to the files, maps are written."""
    import csv
    import shutil

    from PIL import Image

    from segqc.cli import build_parser, main
    from segqc.engines.batch import read_rows

    args = build_parser().parse_args(["bench", "c.csv", "--bundle", "b", "--out", "o", "--model", "a.onnx",
                                      "--model", "b.onnx", "--model-kind", "onnx"])
    assert [str(p) for p in args.models] == ["a.onnx", "b.onnx"] and args.model_kind == "onnx"
    ref = tmp_path / "ref"
    for sub in ("images", "masks"):
        (ref / sub).mkdir(parents=True)
        for p in sorted((sample / "kvasir" / "reference" / sub).iterdir())[:8]:
            shutil.copy(p, ref / sub / p.name)
    models = [m.path for m in tiny]
    opts = sum([["--model", p] for p in models], []) + ["--model-kind", "torchscript"]
    assert main(["fit", str(ref), "--out", str(tmp_path / "b"), "--methods", "model_uncertainty",
                 "--set", "model_uncertainty.n_samples=2", "--set", "model_uncertainty.n_estimators=10",
                 "--set", "segmenter.epochs=1", "--set", "segmenter.snapshot_epochs=[1]", "--device", "cpu",
                 *opts]) == 0
    doc = json.loads((tmp_path / "b" / "bundle.json").read_text())
    refs = doc["methods"]["model_uncertainty"]["config"]["fitted"]["model_refs_"]
    assert [r["path"] for r in refs] == models and all(r["kind"] == "torchscript" for r in refs)
    src = list(csv.DictReader(open(sample / "kvasir" / "candidates.csv")))[:3]
    man = tmp_path / "cands.csv"
    with open(man, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["case_id", "image", "mask"])
        w.writeheader()
        for r in src:
            w.writerow({"case_id": r["case_id"], "image": sample / "kvasir" / r["image"],
                        "mask": sample / "kvasir" / r["mask"]})
    # no --model: the bundle reopens the files it refers to
    assert main(["predict", str(man), "--bundle", str(tmp_path / "b"), "--out", str(tmp_path / "qc")]) == 0
    rows = read_rows(tmp_path / "qc" / "predictions.csv")
    assert len(rows) == 3 and all(0 <= float(r["dice_pred"]) <= 1 for r in rows)
    for r in src:
        size = Image.open(sample / "kvasir" / r["image"]).size
        for key in ("entropy", "variance", "mutual_information", "error", "pgt"):
            path = tmp_path / "qc" / "maps" / "model_uncertainty" / f"{r['case_id']}_{key}.png"
            assert Image.open(path).size == size, key
