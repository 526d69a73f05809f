"""The method contract's promise: a new QC method is one file and one registry line.

This test writes a toy method as a file of its own, registers it with one line, and runs
it through the public pipeline (fit → predict → bench) and a bundle save / load, without
touching anything else in segqc.
"""

import csv
import sys
import textwrap

import numpy as np
import pytest
from conftest import SAMPLE

from segqc import api
from segqc.methods import METHODS

TOY = '''
"""Toy QC method: a candidate whose foreground area is far from the reference areas is bad."""

import numpy as np

from segqc.methods.base import Param, QCMethod, RawScore, positive


class AreaPrior(QCMethod):
    name = "area_prior"
    params = {"width": Param(1.0, check=positive, doc="tolerance in log-area")}

    def _fit(self, reference, ctx):
        areas = [float(np.sum(c.mask == k)) + 1.0 for c in reference for k in self.labels_]
        self.log_areas_ = np.log(np.array(areas))          # saved as an array
        self.centre_ = float(np.median(self.log_areas_))   # saved as JSON
        ctx.progress(f"{len(areas)} reference areas")

    def _score_case(self, case):
        dice = {}
        for k in self.labels_:
            gap = abs(np.log(float(np.sum(case.mask == k)) + 1.0) - self.centre_)
            dice[k] = float(np.exp(-gap / self.width))
        return RawScore(dice=dice)
'''


@pytest.fixture()
def toy_registered(tmp_path, monkeypatch):
    (tmp_path / "area_prior.py").write_text(textwrap.dedent(TOY))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(METHODS, "area_prior", "area_prior:AreaPrior")  # the one registry line
    yield
    sys.modules.pop("area_prior", None)


def test_a_new_method_is_one_file_and_one_registry_line(toy_registered, tmp_path):
    ref = SAMPLE / "kvasir" / "reference"
    bundle = tmp_path / "bundle"
    api.fit(reference=ref, out=bundle, methods=["area_prior"], model_failures=False, calibration_pairs=3,
            max_slice_size=32, method_params={"area_prior": {"width": 2.0}}, device="cpu")

    with open(SAMPLE / "kvasir" / "candidates.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:6]
    manifest = tmp_path / "cands.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["case_id", "image", "mask", "truth"])
        w.writeheader()
        w.writerows({"case_id": r["case_id"], **{k: str(SAMPLE / "kvasir" / r[k]) for k in ("image", "mask", "truth")}}
                    for r in rows)
    summary, dataset = api.predict(bundle=bundle, data=manifest, out=tmp_path / "qc", quiet=True)
    assert summary.n_done == 6 and summary.n_failed == 0
    with open(tmp_path / "qc" / "predictions.csv", newline="") as f:
        out = list(csv.DictReader(f))
    assert {r["method"] for r in out} == {"area_prior"}
    assert all(0.0 <= float(r["dice_pred"]) <= 1.0 for r in out)
    assert dataset["groups"]["all"]["n"] == 6 and 0.0 <= dataset["groups"]["all"]["mean_dice"] <= 1.0

    # bench: the benchmark format (prediction / ground_truth / dice columns)
    cases = tmp_path / "cases.csv"
    with open(cases, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["case_id", "image", "prediction", "ground_truth", "checkpoint", "dice"])
        w.writeheader()
        w.writerows({"case_id": r["case_id"], "image": str(SAMPLE / "kvasir" / r["image"]),
                     "prediction": str(SAMPLE / "kvasir" / r["mask"]),
                     "ground_truth": str(SAMPLE / "kvasir" / r["truth"]), "checkpoint": r["group"],
                     "dice": r["dice"]} for r in rows)
    result = api.bench(bundle=bundle, cases=cases, out=tmp_path / "bench", root=tmp_path, quiet=True)
    assert result["n"] == 6 and "area_prior" in result["methods"]

    # its fitted state went through the bundle: the loaded method answers as the fitted one
    from segqc.pipeline.bundle import load_bundle

    method = load_bundle(bundle).methods["area_prior"]
    assert method.width == 2.0 and isinstance(method.log_areas_, np.ndarray) and isinstance(method.centre_, float)


def test_declared_parameters_are_validated_by_the_base(toy_registered):
    from segqc.methods import make_method

    with pytest.raises(ValueError, match="width.*> 0"):
        make_method("area_prior", width=-1.0)
    with pytest.raises(ValueError, match="width.*must be float"):
        make_method("area_prior", width="wide")
    with pytest.raises(TypeError, match="unknown parameter.*'widht'"):
        make_method("area_prior", widht=1.0)
    assert make_method("area_prior", width=3).width == 3.0  # an int where a float is declared
