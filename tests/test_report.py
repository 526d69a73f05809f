"""The HTML report, opened in a real headless browser (Debian's `chromium`).

A tiny QC bundle is fitted on a few embedded reference cases (2D RGB Kvasir and 3D
two-label hippocampus), real candidate masks are judged — a missing and a corrupt file
among them — and the report is rendered by chromium: the table rows and thumbnails must
exist after the inline JavaScript ran, and the screenshot must not be blank.

Without chromium the browser tests FAIL (`make test` installs it: `tools/ensure_browser.sh`); set
``SEGQC_SKIP_BROWSER=1`` to skip them deliberately. ``SEGQC_SCREENSHOT_DIR`` keeps the
screenshots.
"""

import csv
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import candidates_manifest

from segqc.cli import main
from segqc.engines.batch import read_rows


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("SEGQC_SKIP_BROWSER") == "1":
        pytest.skip("chromium not installed and SEGQC_SKIP_BROWSER=1")
    pytest.fail("chromium is needed to test the HTML report: `apt-get install -y chromium` (as `make test` does), "
                "or set SEGQC_SKIP_BROWSER=1 to skip these tests on purpose")


def _browser(html: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless chromium, offline: no background networking, no component updates, no sync, no QUIC."""
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--disable-extensions", f"--user-data-dir={tmp / 'chromium-profile'}",
           "--virtual-time-budget=10000", *args, html.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _render(html: Path, tmp: Path, name: str) -> tuple[str, Path]:
    """The DOM after the JavaScript ran, and a 1280×1600 screenshot (one browser run)."""
    shot = tmp / f"{name}.png"
    res = _browser(html, tmp, "--dump-dom", f"--screenshot={shot}", "--window-size=1280,1600", "--hide-scrollbars")
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    assert "case-row" in res.stdout, f"no table rows after the JavaScript ran: {res.stdout[:500]}"
    keep = os.environ.get("SEGQC_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / shot.name)
    return res.stdout, shot


class _Dom(HTMLParser):
    """Counts what the browser rendered: case rows (with their flags) and images by class."""

    def __init__(self):
        super().__init__()
        self.rows, self.flags, self.imgs, self.ids = 0, [], {}, []
        self._in_id = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = a.get("class") or ""
        if tag == "tr" and "case-row" in cls:
            self.rows += 1
        if tag == "span" and "flag " in cls + " ":
            self.flags.append(cls.split("flag-")[-1])
        if tag == "img":
            self.imgs.setdefault(cls, []).append(a.get("src", ""))
        self._in_id = tag == "td" and cls == "id"

    def handle_data(self, data):
        if self._in_id:
            self.ids.append(data)
            self._in_id = False


def _parse(dom: str) -> _Dom:
    p = _Dom()
    p.feed(dom)
    return p


def _not_blank(png: Path) -> None:
    from PIL import Image

    im = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    assert im.shape[:2] == (1600, 1280)
    assert len(np.unique(im.reshape(-1, 3), axis=0)) > 200, "screenshot is (nearly) one colour"
    assert im.std() > 20


def _self_contained(text: str) -> None:
    # nothing to fetch: no URL at all, no linked stylesheet or script, every static src a data URI
    assert "http://" not in text and "https://" not in text
    assert "<link" not in text and "@import" not in text and "<script src" not in text
    static = re.sub(r"<script.*?</script>", "", text, flags=re.S)
    assert all(s.startswith("data:image/") for s in re.findall(r"""src=['"]([^'"]+)""", static))


@pytest.fixture(scope="module")
def kvasir_qc(sample, tmp_path_factory, tiny_bundle):
    """`segqc predict --report` on 6 real Kvasir candidates + a missing and a corrupt mask."""
    tmp = tmp_path_factory.mktemp("kvasir")
    bundle = tiny_bundle("kvasir")
    out = tmp / "qc"
    manifest = candidates_manifest("kvasir", tmp / "kvasir_cases.csv", 6, bad=True)
    code = main(["predict", str(manifest), "--bundle", str(bundle), "--out", str(out), "--report"])
    assert code == 3  # partial: two cases could not be read
    return out


@pytest.mark.slow
def test_predict_report_2d_renders_in_browser(kvasir_qc, tmp_path):
    html = kvasir_qc / "report.html"
    text = html.read_text()
    _self_contained(text)
    rows = read_rows(kvasir_qc / "predictions.csv")
    dom, shot = _render(html, tmp_path, "report_kvasir")
    page = _parse(dom)
    assert page.rows == len(rows) == 8
    # flagged first: the two unreadable cases, then every 'review' before any 'pass'
    order = [{"error": 0, "review": 1, "pass": 2}[f] for f in page.flags]
    assert order == sorted(order) and order[:2] == [0, 0]
    assert {"missing_file", "corrupt_file"} <= set(page.ids)
    for r in rows:  # error rows show their reason
        if r["status"] == "error":
            assert r["error"] and r["error"][:30] in dom.replace("&#39;", "'").replace("&quot;", '"')
    thumbs = page.imgs.get("thumb", [])
    # every case has a picture: an unreadable mask still leaves the image to look at
    assert len(thumbs) == 8 and all(s.startswith("data:image/webp;base64,") for s in thumbs)
    assert len(page.imgs.get("plot", [])) == 3  # truth given: scatter, risk-coverage, calibration
    assert "true Dice" in dom and "estimated mean Dice" in dom
    _not_blank(shot)


@pytest.mark.slow
def test_thumbnail_shows_candidate_pgt_and_error_panels(kvasir_qc):
    import base64
    import io

    from PIL import Image

    text = (kvasir_qc / "report.html").read_text()
    data = json.loads(re.search(r'<script type="application/json" id=rows>(.*?)</script>', text, re.S)[1]
                      .replace("<\\/", "</"))
    ok = [r for r in data if r["status"] == "ok"]
    im = Image.open(io.BytesIO(base64.b64decode(ok[0]["thumb"].split(",", 1)[1])))
    # two panels (overlay, error map) of 112 px side by side; the candidate's yellow is drawn
    assert im.size[1] == 112 and im.size[0] > 2 * 100
    rgb = np.asarray(im.convert("RGB")).astype(int)
    yellowish = (rgb[..., 0] > 180) & (rgb[..., 1] > 160) & (rgb[..., 2] < 110)
    assert yellowish.sum() > 20
    bad = [r for r in data if r["status"] == "error"]
    assert {r["flag"] for r in bad} == {"error"} and all(r["error"] for r in bad)


@pytest.mark.slow
def test_report_3d_two_labels_with_mosaic(sample, tmp_path, tiny_bundle):
    bundle = tiny_bundle("hippocampus")
    out = tmp_path / "qc"
    assert main(["predict", str(candidates_manifest("hippocampus", tmp_path / "cases.csv", 4)), "--bundle", str(bundle),
                 "--out", str(out)]) == 0
    html = tmp_path / "h.html"
    assert main(["report", str(out), "--out", str(html)]) == 0  # images found through run.json
    dom, shot = _render(html, tmp_path, "report_hippocampus")
    page = _parse(dom)
    assert page.rows == 4
    assert len(page.imgs.get("thumb", [])) == 4 and len(page.imgs.get("mosaic", [])) == 4
    assert "slice z = " in dom and "per label" in dom
    _not_blank(shot)


@pytest.mark.slow
def test_large_run_is_paginated_and_sorted(kvasir_qc, tmp_path):
    """200 rows (real cases repeated under new ids): one page of 50 rows is rendered."""
    from segqc.report import write_report

    rows = read_rows(kvasir_qc / "predictions.csv")
    refs_src = {r["case_id"]: r for r in csv.DictReader(open(next(kvasir_qc.parent.glob("kvasir_cases.csv"))))}
    big = tmp_path / "big"
    big.mkdir()
    n = 200
    with open(big / "predictions.csv", "w", newline="") as f, open(big / "cases.csv", "w", newline="") as g:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        m = csv.DictWriter(g, fieldnames=list(next(iter(refs_src.values()))))
        w.writeheader()
        m.writeheader()
        for i in range(n):
            r = dict(rows[i % len(rows)])
            m.writerow(dict(refs_src[r["case_id"]], case_id=f"c{i:04d}"))
            w.writerow(dict(r, case_id=f"c{i:04d}"))
    html = write_report(big, data=big / "cases.csv", quiet=True)
    dom, shot = _render(html, tmp_path, "report_large")
    page = _parse(dom)
    assert page.rows == 50 and len(page.imgs.get("thumb", [])) == 50
    assert f"{n} of {n} cases · page 1 of {n // 50}" in dom
    assert page.flags[0] == "error"
    _not_blank(shot)


@pytest.mark.slow
def test_report_without_images_still_lists_every_case(kvasir_qc, tmp_path):
    from segqc.report import write_report

    shutil.copy(kvasir_qc / "predictions.csv", tmp_path / "predictions.csv")
    (tmp_path / "run.json").write_text(json.dumps({"options": {"data": str(tmp_path / "gone.csv")}}))
    html = write_report(tmp_path, quiet=True)
    text = html.read_text()
    assert "cannot list the cases" in text and text.count('"status":') == 8


def test_report_of_a_folder_without_results_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 1
    assert "segqc predict" in capsys.readouterr().err


def test_pick_slices_finds_the_disagreement():
    from segqc.report.thumbs import pick_slices

    mask = np.zeros((20, 16, 16), np.uint8)
    mask[5:15, 4:12, 4:12] = 1
    pgt = mask.copy()
    pgt[11, 4:12, 4:12] = 0  # the pGT disagrees on slice 11 only
    best, mosaic = pick_slices(mask, pgt, n=4)
    assert best == 11 and mosaic[0] == 5 and mosaic[-1] == 14 and len(mosaic) == 4
    best, mosaic = pick_slices(np.zeros((6, 4, 4), np.uint8), n=8)  # all empty: whole volume
    assert mosaic == list(range(6))


@pytest.mark.slow
def test_shifted_batch_shows_the_shift_warning(sample, tmp_path, tiny_bundle):
    """Images from a 'new camera' (darker, blurred, noisy, heavily compressed): the summary warns, visibly."""
    from PIL import Image, ImageFilter

    src = candidates_manifest("kvasir", tmp_path / "cases.csv", 8)
    with open(src, newline="") as f:
        rows = list(csv.DictReader(f))
    rng = np.random.default_rng(0)
    for r in rows:
        im = np.asarray(Image.open(r["image"]).convert("RGB"), dtype=np.float32) / 255.0
        im = np.clip(im ** 2.2 + rng.normal(0, 0.04, im.shape), 0, 1)  # darker, noisy sensor
        new = Image.fromarray((im * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(2))
        r["image"] = str(tmp_path / f"{r['case_id']}_site.jpg")
        new.save(r["image"], quality=15)  # heavy compression
    shifted = tmp_path / "shifted.csv"
    with open(shifted, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "qc"
    assert main(["predict", str(shifted), "--bundle", str(tiny_bundle("kvasir")), "--out", str(out), "--report"]) == 0
    dataset = json.loads((out / "dataset.json").read_text())
    print("shifted batch:", dataset["shift"])
    assert dataset["shift"]["score"] >= 0.5 and "unlike the reference images" in dataset["shift"]["warning"]
    dom, shot = _render(out / "report.html", tmp_path, "shifted")
    assert "shift-warning" in dom and "check a sample of cases by hand" in dom and "shift score" in dom
    _not_blank(shot)
    px = np.asarray(Image.open(shot).convert("RGB"), dtype=np.int16)[:400]
    note = np.all(np.abs(px - np.array([255, 244, 214])) <= 6, axis=-1)  # the warning box's background
    assert note.sum() > 2000, "the warning is not visible at the top of the report"


@pytest.mark.slow
def test_batch_like_the_reference_has_no_shift_warning(kvasir_qc):
    dataset = json.loads((kvasir_qc / "dataset.json").read_text())
    print("batch like the reference:", dataset["shift"])
    assert dataset["shift"]["score"] < 0.5 and dataset["shift"]["warning"] is None
    assert "shift-warning" not in (kvasir_qc / "report.html").read_text()


@pytest.mark.slow
def test_the_summary_says_how_strong_qcs_own_segmenter_is(kvasir_qc, tiny_bundle):
    """Most of a QC answer rests on segqc's own segmenter: dataset.json and the report's summary say its
    held-out Dice and its epochs, from the bundle the batch was judged with."""
    from segqc.pipeline.bundle import load_bundle

    info = load_bundle(tiny_bundle("kvasir")).info["segmenter"]
    judge = json.loads((kvasir_qc / "dataset.json").read_text())["judge"]
    assert judge["heldout_dice"] == pytest.approx(info["heldout_dice_mean"])
    assert judge["epochs"] == [h["epochs"] for h in info["training"]] and judge["planned_epochs"] >= 1
    text = (kvasir_qc / "report.html").read_text()
    assert "QC&#x27;s own segmenter" in text or "QC's own segmenter" in text
    assert f"Dice on {info['heldout_cases']} held-out reference cases" in text


def test_a_judge_cut_short_by_the_budget_is_said_and_a_whole_one_is_not():
    from segqc.pipeline.outputs import judge_summary

    run = {"architecture": "unet", "planned_epochs": 80}
    cut = judge_summary({"heldout_dice_mean": 0.71, "heldout_cases": 150,
                         "training": [{**run, "epochs": 52}, {**run, "epochs": 80}, {**run, "epochs": 55}]})
    assert cut["epochs"] == [52, 80, 55] and cut["planned_epochs"] == 80
    assert "cut 2 of its 3 networks short of 80 epochs" in cut["note"]
    whole = judge_summary({"heldout_dice_mean": 0.74, "heldout_cases": 150, "training": [{**run, "epochs": 80}] * 3})
    assert whole["note"] is None and whole["heldout_dice"] == 0.74
    assert judge_summary(None) is None and judge_summary({"heldout_dice_mean": float("nan")}) is None
