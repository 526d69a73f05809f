"""Every registered method: fit on three tiny real cases, score, bundle round trip (cf. sklearn estimator_checks)."""

import numpy as np
import pytest
from tiny_settings import TINY

from segqc.methods import METHODS, get_method_class, make_method
from segqc.methods.base import FitContext, NotFittedError
from segqc.pipeline.bundle import QCBundle, load_bundle, save_bundle
from segqc.plan.fingerprint import compute_fingerprint
from segqc.plan.plan import plan_from_fingerprint
from segqc.utils import look_up_option


def test_registry_is_light_and_complete():
    assert set(TINY) == set(METHODS), "add tiny test parameters for every new method"
    with pytest.raises(ValueError, match="Did you mean 'features'"):
        look_up_option("featurs", list(METHODS), "method")


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("data", ["kvasir", "hippocampus"])
def test_method_contract(name, data, kvasir_cases, hippo_cases, tmp_path):
    cases = (kvasir_cases if data == "kvasir" else hippo_cases)[:3]
    plan = plan_from_fingerprint(compute_fingerprint(cases), max_slice_size=32)
    method = make_method(name, **TINY[name])
    assert not any(k.endswith("_") for k in vars(method)), "constructor must only store parameters"
    with pytest.raises(NotFittedError):
        method.score(cases[0])
    models = _tiny_models(cases[0], plan, tmp_path) if method.needs_model else ()
    ctx = FitContext(rng=np.random.default_rng(0), device="cpu", models=models)
    assert method.fit(cases, plan, ctx) is method
    bad = cases[1].with_mask(np.zeros_like(cases[1].mask))
    for case in (cases[0], bad):
        s = method.score(case)
        assert set(s.dice) == set(plan.labels)
        assert all(0.0 <= v <= 1.0 for v in s.dice.values())
        for arr in s.maps.values():
            assert arr.shape == case.shape
    bundle = QCBundle(plan=plan, methods={name: method})
    save_bundle(bundle, tmp_path / "b")
    back = load_bundle(tmp_path / "b").methods[name]
    assert type(back) is get_method_class(name)
    assert back.score(cases[0]).dice == pytest.approx(method.score(cases[0]).dice, abs=1e-5)
    wrong = cases[0].with_mask(np.full_like(cases[0].mask, 7))
    with pytest.raises(ValueError, match="7"):
        method.score(wrong)


def _tiny_models(case, plan, folder):
    """Two random 2-level MONAI UNets with dropout, as TorchScript files (a bundle refers to files)."""
    import json

    import torch
    from monai.networks.nets import UNet

    from segqc.user_models import load_model

    models = []
    for seed in range(2):
        torch.manual_seed(seed)
        net = UNet(spatial_dims=case.ndim, in_channels=case.n_channels, out_channels=len(plan.labels) + 1,
                   channels=[4, 8], strides=[2], num_res_units=0, dropout=0.2).eval()
        path = folder / f"seg{seed}.pt"
        torch.jit.script(net).save(str(path))
        pre = {"segqc_preprocessing": {"input_size": [16] * case.ndim, "intensity": "zscore", "resize": "torch"}}
        (folder / f"seg{seed}.pt.json").write_text(json.dumps(pre))
        models.append(load_model(path, "torchscript", device="cpu"))
    return models
