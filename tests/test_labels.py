"""Label values other than 1..L: the shared lookup, `fit` on labels {2}, a rare label, an unknown candidate label;
and how a training pair names its reference case.

The fits are tiny (8 Kvasir reference cases, masks rewritten as NIfTI with other label
values, `features` with a 2-epoch reference segmenter): seconds, not minutes.
"""

import csv

import numpy as np
import pytest
from conftest import fit_tiny

from segqc.data.labels import to_index, to_labels, unknown_labels


@pytest.mark.parametrize("labels", [(1,), (1, 2), (2,), (3, 5)])
def test_index_round_trip(labels):
    mask = np.zeros((4, 5), np.uint8)
    for i, k in enumerate(labels, start=1):
        mask[i, :i + 1] = k
    idx = to_index(mask, labels)
    assert idx.dtype == np.uint8 and set(np.unique(idx)) == set(range(len(labels) + 1))
    assert np.array_equal(to_labels(idx, labels), mask)
    if max(labels) == len(labels):  # labels 1..L: indices are the label values
        assert np.array_equal(idx, mask)


def test_unknown_values_are_named_or_background():
    mask = np.array([[0, 2, 7], [9, 2, 0]], np.int16)
    assert unknown_labels(mask, [2]) == [7, 9]
    with pytest.raises(ValueError, match=r"expert mask of a has label\(s\) \[7, 9\].*labels \[2\]"):
        to_index(mask, [2], what="expert mask of a")
    assert to_index(mask, [2], strict=False).tolist() == [[0, 1, 0], [0, 1, 0]]
    assert unknown_labels(np.array([-1, 0, 1]), [1]) == [-1]


def test_training_pair_names_its_reference_case():
    """A manifest row of the user's (candidate, expert) pairs names its reference case explicitly."""
    from segqc.data.case import Case, Geometry
    from segqc.pipeline.training_pairs import manifest_pairs

    def row(case_id, **meta):
        z = np.zeros((2, 2), np.uint8)
        return Case(case_id, np.zeros((1, 2, 2), np.float32), z, Geometry.identity(2), truth=z, meta=meta)

    rows = [row("a#model"), row("a~2", source_id="a"), row("a~3", source_id="a", reference_id="b")]
    fit, cal = manifest_pairs(rows, cal_ids={"b"})
    assert [p.reference_id for p in fit] == ["a#model", "a"]  # no convention hidden in the id
    assert [p.reference_id for p in cal] == ["b"] and cal[0].source == "manifest"


def _relabelled(sample, tmp, relabel, n: int = 8):
    """A manifest of ``n`` Kvasir reference cases whose masks are ``relabel(i, mask)``, as NIfTI files."""
    from segqc.data import load_dataset, write_mask

    rows = []
    for i, ref in enumerate(load_dataset(sample / "kvasir" / "reference")[:n]):
        case = ref.load()
        path = write_mask(tmp / "masks" / f"{ref.case_id}.nii.gz", relabel(i, case.mask), case.geometry)
        rows.append({"case_id": ref.case_id, "image": str(ref.image[0]), "mask": str(path)})
    manifest = tmp / "cases.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest, rows


@pytest.mark.slow
def test_fit_and_predict_with_label_2(sample, tmp_path):
    from segqc import api
    from segqc.engines.batch import read_rows

    manifest, rows = _relabelled(sample, tmp_path, lambda i, m: m * 2)
    from segqc.pipeline.bundle import load_bundle

    assert load_bundle(fit_tiny(manifest, tmp_path / "bundle")).plan.labels == (2,)
    # candidates: the label-2 masks, and one original 0/255 PNG mask (label 1, unknown to the bundle)
    png = str(sample / "kvasir" / "reference" / "masks" / f"{rows[0]['case_id']}.png")
    cands = tmp_path / "candidates.csv"
    with open(cands, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["case_id", "image", "mask"])
        writer.writeheader()
        writer.writerows(rows[:3])
        writer.writerow({"case_id": "label1", "image": rows[0]["image"], "mask": png})
    summary, _ = api.predict(bundle=tmp_path / "bundle", data=cands, out=tmp_path / "qc", quiet=True)
    got = {r["case_id"]: r for r in read_rows(tmp_path / "qc" / "predictions.csv")}
    for r in rows[:3]:
        row = got[r["case_id"]]
        assert row["status"] == "ok", row["error"]
        assert 0.0 <= float(row["dice_pred"]) <= 1.0 and 0.0 <= float(row["dice_pred_2"]) <= 1.0
    bad = got["label1"]
    assert bad["status"] == "error" and "[1]" in bad["error"] and "labels [2]" in bad["error"], bad["error"]
    assert summary.n_failed == 1


def _with_label_7(i, mask):
    if i == 3:
        mask = mask.copy()
        mask[:5, :5] = 7
    return mask


def test_fit_refuses_a_label_of_one_case(sample, tmp_path, capsys):
    from segqc import api
    from segqc.cli import main

    manifest, rows = _relabelled(sample, tmp_path, _with_label_7)
    odd = rows[3]["case_id"]
    with pytest.raises(ValueError, match=rf"label 7 is only in reference case {odd} \(the other cases have labels "
                                         r"\[1\]\).*fix that mask"):
        api.fit(reference=manifest, out=tmp_path / "bundle", methods=["features"], max_slice_size=32, device="cpu")
    capsys.readouterr()
    assert main(["fit", str(manifest), "--out", str(tmp_path / "cli"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and "label 7" in errors[0] and odd in errors[0], err
