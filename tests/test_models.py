"""Model adapters: one tiny MONAI UNet saved as monai (config + state_dict), TorchScript and ONNX."""

import json
import warnings

import numpy as np
import pytest
import torch

from segqc.user_models import CallableModel, Preprocessing, TorchModel, load_model, model_ref, models_from_refs

KWARGS = {"spatial_dims": 2, "in_channels": 3, "out_channels": 1, "channels": [4, 8], "strides": [2],
          "num_res_units": 0, "dropout": 0.2}
PRE = {"input_size": [32, 32], "preprocessing": "resize bilinear; intensity = pixel/255 (RGB)",
       "output": "1 logit channel; sigmoid"}


def _net():
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    return UNet(**KWARGS).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The same network in the three file formats (ONNX exported with the TorchScript exporter)."""
    d = tmp_path_factory.mktemp("models")
    net = _net()
    (d / "monai").mkdir()
    (d / "monai" / "config.json").write_text(json.dumps({"class": "UNet", "kwargs": KWARGS, "epochs": 3, **PRE}))
    torch.save({k: v.half() for k, v in net.state_dict().items()}, d / "monai" / "ep03.pt")  # like the benchmark
    torch.save(net.state_dict(), d / "monai" / "ep01.pt")
    torch.jit.script(net).save(str(d / "net.pt"))
    (d / "net.pt.json").write_text(json.dumps(PRE))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kw = {"input_names": ["x"], "output_names": ["y"], "dynamic_axes": {"x": {0: "b"}, "y": {0: "b"}}}
        try:
            torch.onnx.export(net, torch.rand(1, 3, 32, 32), str(d / "net.onnx"), dynamo=False, **kw)
        except TypeError:  # torch < 2.5 has only the TorchScript exporter and no `dynamo` argument
            torch.onnx.export(net, torch.rand(1, 3, 32, 32), str(d / "net.onnx"), **kw)
    (d / "net.onnx.json").write_text(json.dumps(PRE))
    return d, net


@pytest.fixture()
def image():
    return np.random.default_rng(0).integers(0, 256, (3, 40, 48)).astype(np.float32)


def test_preprocessing_from_benchmark_config():
    pp = Preprocessing.from_config(PRE)
    assert pp.input_size == (32, 32) and pp.intensity == "divide255" and pp.activation == "sigmoid"
    assert Preprocessing.from_dict(pp.to_dict()) == pp
    with pytest.raises(ValueError, match="Did you mean 'zscore'"):
        Preprocessing(intensity="zscor")


def test_three_formats_agree_with_the_module(saved, image):
    d, net = saved
    ref = TorchModel(net, Preprocessing.from_config(PRE), device="cpu").predict_proba(image)
    assert ref.shape == (2, 40, 48) and np.allclose(ref.sum(0), 1, atol=1e-5)
    folder = load_model(d / "monai", "monai", device="cpu")
    assert folder.path.endswith("ep03.pt")  # a folder opens its final epoch (config "epochs")
    for path, kind, tol in [(d / "monai", "monai", 2e-2), (d / "monai" / "ep01.pt", "monai", 1e-5),
                            (d / "net.pt", "torchscript", 1e-5), (d / "net.onnx", "onnx", 1e-4)]:
        m = load_model(path, kind, device="cpu")
        assert m.preprocessing.input_size == (32, 32)
        p = m.predict_proba(image)
        assert p.shape == ref.shape
        assert np.abs(p - ref).max() < tol, (kind, path)  # float16 weights of ep03 round a little
    with pytest.raises(ValueError, match="Did you mean 'onnx'"):
        load_model(d / "net.onnx", "onx")
    with pytest.raises(FileNotFoundError):
        load_model(d / "missing.pt", "torchscript")


def test_dropout_switch(saved, image):
    d, _ = saved
    for kind, path in [("monai", d / "monai" / "ep01.pt"), ("torchscript", d / "net.pt")]:
        m = load_model(path, kind, device="cpu")
        assert m.supports_dropout
        a, b = m.predict_proba(image), m.predict_proba(image)
        assert np.array_equal(a, b)  # eval mode: deterministic
        assert not np.allclose(m.predict_proba(image, dropout=True), a)
        assert np.array_equal(m.predict_proba(image), a)  # dropout switched off again
    onnx = load_model(d / "net.onnx", "onnx", device="cpu")
    assert not onnx.supports_dropout
    with pytest.raises(ValueError, match="dropout"):
        onnx.predict_proba(image, dropout=True)


def test_model_ref_round_trip(saved, image):
    d, net = saved
    m = load_model(d / "net.pt", "torchscript", device="cpu")
    ref = model_ref(m)
    assert ref["kind"] == "torchscript" and len(ref["sha256"]) == 64
    back = models_from_refs([json.loads(json.dumps(ref))], device="cpu")[0]
    assert np.array_equal(back.predict_proba(image), m.predict_proba(image))
    with pytest.raises(ValueError, match="no file"):
        model_ref(TorchModel(net, device="cpu"))


def test_callable_model_and_labels(image):
    def predict(img):  # a "predictor" returning 3-class probabilities on the image grid
        p = np.stack([np.full(img.shape[1:], v, np.float32) for v in (0.2, 0.5, 0.3)])
        return p

    m = CallableModel(predict, labels=(1, 2))
    p = m.predict_proba(image)
    assert p.shape == (3, 40, 48) and np.allclose(p[:, 0, 0], [0.2, 0.5, 0.3], atol=1e-5)
    assert set(np.unique(m.predict_mask(image))) == {1}
    bad = CallableModel(lambda img: np.ones((2, 3, 3), np.float32))
    with pytest.raises(ValueError, match="predict\\(\\) returned shape"):
        bad.predict_proba(image)
