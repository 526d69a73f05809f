"""Tests for segqc.plan.fingerprint: measurements on the embedded samples, plan decisions, plan JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import segqc
from segqc.data import load_dataset
from segqc.data.case import Case, Geometry
from segqc.plan.fingerprint import compute_fingerprint, load_fingerprint, save_fingerprint
from segqc.plan.plan import Plan, plan_from_fingerprint

SAMPLES = Path(segqc.__file__).parent / "sample_data"


@pytest.fixture(scope="module")
def kvasir_fp() -> dict:
    return compute_fingerprint([r.load() for r in load_dataset(SAMPLES / "kvasir" / "reference")])


@pytest.fixture(scope="module")
def hippo_fp() -> dict:
    return compute_fingerprint([r.load() for r in load_dataset(SAMPLES / "hippocampus" / "reference")])


def test_kvasir_fingerprint(kvasir_fp):
    fp = kvasir_fp
    assert fp["n_cases"] == 40 and fp["ndim"] == 2 and fp["n_channels"] == 3
    assert fp["labels"] == [1]
    assert fp["modality_guess"] == "RGB"
    assert fp["median_shape"] == [256.0, 256.0] and fp["median_spacing"] == [1.0, 1.0]
    assert fp["volume_unit"] == "mm2" and fp["label_volume_median"]["1"] > 0
    assert all(fp["integer_valued"])
    props = fp["foreground_intensity_properties_per_channel"]
    assert set(props) == {"0", "1", "2"}
    assert 0 <= props["0"]["percentile_00_5"] <= props["0"]["median"] <= props["0"]["percentile_99_5"] <= 255
    assert len(fp["fg_bbox_voxels"]) == 40 and all(len(b) == 2 for b in fp["fg_bbox_voxels"])
    json.dumps(fp)  # JSON-able


def test_hippocampus_fingerprint(hippo_fp):
    fp = hippo_fp
    assert fp["n_cases"] == 20 and fp["ndim"] == 3 and fp["n_channels"] == 1
    assert fp["labels"] == [1, 2]
    assert fp["modality_guess"] == "MR"
    assert fp["volume_unit"] == "mm3" and set(fp["label_volume_median"]) == {"1", "2"}
    assert all(len(s) == 3 for s in fp["spacings"]) and all(len(s) == 3 for s in fp["shapes"])
    for box_v, box_mm, sp in zip(fp["fg_bbox_voxels"], fp["fg_bbox_mm"], fp["spacings"]):
        assert np.allclose(np.multiply(box_v, sp), box_mm)


def test_plans_of_the_samples(kvasir_fp, hippo_fp):
    kv, hp = plan_from_fingerprint(kvasir_fp), plan_from_fingerprint(hippo_fp)
    for plan in (kv, hp):
        assert plan.slice_size <= 128 and plan.slice_size % 16 == 0
        assert plan.crop_to == "image"
    assert kv.ndim == 2 and kv.labels == (1,) and kv.modality == "RGB" and kv.normalization == "rgb"
    assert kv.slice_size == 128 and kv.target_spacing == (2.0, 2.0)  # 256 px at 1 px → 128 at 2 px
    assert hp.ndim == 3 and hp.labels == (1, 2) and hp.modality == "MR" and hp.normalization == "zscore"
    assert hp.slice_size == 64 and hp.target_spacing == (1.0, 1.0)


def test_forced_slice_size_enlarges_spacing(hippo_fp):
    plan = plan_from_fingerprint(hippo_fp, slice_size=32)
    assert plan.slice_size == 32
    assert plan.target_spacing[0] > 1.0 and plan.target_spacing[0] == pytest.approx(plan.target_spacing[1])
    assert plan_from_fingerprint(hippo_fp, max_slice_size=48).slice_size == 48


def test_ct_guess_and_normalization():
    rng = np.random.default_rng(0)
    cases = []
    for i in range(3):
        img = rng.integers(-1024, 1500, size=(1, 4, 20, 24)).astype(np.float32)
        mask = np.zeros((4, 20, 24), np.uint8)
        mask[1:3, 5:15, 6:12] = 1
        cases.append(Case(f"ct{i}", img, mask, Geometry.identity(3, (3.0, 0.8, 0.8))))
    seen = []
    fp = compute_fingerprint(cases, progress=lambda n, cid: seen.append((n, cid)))
    assert seen == [(1, "ct0"), (2, "ct1"), (3, "ct2")]
    assert fp["modality_guess"] == "CT"
    assert fp["median_spacing"] == [3.0, 0.8, 0.8]
    assert fp["label_volume_median"]["1"] == pytest.approx(2 * 10 * 6 * 3.0 * 0.8 * 0.8)
    plan = plan_from_fingerprint(fp)
    assert plan.normalization == "ct"
    lo, hi = plan.normalization_kwargs["clip"][0]
    assert -1024 <= lo < hi <= 1500
    assert plan.target_spacing == pytest.approx((0.8, 0.8)) and plan.slice_size == 32


def test_inconsistent_cases_are_refused():
    a = Case("a", np.zeros((1, 3, 8, 8), np.float32), None, Geometry.identity(3))
    b = Case("b", np.zeros((1, 8, 8), np.float32), None, Geometry.identity(2))
    with pytest.raises(ValueError, match="case b is 2D"):
        compute_fingerprint([a, b])
    with pytest.raises(ValueError, match="empty"):
        compute_fingerprint([])


def test_plan_json_round_trip(tmp_path, hippo_fp):
    plan = plan_from_fingerprint(hippo_fp)
    path = plan.to_json(tmp_path / "plan.json")
    raw = json.loads(path.read_text())
    assert raw["schema_version"] == 1 and raw["normalization"] == "zscore"
    again = Plan.from_json(path)
    assert again == plan and again.to_dict() == plan.to_dict()
    assert Plan.from_dict(plan.to_dict()) == plan
    fp_path = save_fingerprint(hippo_fp, tmp_path / "fingerprint.json")
    assert load_fingerprint(fp_path) == json.loads(json.dumps(hippo_fp))


def test_unknown_schema_version_is_refused(tmp_path, kvasir_fp):
    d = plan_from_fingerprint(kvasir_fp).to_dict()
    d["schema_version"] = 99
    (tmp_path / "plan.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="schema_version 99"):
        Plan.from_json(tmp_path / "plan.json")
    del d["schema_version"]
    with pytest.raises(ValueError, match="schema_version None"):
        Plan.from_dict(d)


def test_bad_plan_values_are_refused(kvasir_fp):
    d = plan_from_fingerprint(kvasir_fp).to_dict()
    with pytest.raises(ValueError, match="Did you mean 'zscore'"):
        Plan.from_dict({**d, "normalization": "zscor"})
    with pytest.raises(ValueError, match="unknown key"):
        Plan.from_dict({**d, "spacing": [1, 1]})
    with pytest.raises(ValueError, match="target_spacing"):
        Plan.from_dict({**d, "target_spacing": [1.0, -1.0]})
