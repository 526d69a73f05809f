"""Diffusion implicit ensemble: x0 prediction learns a usable segmenter; parameters are checked and saved."""

import numpy as np
import pytest

from segqc.methods.base import FitContext
from segqc.methods.diffusion_ensemble import DiffusionEnsemble
from segqc.metrics import binary_dice
from segqc.pipeline.bundle import QCBundle, load_bundle, save_bundle
from segqc.plan.fingerprint import compute_fingerprint
from segqc.plan.plan import plan_from_fingerprint

TINY = {"size": 16, "channels": (8, 16), "batch_size": 2, "timesteps": 100, "ddim_steps": 3, "n_samples": 3,
        "n_threads": 1}


@pytest.mark.slow
def test_x0_prediction_samples_the_training_mask(kvasir_cases, tmp_path):
    """Overfitting two images must give samples that match their masks: the sampling loop is wired right."""
    cases = kvasir_cases[:2]
    plan = plan_from_fingerprint(compute_fingerprint(cases), max_slice_size=32)
    m = DiffusionEnsemble(train_steps=300, lr=2e-3, **TINY).fit(cases, plan, _ctx())
    dice = [binary_dice(m.score(c).maps["pgt"] == 1, c.mask == 1) for c in cases]
    assert min(dice) > 0.5, dice
    save_bundle(QCBundle(plan=plan, methods={"diffusion": m}), tmp_path / "b")
    assert load_bundle(tmp_path / "b").methods["diffusion"].prediction == "sample"


def test_unknown_prediction_is_refused():
    with pytest.raises(ValueError, match="prediction"):
        DiffusionEnsemble(prediction="v", **TINY)


def _ctx() -> FitContext:
    return FitContext(rng=np.random.default_rng(0), device="cpu")
