"""A corpus of bad inputs, built at run time, run through the commands as a user would.

Each input is one row of a manifest (or one folder, bundle or interrupted run) between
good cases. For every one the promise is the same: no traceback, the documented exit
code, exactly one row per input — an error row with a reason that says what is wrong —
the later cases still done, and the same answers after an interrupted run.

2D inputs go to a tiny bundle fitted on embedded Kvasir photos (RGB), 3D inputs to one
fitted on embedded hippocampus MRI volumes (two labels).
"""

import csv
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_FIT

from segqc.cli import main
from segqc.engines.batch import read_rows

# every test here runs a whole command on a corpus of bad input with a fitted bundle
pytestmark = pytest.mark.slow

OK = "ok"

# why each kind of bad input must be refused (patterns of the error reason, case-insensitive)
MISSING = r"no such file|not found|missing"
DAMAGED = r"truncat|damaged|cannot read|corrupt|incomplete|shorter|unexpected end|not a"
SHAPE = r"shape"
GEOMETRY = r"geometry|spacing|origin|direction"
NONFINITE = r"nan|inf"
LABELS = r"label"


@pytest.fixture(scope="module")
def bundles(tiny_bundle):
    return {"2d": tiny_bundle("kvasir"), "3d": tiny_bundle("hippocampus")}


def _good_rows(sample: Path, name: str, n: int) -> list[dict]:
    rows = list(csv.DictReader(open(sample / name / "candidates.csv")))[:n]
    return [{"case_id": r["case_id"], "image": str(sample / name / r["image"]), "mask": str(sample / name / r["mask"]),
             "truth": str(sample / name / r["truth"]), "group": r["group"]} for r in rows]


def _cut(src: Path, dst: Path, fraction: float) -> Path:
    data = Path(src).read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def _write_manifest(path: Path, rows: list[dict], raw_lines: list[str] = (), *, bom_crlf: bool = False) -> Path:
    cols = ["case_id", "image", "mask", "truth", "group"]
    enc = "utf-8-sig" if bom_crlf else "utf-8"
    with open(path, "w", newline="", encoding=enc) as f:
        w = csv.DictWriter(f, fieldnames=cols, lineterminator="\r\n" if bom_crlf else "\n", extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        for line in raw_lines:
            f.write(line + ("\r\n" if bom_crlf else "\n"))
    return path


def _run(argv: list[str], capsys) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    return code, err


def _check_rows(rows: list[dict], expected: dict[str, str]) -> None:
    """One row per input; good ones ok, bad ones an error whose reason says why."""
    ids = [r["case_id"] for r in rows]
    assert len(ids) == len(set(ids)), f"repeated ids in the output: {ids}"
    by_id = {r["case_id"]: r for r in rows}
    assert set(by_id) == set(expected), (sorted(set(by_id) ^ set(expected)))
    for cid, want in expected.items():
        row = by_id[cid]
        if want == OK:
            assert row["status"] == "ok", f"{cid}: {row['error']}"
        else:
            assert row["status"] == "error", f"{cid} was accepted: {row}"
            assert re.search(want, row["error"], re.I), f"{cid}: reason {row['error']!r} does not match {want!r}"
            assert "internal error" not in row["error"], f"{cid}: {row['error']}"


# ----------------------------------------------------------------------------- 2D corpus


def _png(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    from PIL import Image

    Image.fromarray(arr, mode=mode).save(path)
    return path


def _corpus_2d(sample: Path, tmp: Path) -> tuple[Path, dict[str, str], list[dict]]:
    """Bad 2D inputs, each followed by a good case; returns (manifest, expected, good rows)."""
    from PIL import Image

    good = _good_rows(sample, "kvasir", 14)
    g = good[0]
    img = np.asarray(Image.open(g["image"]))
    msk = np.asarray(Image.open(g["mask"]))
    h, w = msk.shape
    d = tmp / "c2d"
    d.mkdir()
    text = d / "notes.png"
    text.write_text("this is not an image\n")
    (d / "zero.png").write_bytes(b"")
    rgba = np.dstack([img, np.full((h, w), 255, np.uint8)])
    pal = Image.fromarray((msk > 0).astype(np.uint8), mode="L").convert("P")
    pal.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    pal.save(d / "palette_mask.png")
    unicode_img = d / "polype éàü 画像.jpg"
    shutil.copy(g["image"], unicode_img)
    Image.new("1", (20000, 20000)).save(d / "bomb.png")  # a tiny file of 400 M pixels, above the limit
    colour_mask = np.dstack([msk, msk // 2, msk])
    bad = [  # (case_id, image, mask, expected)
        ("missing_image", d / "nope.jpg", g["mask"], MISSING),
        ("missing_mask", g["image"], d / "nope.png", MISSING),
        ("zero_byte_mask", g["image"], d / "zero.png", DAMAGED + r"|empty"),
        ("text_as_png", text, g["mask"], DAMAGED),
        ("truncated_jpg", _cut(g["image"], d / "cut.jpg", 0.5), g["mask"], DAMAGED),
        ("truncated_png_mask", g["image"], _cut(g["mask"], d / "cut.png", 0.4), DAMAGED),
        ("mask_other_shape", g["image"], _png(d / "small.png", msk[: h // 2]), SHAPE),
        ("mask_label_3", g["image"], _png(d / "label3.png", ((msk > 0) * 3).astype(np.uint8)), LABELS),
        ("colour_mask", g["image"], _png(d / "colour.png", colour_mask), r"colour|channel"),
        ("grey_image", _png(d / "grey.png", img[..., 0]), g["mask"], r"channel"),
        ("huge_png", d / "bomb.png", g["mask"], r"pixel|large|size|limit|bomb"),
        ("unsupported_type", d / "notes.txt", g["mask"], r"unsupported"),
    ]
    (d / "notes.txt").write_text("x")
    ok_variants = [  # unusual but valid: must be judged
        ("rgba_image", _png(d / "rgba.png", rgba), g["mask"]),
        ("palette_mask", g["image"], d / "palette_mask.png"),
        ("mask_16bit", g["image"], _png(d / "m16.png", (msk > 0).astype(np.uint16))),
        ("unicode_path", unicode_img, g["mask"]),
    ]
    rows, expected = [], {}
    goods = iter(good[1:])
    for cid, image, mask, want in bad:
        rows.append({"case_id": cid, "image": str(image), "mask": str(mask), "group": "bad"})
        expected[cid] = want
        nxt = next(goods)  # a good case right after each bad one: later rows must still be done
        rows.append(nxt)
        expected[nxt["case_id"]] = OK
    for cid, image, mask in ok_variants:
        rows.append({"case_id": cid, "image": str(image), "mask": str(mask), "group": "odd"})
        expected[cid] = OK
    # manifest problems: an empty image cell, an empty id, ids that repeat or look generated
    rows.append({"case_id": "empty_image_cell", "image": "", "mask": g["mask"]})
    expected["empty_image_cell"] = r"image"
    rows += [{"case_id": "dup", "image": g["image"], "mask": g["mask"]},
             {"case_id": "dup", "image": g["image"], "mask": str(d / "palette_mask.png")},
             {"case_id": "dup~2", "image": g["image"], "mask": g["mask"]},
             {"case_id": "x#1", "image": g["image"], "mask": g["mask"]},
             {"case_id": "x", "image": g["image"], "mask": g["mask"]},
             {"case_id": "x", "image": g["image"], "mask": g["mask"]},
             {"case_id": "", "image": g["image"], "mask": g["mask"]}]
    manifest = _write_manifest(d / "cases.csv", rows, ["id_only_row"], bom_crlf=True)
    return manifest, expected, good


def test_2d_corpus_predict_one_row_each_and_resume_identically(bundles, sample, tmp_path, capsys):
    manifest, expected, _ = _corpus_2d(sample, tmp_path)
    out = tmp_path / "qc"
    code, err = _run(["predict", str(manifest), "--bundle", str(bundles["2d"]), "--out", str(out)], capsys)
    assert code == 3
    rows = read_rows(out / "predictions.csv")
    n_manifest = sum(1 for _ in csv.reader(open(manifest, encoding="utf-8-sig"))) - 1
    assert len(rows) == n_manifest  # one row per manifest row, generated ids included
    listed = {r["case_id"] for r in rows}
    # repeated ids get a suffix that no other row uses; an empty id gets a row number
    assert {"dup", "dup~2", "dup~3", "x#1", "x", "x~2"} <= listed
    assert any(re.fullmatch(r"row\d+", cid) for cid in listed)
    id_only = [r for r in rows if r["case_id"] == "id_only_row"]
    assert len(id_only) == 1 and id_only[0]["status"] == "error" and "image" in id_only[0]["error"]
    _check_rows([r for r in rows if r["case_id"] in expected], expected)
    for cid in expected:  # every reason is also on stderr
        if expected[cid] != OK:
            assert cid in err
    maps = [r["features_pgt"] for r in rows if r["status"] == "ok"]
    assert len(maps) == len(set(maps)), "two cases share one map file"
    dataset = json.loads((out / "dataset.json").read_text())
    assert dataset["groups"]["all"]["n"] == sum(r["status"] == "ok" for r in rows)
    assert json.loads((out / "run.json").read_text())["n_failed"] == sum(r["status"] == "error" for r in rows)

    # an interrupted write: the last row torn in the middle, the one before it lost
    first = {r["case_id"]: r for r in rows}
    lines = (out / "predictions.csv").read_text().splitlines(keepends=True)
    (out / "predictions.csv").write_text("".join(lines[:12]) + lines[12][: len(lines[12]) // 2])
    code, _ = _run(["predict", str(manifest), "--bundle", str(bundles["2d"]), "--out", str(out)], capsys)
    assert code == 3
    again = read_rows(out / "predictions.csv")
    assert len(again) == len(rows)
    assert {r["case_id"]: r for r in again} == first  # the same answers, row for row

    # resuming into this folder with another bundle must not mix two runs' answers
    code, err = _run(["predict", str(manifest), "--bundle", str(bundles["3d"]), "--out", str(out)], capsys)
    assert code == 1 and "another run" in err and "--no-resume" in err


def test_2d_corpus_metrics_and_mixed_truth(bundles, sample, tmp_path, capsys):
    good = _good_rows(sample, "kvasir", 4)
    d = tmp_path / "m"
    d.mkdir()
    rows = [dict(good[0]), dict(good[1], truth=""), dict(good[2], truth=str(_cut(good[2]["truth"], d / "t.png", 0.3))),
            dict(good[3])]
    manifest = _write_manifest(d / "cases.csv", rows)
    # predict: rows with and without a truth mask in one batch
    code, _ = _run(["predict", str(manifest), "--bundle", str(bundles["2d"]), "--out", str(d / "qc"),
                    "--no-maps"], capsys)
    assert code == 3
    out = read_rows(d / "qc" / "predictions.csv")
    assert [r["status"] for r in out] == ["ok", "ok", "error", "ok"]
    assert out[1]["dice_true"] == "" and float(out[0]["dice_true"]) >= 0
    dataset = json.loads((d / "qc" / "dataset.json").read_text())
    assert dataset["groups"]["all"]["n"] == 3 and dataset["groups"]["all"]["n_with_truth"] == 2
    assert (d / "qc" / "run.json").exists()
    # metrics: the row without truth and the damaged truth are errors, the others measured
    code, _ = _run(["metrics", str(manifest), "--out", str(d / "metrics")], capsys)
    assert code == 3
    m = read_rows(d / "metrics" / "metrics.csv")
    assert [r["status"] for r in m] == ["ok", "error", "error", "ok"]
    assert re.search(DAMAGED, m[2]["error"], re.I) and "truth" in m[1]["error"]


def test_flat_folder_with_one_mask_missing_gives_one_error_row(bundles, sample, tmp_path, capsys):
    good = _good_rows(sample, "kvasir", 5)
    folder = tmp_path / "flat"
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for r in good:
        shutil.copy(r["image"], folder / "images")
        if r is not good[2]:
            shutil.copy(r["mask"], folder / "masks")
    code, err = _run(["predict", str(folder), "--bundle", str(bundles["2d"]), "--out", str(tmp_path / "qc")], capsys)
    assert code == 3
    rows = read_rows(tmp_path / "qc" / "predictions.csv")
    assert len(rows) == 5 and [r["status"] for r in rows].count("error") == 1
    bad = next(r for r in rows if r["status"] == "error")
    assert bad["case_id"] == good[2]["case_id"] and "mask" in bad["error"]


def test_fit_and_fingerprint_skip_damaged_reference_cases(sample, tmp_path, capsys):
    ref = tmp_path / "ref"
    (ref / "images").mkdir(parents=True)
    (ref / "masks").mkdir()
    src = sample / "kvasir" / "reference"
    names = sorted(p.stem for p in (src / "images").iterdir())[:8]
    for n in names:
        shutil.copy(src / "images" / f"{n}.jpg", ref / "images")
        shutil.copy(src / "masks" / f"{n}.png", ref / "masks")
    _cut(src / "images" / f"{names[0]}.jpg", ref / "images" / "zz_truncated.jpg", 0.5)
    shutil.copy(src / "masks" / f"{names[0]}.png", ref / "masks" / "zz_truncated.png")
    shutil.copy(src / "images" / f"{names[1]}.jpg", ref / "images" / "zz_zero_mask.jpg")
    (ref / "masks" / "zz_zero_mask.png").write_bytes(b"")
    code, err = _run(["fingerprint", str(ref), "--out", str(tmp_path / "fp")], capsys)
    assert code == 3 and "zz_truncated" in err and "zz_zero_mask" in err
    params = [a for k, v in TINY_FIT["features"].items() for a in ("--set", f"features.{k}={v}")]
    params += [a for k, v in TINY_FIT["segmenter"].items() for a in ("--set", f"segmenter.{k}={json.dumps(v)}")]
    code, err = _run(["fit", str(ref), "--out", str(tmp_path / "b"), "--max-slice-size", "32", "--device", "cpu",
                      *params], capsys)
    assert code == 0 and "zz_truncated" in err
    info = json.loads((tmp_path / "b" / "bundle.json").read_text())["info"]
    assert info["n_reference"] == 8 and info["n_failed"] == 2


# ----------------------------------------------------------------------------- 3D corpus


def _nifti_variants(sample: Path, tmp: Path) -> tuple[Path, dict[str, str], list[dict]]:
    import SimpleITK as sitk

    good = _good_rows(sample, "hippocampus", 8)
    g = good[0]
    d = tmp / "c3d"
    d.mkdir()
    image = sitk.ReadImage(g["image"])
    mask = sitk.ReadImage(g["mask"])
    arr = sitk.GetArrayFromImage(mask)

    def write(name, img):
        sitk.WriteImage(img, str(d / name), useCompression=name.endswith(".gz"))
        return d / name

    def like(a, ref=mask):
        out = sitk.GetImageFromArray(a)
        out.CopyInformation(ref)
        return out

    fimg = sitk.GetArrayFromImage(image).astype(np.float32)
    nan_img, inf_img = fimg.copy(), fimg.copy()
    nan_img[3, 4, 5] = np.nan
    inf_img[2, 2, 2] = np.inf
    moved = sitk.Image(mask)
    moved.SetOrigin(tuple(o + 5.0 for o in mask.GetOrigin()))
    respaced = sitk.Image(mask)
    respaced.SetSpacing(tuple(s * 1.5 for s in mask.GetSpacing()))
    turned = sitk.Image(mask)
    turned.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, 1))
    # a valid gzip stream whose voxel payload is shorter than the header says
    raw = gzip.decompress(write("whole.nii.gz", mask).read_bytes())
    (d / "short_payload.nii.gz").write_bytes(gzip.compress(raw[: 352 + (len(raw) - 352) // 2]))
    vol4 = sitk.JoinSeries([mask, mask])
    bad = [
        ("truncated_image", _cut(g["image"], d / "cut_img.nii.gz", 0.6), g["mask"], DAMAGED),
        ("truncated_mask", g["image"], _cut(g["mask"], d / "cut_msk.nii.gz", 0.6), DAMAGED),
        ("short_payload_mask", g["image"], d / "short_payload.nii.gz", DAMAGED),
        ("nan_image", write("nan.nii.gz", like(nan_img, image)), g["mask"], NONFINITE),
        ("inf_image", write("inf.nii.gz", like(inf_img, image)), g["mask"], NONFINITE),
        ("mask_moved", g["image"], write("moved.nii.gz", moved), GEOMETRY),
        ("mask_respaced", g["image"], write("respaced.nii.gz", respaced), GEOMETRY),
        ("mask_turned", g["image"], write("turned.nii.gz", turned), GEOMETRY),
        ("mask_2d", g["image"], write("slice.nii.gz", like(arr[arr.shape[0] // 2], mask[:, :, 0])),
         SHAPE + "|dimension|" + GEOMETRY),
        ("mask_4d", g["image"], write("four.nii.gz", vol4), SHAPE + "|component|dimension|" + GEOMETRY),
        ("mask_label_5", g["image"], write("label5.nii.gz", like(np.where(arr == 2, 5, arr).astype(np.uint8))),
         LABELS),
        ("mask_float_half", g["image"], write("half.nii.gz", like(arr.astype(np.float32) * 0.5)), r"integer"),
        ("mask_negative", g["image"], write("neg.nii.gz", like(arr.astype(np.int16) - 1)), r"negative"),
        ("zero_byte_image", (d / "zero.nii.gz"), g["mask"], DAMAGED + r"|empty"),
        ("text_as_nifti", (d / "text.nii.gz"), g["mask"], DAMAGED),
    ]
    (d / "zero.nii.gz").write_bytes(b"")
    (d / "text.nii.gz").write_text("not a volume")
    ok_variants = [("mha_image", write("img.mha", image), g["mask"]),
                   ("float_integer_mask", g["image"], write("fmask.nii.gz", like(arr.astype(np.float32))))]
    rows, expected = [], {}
    goods = iter(good[1:] * 3)
    for i, (cid, im, mk, want) in enumerate(bad):
        rows.append({"case_id": cid, "image": str(im), "mask": str(mk), "group": "bad"})
        expected[cid] = want
        if i % 2 == 0:  # good cases in between: the batch goes on after a bad one
            nxt = dict(next(goods))
            nxt["case_id"] = f"{nxt['case_id']}_after_{cid}"
            rows.append(nxt)
            expected[nxt["case_id"]] = OK
    for cid, im, mk in ok_variants:
        rows.append({"case_id": cid, "image": str(im), "mask": str(mk), "group": "odd"})
        expected[cid] = OK
    return _write_manifest(d / "cases.csv", rows), expected, good


def test_3d_corpus_predict_one_row_each(bundles, sample, tmp_path, capsys):
    manifest, expected, _ = _nifti_variants(sample, tmp_path)
    out = tmp_path / "qc"
    code, err = _run(["predict", str(manifest), "--bundle", str(bundles["3d"]), "--out", str(out), "--no-maps"],
                     capsys)
    assert code == 3
    _check_rows(read_rows(out / "predictions.csv"), expected)
    # metrics reads the same damaged files: it must refuse them too, never measure a zero-filled mask
    code, _ = _run(["metrics", str(manifest), "--out", str(tmp_path / "m")], capsys)
    m = {r["case_id"]: r for r in read_rows(tmp_path / "m" / "metrics.csv")}
    for cid in ("truncated_mask", "short_payload_mask", "truncated_image"):
        assert m[cid]["status"] == "error" and re.search(DAMAGED, m[cid]["error"], re.I)


def test_too_large_volume_is_refused_not_killed(bundles, sample, tmp_path):
    env = dict(os.environ, SEGQC_MAX_VOXELS="100000")  # hippocampus volumes are ~35 × 50 × 35 = 61,250 voxels
    big = _good_rows(sample, "hippocampus", 2)
    import SimpleITK as sitk

    img = sitk.ReadImage(big[0]["image"])
    a = np.tile(sitk.GetArrayFromImage(img), (2, 1, 1))
    large = sitk.GetImageFromArray(a)
    large.SetSpacing(img.GetSpacing())
    sitk.WriteImage(large, str(tmp_path / "large.nii.gz"))
    m = sitk.GetImageFromArray(np.zeros(a.shape, np.uint8))
    m.SetSpacing(img.GetSpacing())
    sitk.WriteImage(m, str(tmp_path / "large_mask.nii.gz"))
    rows = [{"case_id": "large", "image": str(tmp_path / "large.nii.gz"), "mask": str(tmp_path / "large_mask.nii.gz")},
            big[1]]
    manifest = _write_manifest(tmp_path / "cases.csv", rows)
    res = subprocess.run([sys.executable, "-m", "segqc.cli", "predict", str(manifest), "--bundle", str(bundles["3d"]),
                          "--out", str(tmp_path / "qc"), "--no-maps"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 3 and "Traceback" not in res.stderr, res.stderr[-2000:]
    rows = read_rows(tmp_path / "qc" / "predictions.csv")
    assert [r["status"] for r in rows] == ["error", "ok"]
    assert "SEGQC_MAX_VOXELS" in rows[0]["error"]


def test_killed_run_resumes_with_the_same_answers(bundles, sample, tmp_path):
    """SIGKILL in the middle of a real run, then the same command: every answer as in an uninterrupted run."""
    rows = []
    for k in range(3):  # 60 photos: a few seconds of work after start-up, so the kill lands mid-run
        rows += [dict(r, case_id=f"{r['case_id']}_{k}") for r in _good_rows(sample, "kvasir", 20)]
    manifest = _write_manifest(tmp_path / "cases.csv", rows)
    argv = ["predict", str(manifest), "--bundle", str(bundles["2d"])]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "segqc.cli", *argv, "--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    csv_path = killed / "predictions.csv"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if csv_path.exists() and csv_path.read_text().count("\n") >= 6:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    partial = read_rows(csv_path)
    assert 0 < len(partial) < len(rows), "the run was not interrupted mid-way"
    assert main([*argv, "--out", str(killed)]) == 0
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    resumed = {r["case_id"]: r for r in read_rows(csv_path)}
    whole = {r["case_id"]: r for r in read_rows(tmp_path / "whole" / "predictions.csv")}
    assert len(resumed) == len(rows)
    strip = ("features_pgt", "features_error")  # map paths differ by output folder only
    for cid, r in whole.items():
        assert {k: v for k, v in resumed[cid].items() if k not in strip} == \
            {k: v for k, v in r.items() if k not in strip}, cid


def test_unusable_manifests_stop_with_one_line(bundles, tmp_path, capsys):
    """A manifest that lists nothing usable is the run's problem, not a case's: exit 1, one clear line."""
    no_image = tmp_path / "no_image_column.csv"
    no_image.write_text("case_id,mask\na,a.png\n")
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("case_id,image,mask\ncafé,é.jpg,é.png\n".encode("latin-1"))
    for manifest, why in ((no_image, "lacks column"), (latin1, "UTF-8"), (tmp_path / "absent.csv", "")):
        code, err = _run(["predict", str(manifest), "--bundle", str(bundles["2d"]), "--out", str(tmp_path / "qc")],
                         capsys)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 1 and len(lines) == 1 and why in lines[0], err
