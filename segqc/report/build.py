"""Build the HTML QC report from the output folder of `segqc predict` (or `segqc bench`).

What goes in: ``predictions.csv`` (or ``bench.csv``) with one row per case — error rows
included —, ``dataset.json`` (estimated model performance per group), ``run.json`` (where
the images and candidate masks were), the pGT / error maps under ``maps/<method>/``, and
the images and masks themselves for the thumbnails. What comes out: one HTML file with
everything inline (thumbnails and plots as data URIs, table logic as plain JavaScript),
so it opens offline and can be mailed or archived as it is.
"""

from __future__ import annotations

import base64
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from segqc.data.errors import CaseError
from segqc.data.layouts import CaseRef
from segqc.engines.batch import read_rows

__all__ = ["write_report", "find_table", "auto_thumb_size"]

TABLES = ("predictions.csv", "bench.csv")


def find_table(qc_dir: str | Path) -> Path:
    """The results table of a `segqc predict` / `segqc bench` folder (or the CSV itself)."""
    qc_dir = Path(qc_dir)
    if qc_dir.is_file():
        return qc_dir
    for name in TABLES:
        if (qc_dir / name).exists():
            return qc_dir / name
    raise FileNotFoundError(f"no {' or '.join(TABLES)} in {qc_dir}: run `segqc predict ... --out {qc_dir}` first")


def auto_thumb_size(n: int) -> int:
    """Thumbnail side for ``n`` cases: 112 px up to 1,000 cases, then smaller.

    About 6 KB per case at 112 px (two WebP panels, base64): a 5,000-case report at 80 px
    stays near 15 MB instead of 30+, and still shows where a mask is off.
    """
    return 112 if n <= 1000 else 96 if n <= 2500 else 80


def _float(v) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _find_refs(table: Path, run: dict, *, data=None, layout: str = "auto", masks=None,
               root=None) -> tuple[list[CaseRef], str | None]:
    """Where the images and candidate masks are: the given ``data``, else the run record's.

    Returns the refs and, when they cannot be found, why (the report is then written
    without thumbnails rather than not at all).
    """
    from segqc.data.layouts import load_dataset, read_manifest

    bench = table.name == "bench.csv"
    opts = run.get("options", {})
    source = data if data is not None else opts.get("cases" if bench else "data")
    if data is None and not bench:  # the dataset exactly as `segqc predict` was given it
        masks = masks if masks is not None else opts.get("masks")
        layout = opts.get("layout") or layout
    if source is None:
        return [], f"{table.parent / 'run.json'} does not say where the images are; give --data"
    source = Path(source)
    if not source.exists() and not source.is_absolute():
        # paths in run.json are relative to where `segqc predict` ran; try beside the output folder too
        for base in (table.parent, *table.parent.parents):
            if (base / source).exists():
                source = base / source
                break
    try:
        if bench:
            from segqc.data.layouts import guess_root

            root = Path(root) if root else guess_root(source)
            return read_manifest(source, root=root, mask_col="prediction", truth_col="ground_truth",
                                 group_col="checkpoint"), None
        return load_dataset(source, layout=layout, masks=masks), None
    except (OSError, ValueError) as e:
        return [], f"cannot list the cases of {source}: {e}"


def _map_path(value: str, qc_dir: Path) -> Path | None:
    """Map files are recorded relative to where predict ran; also look under this folder's maps/."""
    if not value:
        return None
    p = Path(value)
    if p.exists():
        return p
    parts = p.parts
    if "maps" in parts:
        q = qc_dir.joinpath(*parts[len(parts) - parts[::-1].index("maps") - 1:])
        if q.exists():
            return q
    return None


def _case_pictures(ref: CaseRef, row: dict, qc_dir: Path, size: int) -> dict:
    """Thumbnails of one case; a case that cannot be read gets none (its row still shows why)."""
    from segqc.data.images import read_image, read_mask
    from segqc.report.thumbs import render_case

    try:
        case = ref.load(require_mask=False)
    except CaseError:  # already reported in its row; the image alone may still be worth showing
        try:
            case = CaseRef(ref.case_id, ref.image).load(require_mask=False)
        except CaseError:
            return {}
    method = row.get("method") or ""
    pgt = error = None
    p = _map_path(row.get(f"{method}_pgt", ""), qc_dir)
    if p is not None:
        try:
            pgt = read_mask(p)[0]
        except (OSError, ValueError):
            pgt = None
    p = _map_path(row.get(f"{method}_error", ""), qc_dir)
    if p is not None:
        try:
            error = read_image(p)[0][0] / 255.0  # written as 0-255 by segqc predict
        except (OSError, ValueError):
            error = None
    shape = case.image.shape[1:]
    pgt = pgt if pgt is not None and pgt.shape == shape else None
    error = error if error is not None and error.shape == shape else None
    try:
        return render_case(case.image, case.mask, case.geometry.spacing, pgt=pgt, error=error, truth=case.truth,
                           size=size)
    except (ValueError, OSError) as e:  # one odd case must not cost the whole report
        print(f"segqc report: no picture for case {ref.case_id}: {e}", file=sys.stderr)
        return {}


def _png_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _evaluation(records: list[dict], tau: float) -> tuple[dict | None, list[tuple[str, str]]]:
    """QC accuracy against the true Dice, and the three plots as data URIs (None without truth)."""
    from segqc import evaluation as ev

    ok = [r for r in records if r["status"] == "ok" and r.get("dice_true") is not None
          and r.get("dice_pred") is not None]
    if len(ok) < 2:
        return None, []
    true = np.array([r["dice_true"] for r in ok])
    pred = np.array([r["dice_pred"] for r in ok])
    pp = np.array([np.nan if r.get("p_pass") is None else r["p_pass"] for r in ok])
    pp_ok = bool(np.isfinite(pp).all())
    groups = [r["group"] or "all" for r in ok]
    result = ev.evaluate(true, pred, p_pass=pp if pp_ok else None, tau=tau)
    plots = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # one colour per group is readable for a handful of models, not for 40 checkpoints
        few = len(set(groups)) <= 8
        plots.append(("predicted vs true Dice", _png_uri(ev.plot_scatter(
            true, pred, tmp / "s.png", groups=groups if few else None, tau=tau))))
        plots.append(("risk–coverage", _png_uri(ev.plot_risk_coverage(1 - true, pred, tmp / "r.png"))))
        if pp_ok:
            plots.append(("calibration of P(pass)", _png_uri(ev.plot_calibration(true, pp, tmp / "c.png", tau=tau))))
    return result["overall"], plots


def _groups(records: list[dict], dataset: dict, tau: float) -> dict:
    """Estimated mean Dice and pass share per group: `dataset.json` when predict wrote one."""
    if dataset:
        return dataset
    from segqc.calibration.population import estimate_groups

    ok = [r for r in records if r["status"] == "ok" and r.get("dice_pred") is not None and r.get("p_pass") is not None]
    if not ok:
        return {}
    truth = [r.get("dice_true") for r in ok]
    have_truth = all(t is not None for t in truth)
    return estimate_groups([r["dice_pred"] for r in ok], [r["p_pass"] for r in ok],
                           [r["group"] or "all" for r in ok], tau=tau, true_dice=truth if have_truth else None)


def _record(row: dict, labels: list[str]) -> dict:
    rec = {"id": row.get("case_id", ""), "group": row.get("group", ""), "status": row.get("status", "ok") or "ok",
           "error": row.get("error", ""), "flag": row.get("flag", ""),
           **{k: _float(row.get(c)) for k, c in (("dice_pred", "dice_pred"), ("p_pass", "p_pass"),
                                                  ("lo", "dice_lo"), ("hi", "dice_hi"), ("hd95", "hd95_pred"),
                                                  ("dice_true", "dice_true"))}}
    if rec["status"] != "ok":
        rec["flag"] = "error"
    if len(labels) > 1:
        rec["per_label"] = {k: _float(row.get(f"dice_pred_{k}")) for k in labels}
    return rec


def write_report(qc_dir, *, out=None, data=None, layout: str = "auto", masks=None, refs=None, root=None,
                 title: str | None = None, thumb_size: int | None = None, tau: float | None = None,
                 quiet: bool = False) -> Path:
    """Write the HTML report of a `segqc predict` (or `segqc bench`) output folder.

    Args:
        qc_dir: the folder (or its ``predictions.csv`` / ``bench.csv``).
        out: HTML file to write (default ``<qc_dir>/report.html``).
        data, layout, masks: the dataset given to `segqc predict` (default: the one in
            ``run.json``); needed only for the thumbnails.
        refs: the `CaseRef` list itself, instead of ``data`` (the API's own callers).
        root: folder a benchmark ``cases.csv``'s paths are relative to (default: found).
        thumb_size: longer side of a thumbnail panel in pixels (file size grows with its
            square); None: 112, smaller for thousands of cases (see `auto_thumb_size`).
        tau: Dice a case must reach to pass (default: the bundle's, else 0.8).

    Returns:
        The path of the HTML file.
    """
    from segqc import __version__
    from segqc.report.template import render_html

    started = time.time()
    table = find_table(qc_dir)
    qc_dir = table.parent
    out = Path(out) if out is not None else qc_dir / "report.html"
    rows = read_rows(table)
    if not rows:
        raise ValueError(f"{table} has no rows")
    run = _read_json(qc_dir / "run.json")
    opts = run.get("options", {})
    if tau is None:
        tau = _read_json(qc_dir / "bench.json").get("tau") if table.name == "bench.csv" else None
    if tau is None and opts.get("bundle"):
        bundle_dir = Path(opts["bundle"])
        for base in (Path.cwd(), qc_dir, *qc_dir.parents):
            doc = _read_json(base / bundle_dir / "bundle.json")
            if doc:
                tau = doc.get("tau", doc.get("info", {}).get("tau"))
                break
    tau = float(tau) if tau is not None else 0.8
    thumb_size = auto_thumb_size(len(rows)) if thumb_size is None else int(thumb_size)
    if thumb_size < 16:
        raise ValueError(f"thumb_size must be at least 16 pixels, got {thumb_size}")
    labels = sorted({c[len("dice_pred_"):] for c in rows[0] if c.startswith("dice_pred_")}, key=str)
    records = [_record(r, labels) for r in rows]

    # thumbnails
    note = None
    if refs is None:
        refs, note = _find_refs(table, run, data=data, layout=layout, masks=masks, root=root)
    by_id = {r.case_id: r for r in refs}
    missing = 0
    from segqc import ui

    shown = {"has_pgt": False, "has_error": False}
    with ui.progress(disable=quiet, remaining=True) as progress:
        task = progress.add_task("report thumbnails", total=len(rows) if by_id else 0)
        for row, rec in zip(rows, records):
            if not by_id:
                break
            ref = by_id.get(rec["id"])
            if ref is None:
                missing += 1
            else:
                pics = _case_pictures(ref, row, qc_dir, thumb_size)
                for k in shown:
                    shown[k] |= bool(pics.pop(k, False))
                rec.update(pics)
            progress.advance(task)
    if note is None and missing:
        note = f"{missing} case(s) of the table are not in the dataset listed for thumbnails"
    if note:
        print(f"segqc report: {note}", file=sys.stderr)

    overall, plots = _evaluation(records, tau)
    dataset = _read_json(qc_dir / "dataset.json") or {}
    groups = _groups(records, dataset.get("groups", {}), tau)
    n_ok = sum(r["status"] == "ok" for r in records)
    info = {
        "title": title or f"segqc QC report — {qc_dir.name}",
        "source": str(table), "kind": "bench" if table.name == "bench.csv" else "predict",
        "method": next((r.get("method") for r in rows if r.get("method")), ""),
        "bundle": str(opts.get("bundle", "")), "tau": tau, "segqc": __version__,
        "created": time.strftime("%Y-%m-%d %H:%M"), "labels": labels if len(labels) > 1 else [],
        "n": len(records), "n_ok": n_ok, "n_error": len(records) - n_ok,
        "n_review": sum(r["flag"] == "review" for r in records),
        "has_truth": any(r.get("dice_true") is not None for r in records),
        "shift": dataset.get("shift"),
        "judge": dataset.get("judge"),
        "has_hd95": any(r.get("hd95") is not None for r in records),
        "has_mosaic": any(r.get("mosaic") for r in records), **shown,
        "note": note or "",
    }
    doc = render_html(info=info, records=records, groups=groups, overall=overall, plots=plots)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(doc, encoding="utf-8")
    if not quiet:
        size = out.stat().st_size / 1e6
        print(f"segqc report: {len(records)} cases, {size:.1f} MB, {time.time() - started:.0f} s → {out}",
              file=sys.stderr)
    return out
