"""Measuring without a bundle: true Dice / HD95 of masks against their truth, and QC accuracy of a table."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from segqc.data.case import Case
from segqc.data.layouts import CaseRef
from segqc.engines.batch import BatchSummary, read_rows, run_batch
from segqc.pipeline.records import list_cases, where

__all__ = ["compute_metrics", "evaluate_arrays", "evaluate_csv", "peek_labels"]


def compute_metrics(*, data, out, layout: str = "auto", masks=None, truth=None, resume: bool = True,
                    quiet: bool = False) -> BatchSummary:
    """Dice and HD95 (mm) per label between each case's mask and its truth → ``metrics.csv``.

    ``data`` is a CSV manifest with ``mask`` and ``truth`` columns, or a dataset whose
    labels are the truth with ``masks`` a folder of candidate masks.
    """
    from segqc.metrics import dice_per_class, hd95_per_class, mean_foreground

    refs = list_cases(data, layout=layout)
    if masks is not None:  # dataset labels are the truth, `masks` the candidates
        cand = {r.case_id: r for r in list_cases(data, layout=layout, masks=masks)}
        refs = [replace(r, mask=c.mask if c else None, truth=r.mask, problem=r.problem or (c.problem if c else None))
                for r in refs for c in [cand.get(r.case_id)]]
    labels: list[int] = sorted({int(k) for k in (truth or [])})

    def one(case: Case) -> dict:
        if case.truth is None:
            raise ValueError("no truth mask to compare with")
        labs = labels or sorted(set(np.unique(case.truth).tolist()) - {0}) or [1]
        d, h = dice_per_class(case.mask, case.truth, labs), hd95_per_class(case.mask, case.truth, case.spacing, labs)
        row = {"dice": mean_foreground(d), "hd95": mean_foreground(h)}
        for k in labs:
            row[f"dice_{k}"], row[f"hd95_{k}"] = d[k], h[k]
        return row

    # columns are known only after the first case; collect label columns up front
    first_labels = labels or peek_labels(refs)
    cols = ["dice", "hd95"] + [f"{m}_{k}" for k in first_labels for m in ("dice", "hd95")]
    identity = {"command": "metrics", "data": where(data), "masks": where(masks), "layout": layout,
                "labels": first_labels}
    return run_batch(refs, one, Path(out) / "metrics.csv", columns=cols, resume=resume, description="metrics",
                     quiet=quiet, identity=identity)


def peek_labels(refs: Sequence[CaseRef]) -> list[int]:
    from segqc.data.images import read_mask

    for r in refs[:5]:
        try:
            if r.truth is not None:
                return sorted(set(np.unique(read_mask(r.truth)[0]).tolist()) - {0}) or [1]
        except (OSError, ValueError):
            continue
    return [1]


def evaluate_csv(*, table, out, pred_col: str = "dice_pred", true_col: str = "dice_true", p_col: str | None = None,
                 group_col: str | None = "group", tau: float = 0.8, title: str = "") -> dict:
    """QC accuracy from a table of predicted and true Dice → ``evaluation.json`` + plots."""

    rows = [r for r in read_rows(table) if r.get("status", "ok") == "ok"]
    if not rows:
        raise ValueError(f"{table} has no rows")
    for col in (pred_col, true_col) + ((p_col,) if p_col else ()):
        if col not in rows[0]:
            raise ValueError(f"column {col!r} not in {table}; columns are {list(rows[0])}")
    def f(r, c):
        return float(r[c]) if r.get(c, "") not in ("", "nan") else np.nan

    pred = np.array([f(r, pred_col) for r in rows])
    true = np.array([f(r, true_col) for r in rows])
    pp = np.array([f(r, p_col) for r in rows]) if p_col else None
    groups = [r.get(group_col) or "all" for r in rows] if group_col and group_col in rows[0] else None
    return evaluate_arrays(true, pred, pp, groups, tau, Path(out), title)


def evaluate_arrays(true, pred, pp, groups, tau, out: Path, title: str) -> dict:
    from segqc.evaluation import plots
    from segqc.evaluation.scores import evaluate

    out.mkdir(parents=True, exist_ok=True)
    result = evaluate(true, pred, p_pass=pp, groups=groups, tau=tau)
    (out / "evaluation.json").write_text(json.dumps(result, indent=1))
    plots.plot_scatter(true, pred, out / "scatter.png", groups=groups, tau=tau, title=title)
    ok = np.isfinite(true) & np.isfinite(pred)
    plots.plot_risk_coverage(1 - true[ok], pred[ok], out / "risk_coverage.png", title=title)
    if pp is not None:
        ok &= np.isfinite(pp)
        plots.plot_calibration(true[ok], pp[ok], out / "calibration.png", tau=tau)
    return result
