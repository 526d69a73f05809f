"""A fitted bundle is loaded only if it is exactly what `segqc fit` wrote, else refused in one clear line.

One tiny real bundle is fitted per module (the `features` method on 8 Kvasir cases), and a
second one is written from it with other weights and calibrator, to swap files from. Each
test copies a bundle, tampers with the copy and expects `load_bundle` to raise a ValueError
naming the folder and the problem, never another exception nor a process abort.
Edits that recompute the digest (`_resign`, as a careless tool or a forger would) must still
be caught by the checks behind it: schema, parameters, file list, booster text.
"""

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import fit_tiny

from segqc.cli import main
from segqc.pipeline.bundle import load_bundle, save_bundle


def _fit(sample: Path, out: Path) -> Path:
    from segqc.data import load_dataset

    ref = sample / "kvasir" / "reference"
    return fit_tiny(ref, out, ids=[r.case_id for r in load_dataset(ref)][:8])


def _another(bundle: Path, out: Path) -> Path:
    """A valid bundle like ``bundle`` with other segmenter weights and calibrator (a second fit costs seconds)."""
    other = load_bundle(bundle)
    method, cal = other.methods["features"], other.calibrators["features"]
    arrays, config = method.segmenter_.state()
    nudged = {k: (v * 1.01).astype(v.dtype) if v.dtype.kind == "f" else v for k, v in arrays.items()}
    method.segmenter_ = type(method.segmenter_).from_state(nudged, config)
    cal.dice_y_ = cal.dice_y_ * 0.9
    save_bundle(other, out)
    return out


@pytest.fixture(scope="module")
def bundles(sample, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bundles")
    fitted = _fit(sample, tmp / "a")
    return fitted, _another(fitted, tmp / "b")


@pytest.fixture()
def copy(bundles, tmp_path):
    return Path(shutil.copytree(bundles[0], tmp_path / "bundle"))


@pytest.fixture(autouse=True)
def no_key(monkeypatch):
    monkeypatch.delenv("SEGQC_BUNDLE_KEY", raising=False)


def _doc(folder: Path) -> dict:
    return json.loads((folder / "bundle.json").read_text())


def _write(folder: Path, doc) -> None:
    (folder / "bundle.json").write_text(json.dumps(doc, indent=1))


def _resign(folder: Path) -> None:
    """Recompute the digest the documented way (canonical JSON of everything but ``integrity``)."""
    doc = _doc(folder)
    integrity = doc.pop("integrity", {})  # an HMAC, if any, is kept: a forger cannot recompute it
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    doc["integrity"] = {**integrity, "algorithm": "sha256", "document": hashlib.sha256(canonical).hexdigest()}
    _write(folder, doc)


def _refused(folder: Path, *words: str) -> str:
    with pytest.raises(ValueError) as info:
        load_bundle(folder)
    msg = str(info.value)
    assert str(folder) in msg and "\n" not in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


def _cli_refuses(folder: Path, sample: Path, tmp_path: Path, capsys) -> None:
    capsys.readouterr()
    code = main(["predict", str(sample / "kvasir" / "candidates.csv"), "--bundle", str(folder),
                 "--out", str(tmp_path / "qc")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("segqc predict: error: ") and str(folder) in err, err
    assert "Traceback" not in err


# -- edits ----------------------------------------------------------------------------------------------


def _edit_leaf(doc: dict) -> None:
    cfg = doc["methods"]["features"]["config"]["custom"]
    cfg["model_"] = re.sub(r"leaf_value=\S+", "leaf_value=0.97", cfg["model_"], count=1)


def _edit_calibrator(doc: dict) -> None:
    doc["methods"]["features"]["calibration"]["tau"] = 0.3


def _drop_methods(doc: dict) -> None:
    del doc["methods"]


def _unknown_param(doc: dict) -> None:
    doc["methods"]["features"]["config"]["params"]["n_trees"] = 3


def _rename_method(doc: dict) -> None:
    doc["methods"]["featurez"] = doc["methods"].pop("features")


def _rename_class(doc: dict) -> None:
    doc["methods"]["features"]["class"] = "Evil"


def _non_dict_entry(doc: dict) -> None:
    doc["methods"]["features"] = 3


def _longer_booster(doc: dict) -> None:
    cfg = doc["methods"]["features"]["config"]["custom"]
    cfg["model_"] = cfg["model_"].replace("leaf_value=", "leaf_value=1 ", 1)


def _truncated_booster(doc: dict) -> None:
    cfg = doc["methods"]["features"]["config"]["custom"]
    cfg["model_"] = cfg["model_"][: cfg["model_"].index("leaf_value=")]  # inside the first tree


def _edited(folder: Path, edit) -> Path:
    doc = _doc(folder)
    edit(doc)
    _write(folder, doc)
    return folder


# -- an untouched copy ----------------------------------------------------------------------------------


def test_untouched_copy_loads_and_predicts_identically(bundles, copy, kvasir_cases):
    a, b = load_bundle(bundles[0]), load_bundle(copy)
    for case in kvasir_cases[:2]:
        sa, sb = a.methods["features"].score(case), b.methods["features"].score(case)
        assert sa.dice == sb.dice and sa.maps.keys() == sb.maps.keys()
        assert all(np.array_equal(sa.maps[k], sb.maps[k]) for k in sa.maps)
        raw = sa.mean_dice
        ca, cb = a.calibrators["features"], b.calibrators["features"]
        assert (ca.predict_dice(raw), ca.predict_pass(raw)) == (cb.predict_dice(raw), cb.predict_pass(raw))


# -- bundle.json edited without recomputing its digest: the user's case -----------------------------------


@pytest.mark.parametrize("edit", [_edit_leaf, _edit_calibrator, _drop_methods, _unknown_param, _rename_method,
                                  _longer_booster])
def test_edited_bundle_json_is_refused(copy, edit):
    _refused(_edited(copy, edit), "bundle.json", "altered")


def test_edited_booster_leaf_is_refused_by_the_cli(copy, sample, tmp_path, capsys):
    _cli_refuses(_edited(copy, _edit_leaf), sample, tmp_path, capsys)


def test_edited_calibrator_is_refused(copy):
    _refused(_edited(copy, _edit_calibrator), "altered")


def test_digest_removed_is_refused(copy):
    doc = _doc(copy)
    del doc["integrity"]
    _write(copy, doc)
    _refused(copy, "integrity", "refit")


def test_bundle_of_the_previous_schema_asks_for_a_refit(copy):
    doc = _doc(copy)
    del doc["integrity"]
    doc["schema_version"] = 1
    _write(copy, doc)
    _refused(copy, "schema_version 1", "refit")


# -- data files -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fname", ["features.safetensors", "features.calib.safetensors"])
@pytest.mark.parametrize("drop", ["all", "entry"])
def test_unlisted_file_swapped_with_another_bundles_is_refused(bundles, copy, fname, drop):
    assert (bundles[1] / fname).read_bytes() != (copy / fname).read_bytes()
    doc = _doc(copy)
    if drop == "all":
        del doc["sha256"]
    else:
        del doc["sha256"][fname]
    _write(copy, doc)
    shutil.copy(bundles[1] / fname, copy / fname)
    _refused(copy, "altered")
    _resign(copy)  # even with a consistent digest, a file read without a recorded hash is refused
    _refused(copy, "sha256", *([fname] if drop == "entry" else []))


def test_swapped_calibrator_is_refused_by_the_cli(bundles, copy, sample, tmp_path, capsys):
    doc = _doc(copy)
    del doc["sha256"]["features.calib.safetensors"]
    _write(copy, doc)
    shutil.copy(bundles[1] / "features.calib.safetensors", copy / "features.calib.safetensors")
    _cli_refuses(copy, sample, tmp_path, capsys)


def test_truncated_weights_with_updated_hash_are_refused(copy):
    path = copy / "features.safetensors"
    path.write_bytes(path.read_bytes()[:100])
    doc = _doc(copy)
    doc["sha256"]["features.safetensors"] = hashlib.sha256(path.read_bytes()).hexdigest()
    _write(copy, doc)
    _refused(copy, "altered")
    _resign(copy)
    _refused(copy, "features.safetensors")


def test_listed_file_missing_is_refused(copy):
    (copy / "features.calib.safetensors").unlink()
    _refused(copy, "features.calib.safetensors", "missing")


# -- malformed bundle.json, digest recomputed: the checks behind the digest ---------------------------------


@pytest.mark.parametrize("edit, words", [
    (_drop_methods, ["methods"]),
    (_unknown_param, ["n_trees", "unknown parameter"]),
    (_rename_method, ["featurez"]),
    (_rename_class, ["Evil", "FeatureRegressor"]),
    (_non_dict_entry, ["features"]),
    (_longer_booster, ["booster", "leaf_value"]),
    (_truncated_booster, ["booster"]),
])
def test_malformed_but_resigned_bundle_is_refused(copy, edit, words):
    _edited(copy, edit)
    _resign(copy)
    _refused(copy, *words)


def test_booster_of_another_length_is_refused_by_the_cli(copy, sample, tmp_path, capsys):
    _edited(copy, _longer_booster)
    _resign(copy)
    _cli_refuses(copy, sample, tmp_path, capsys)  # LightGBM would abort the process (exit 134) on this text


def test_json_list_is_refused(copy):
    (copy / "bundle.json").write_text("[1, 2]")
    _refused(copy, "JSON object")


def test_truncated_bundle_json_is_refused(copy):
    text = (copy / "bundle.json").read_text()
    (copy / "bundle.json").write_text(text[: len(text) // 2])
    _refused(copy, "not valid JSON")


# -- authenticity: SEGQC_BUNDLE_KEY ---------------------------------------------------------------------------


def _signed(bundles, tmp_path, monkeypatch, key: str) -> Path:
    bundle = load_bundle(bundles[0])
    monkeypatch.setenv("SEGQC_BUNDLE_KEY", key)
    out = tmp_path / "signed"
    save_bundle(bundle, out)
    assert "hmac" in _doc(out)["integrity"]
    return out


def test_signed_bundle_loads_with_its_key(bundles, tmp_path, monkeypatch):
    load_bundle(_signed(bundles, tmp_path, monkeypatch, "s3cret"))


def test_signed_bundle_with_another_key_is_refused(bundles, tmp_path, monkeypatch):
    folder = _signed(bundles, tmp_path, monkeypatch, "s3cret")
    monkeypatch.setenv("SEGQC_BUNDLE_KEY", "other")
    _refused(folder, "SEGQC_BUNDLE_KEY")


def test_resigned_digest_without_the_key_is_refused(bundles, tmp_path, monkeypatch):
    folder = _signed(bundles, tmp_path, monkeypatch, "s3cret")
    _resign(_edited(folder, _edit_leaf))  # a forger can recompute the digest, not the HMAC
    _refused(folder, "SEGQC_BUNDLE_KEY")


def test_unsigned_bundle_is_refused_when_a_key_is_set(copy, monkeypatch):
    monkeypatch.setenv("SEGQC_BUNDLE_KEY", "s3cret")
    _refused(copy, "not signed")


def test_signed_bundle_without_a_key_loads_with_a_warning(bundles, tmp_path, monkeypatch):
    folder = _signed(bundles, tmp_path, monkeypatch, "s3cret")
    monkeypatch.delenv("SEGQC_BUNDLE_KEY")
    with pytest.warns(UserWarning, match="SEGQC_BUNDLE_KEY"):
        load_bundle(folder)
