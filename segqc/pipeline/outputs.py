"""What a run leaves behind: a table row per answered case, map files, and ``dataset.json``."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segqc.calibration.fusion import FUSION
from segqc.engines.batch import read_rows
from segqc.pipeline.answering import Answer

__all__ = ["answer_row", "batch_shift", "columns", "described", "descriptors", "file_stem", "judge_summary", "number",
           "write_dataset"]


def columns(labels: Sequence[int], methods: Sequence[str], with_truth: bool, appearance: bool = False,
            described: Sequence[str] = ()) -> list[str]:
    """The columns of ``predictions.csv`` / ``bench.csv`` (after the batch's own id/status/group columns);
    ``described``: the methods whose calibrators correct a batch's mean (their descriptors are kept)."""
    cols = ["method", "dice_pred", "p_pass", "flag", "dice_lo", "dice_hi", "hd95_pred"]
    cols += [f"dice_pred_{k}" for k in labels]
    for name in methods:
        cols += [f"{name}_raw", f"{name}_dice", f"{name}_p_pass", f"{name}_pgt", f"{name}_error"]
    return (cols + (["dice_true"] if with_truth else []) + (["appearance"] if appearance else [])
            + [f"{name}_descriptor" for name in methods if name in described])


def described(calibrators: dict, methods: Sequence[str]) -> list[str]:
    """Those of ``methods`` whose calibrator corrects a batch's mean (`segqc.calibration.batch_correction`)."""
    return [m for m in methods if getattr(calibrators.get(m), "correction_", None) is not None]


def _numbers(cell: str) -> list[float] | None:
    """A ';'-joined cell written by `answer_row` as numbers; None when it is not one (an edited table)."""
    try:
        return [float(v) for v in cell.split(";")]
    except ValueError:
        return None


def descriptors(rows: list[dict], method: str) -> np.ndarray | None:
    """The rows' ``<method>_descriptor`` cells as a matrix; None when any row lacks one or has one that
    is not a row of numbers like the others (an edited table): the batch is then not corrected, never
    corrected from numbers that were changed."""
    cells = [r.get(f"{method}_descriptor") or "" for r in rows]
    if not cells or not all(cells):
        return None
    values = [_numbers(c) for c in cells]
    if any(v is None for v in values) or len({len(v) for v in values}) != 1:
        return None
    return np.array(values)


def answer_row(answer: Answer, labels: Sequence[int], maps_dir: Path | None) -> dict:
    """One case's row: every method's calibrated answer, the first as the main one; maps written."""
    from segqc.data.images import is_photo, write_mask

    case = answer.case
    row: dict = {}
    for i, (name, a) in enumerate(answer.methods.items()):
        row[f"{name}_raw"], row[f"{name}_dice"], row[f"{name}_p_pass"] = a.raw.mean_dice, a.dice, a.p_pass
        if a.descriptor is not None:  # one cell, ';'-separated: the batch correction reads them back
            row[f"{name}_descriptor"] = ";".join(f"{v:.7g}" for v in a.descriptor)
        if i == 0:
            row.update({"method": name, "dice_pred": a.dice, "p_pass": a.p_pass,
                        "flag": "pass" if a.p_pass >= 0.5 else "review",
                        "dice_lo": a.interval[0], "dice_hi": a.interval[1]})
            row.update({f"dice_pred_{k}": v for k, v in a.dice_per_label.items()})
            if a.hd95 is not None:
                row["hd95_pred"] = a.hd95
        if maps_dir is not None and a.raw.maps and name != FUSION:
            photo = case.meta.get("image") and is_photo(case.meta["image"][0])
            ext = ".png" if photo else ".nii.gz"
            stem = file_stem(case.case_id)
            for key, arr in a.raw.maps.items():
                out_arr = arr if arr.dtype != np.float32 else (np.clip(arr, 0, 1) * 255).astype(np.uint8)
                row[f"{name}_{key}"] = str(write_mask(maps_dir / name / f"{stem}_{key}{ext}", out_arr, case.geometry))
    if FUSION in answer.methods:  # the fusion shows the maps of its first member that has them
        member = answer.methods[FUSION].maps_of
        for key in ("pgt", "error"):
            if member and f"{member}_{key}" in row:
                row[f"{FUSION}_{key}"] = row[f"{member}_{key}"]
    if case.truth is not None:
        from segqc.metrics import dice

        row["dice_true"] = dice(case.mask, case.truth, list(labels))
    if answer.appearance is not None:  # one cell: the descriptor's numbers, ';'-separated
        row["appearance"] = ";".join(f"{v:.6g}" for v in answer.appearance)
    return row


def file_stem(case_id: str) -> str:
    """A file name for a case's maps: the id where it is safe, else a cleaned id + a hash of the real one.

    Two ids never share a file (``a/b`` and ``a_b`` differ by their hash suffix).
    """
    clean = re.sub(r"[^\w.~+-]", "_", case_id).lstrip(".")[:120] or "case"
    if clean == case_id:
        return clean
    return f"{clean}-{hashlib.sha256(case_id.encode()).hexdigest()[:10]}"


def number(value) -> float:
    """A CSV cell as a float; empty (a case without a truth mask) is NaN."""
    return float(value) if value not in (None, "") else float("nan")


def write_dataset(out: Path, tau: float, with_truth: bool, reference_appearance: np.ndarray | None = None,
                  calibrators: dict | None = None, segmenter: dict | None = None) -> dict:
    """``dataset.json`` from every ok row of ``out/predictions.csv``: the model's estimated performance.

    Its ``groups`` are the estimates (``all`` and one per group), their intervals widened by
    the answering method's systematic error bound when ``calibrators`` has it; ``shift``
    says how far the batch's images are from the reference images
    (`segqc.calibration.shift`), when the bundle holds their appearance; ``judge`` how
    strong segqc's own reference segmenter is (`judge_summary` of the bundle's
    ``info["segmenter"]``, given as ``segmenter``), when the fit trained one.
    """
    from segqc.calibration.population import estimate_groups

    rows = [r for r in read_rows(out / "predictions.csv") if r["status"] == "ok"]
    answering = {r["method"] for r in rows}
    method = answering.pop() if len(answering) == 1 else None
    cal = (calibrators or {}).get(method)
    groups = estimate_groups([number(r["dice_pred"]) for r in rows], [number(r["p_pass"]) for r in rows],
                             [r["group"] or "all" for r in rows], tau=tau,
                             true_dice=[number(r.get("dice_true")) for r in rows] if with_truth else None,
                             systematic=getattr(cal, "systematic_", float("nan")),
                             correction=getattr(cal, "correction_", None),
                             descriptors=descriptors(rows, method) if method else None)
    dataset = {"groups": groups, "shift": batch_shift(rows, reference_appearance), "judge": judge_summary(segmenter)}
    (out / "dataset.json").write_text(json.dumps(dataset, indent=1))
    return dataset


def batch_shift(rows: list[dict], reference_appearance: np.ndarray | None) -> dict | None:
    """`segqc.calibration.shift.shift_score` of the rows' images against the reference images.

    An ``appearance`` cell that is not the reference's number of finite numbers (an edited table)
    is left out, and counted in ``unreadable``: the rest of the batch still gets its shift score
    and warning, and writing ``dataset.json`` never fails on it."""
    if reference_appearance is None:
        return None
    from segqc.calibration.shift import shift_score

    width = np.shape(reference_appearance)[-1]
    cells = [r.get("appearance") or "" for r in rows]
    values = [_numbers(c) for c in cells if c]
    readable = [v for v in values if v is not None and len(v) == width and np.all(np.isfinite(v))]
    if not readable:
        return None
    out = shift_score(reference_appearance, np.array(readable))
    if len(readable) < len(values):
        out["unreadable"] = len(values) - len(readable)
    return out


def judge_summary(segmenter: dict | None) -> dict | None:
    """How strong segqc's own reference segmenter is, from a bundle's ``info["segmenter"]``: its Dice on the
    held-out reference cases and the epochs its fold networks got of those planned; None without one.

    Most of a QC answer rests on agreement with this segmenter, and the fit trains it for a time
    budget: on a slower or busier machine it gets fewer epochs and is weaker, and so is QC. The
    report shows it beside the estimates, with a note when the budget cut it short."""
    dice = (segmenter or {}).get("heldout_dice_mean")
    if not isinstance(dice, (int, float)) or not np.isfinite(dice):  # no segmenter, or no held-out case
        return None
    training = segmenter.get("training") or []
    epochs = [int(h["epochs"]) for h in training]
    planned = max((int(h.get("planned_epochs", 0)) for h in training), default=0)
    cut = sum(e < planned for e in epochs)
    return {"heldout_dice": float(dice), "heldout_cases": segmenter.get("heldout_cases"),
            "epochs": epochs, "planned_epochs": planned,
            "note": (f"the fit's time budget cut {cut} of its {len(epochs)} networks short of {planned} epochs: "
                     "on this machine segqc's own segmenter, and QC with it, is weaker than its settings allow "
                     "(refit with a larger segmenter.max_minutes)") if cut else None}
