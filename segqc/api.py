"""The Python API behind every `segqc` command (the CLI only parses and calls these).

All functions take keyword arguments, return plain results and write their files
into ``out``; long loops show rich progress bars on stderr.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np

from segqc.data.case import Case
from segqc.data.layouts import CaseRef, load_dataset, read_manifest
from segqc.engines.batch import BatchSummary, failure_reason, read_rows, run_batch

__all__ = ["load_cases", "fingerprint_dataset", "compute_metrics", "evaluate_csv", "fit", "predict", "bench",
           "score_case", "score_cases", "bundle_scorer", "write_dataset", "write_run_record", "sample_data_dir"]


def sample_data_dir() -> Path:
    """The real sample data shipped inside the package (Kvasir-SEG and MSD hippocampus subsets)."""
    return Path(__file__).parent / "sample_data"


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _progress(console=None):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console or _console())


def _refs(data, *, layout: str = "auto", masks=None, require_masks: bool = True) -> list[CaseRef]:
    if isinstance(data, (list, tuple)):
        return list(data)
    # absolute paths: a case read by another process (a Ray actor on another machine) finds the same file
    return load_dataset(Path(data).absolute(), layout=layout, masks=None if masks is None else Path(masks).absolute(),
                        require_masks=require_masks)


def load_cases(refs: Sequence[CaseRef], *, require_mask: bool = True, description: str = "loading",
               ) -> tuple[list[Case], list[tuple[str, str]]]:
    """Load every case; bad ones are reported (stderr) and returned as ``(case_id, reason)``."""
    cases, failed = [], []
    console = _console()
    with _progress(console) as progress:
        task = progress.add_task(description, total=len(refs))
        for ref in refs:
            try:
                cases.append(ref.load(require_mask=require_mask))
            except Exception as e:  # noqa: BLE001 — one unreadable case never stops the run
                reason = failure_reason(e)
                failed.append((ref.case_id, reason))
                console.print(f"[red]segqc: case {ref.case_id} skipped:[/red] {reason}", highlight=False)
            progress.advance(task)
    return cases, failed


def write_run_record(out: Path, command: str, options: dict, started: float, extra: dict | None = None) -> Path:
    """A machine-readable record of a run: versions, device, options, runtime."""
    import platform

    import torch

    from segqc import __version__

    record = {"command": command, "segqc": __version__, "python": platform.python_version(),
              "torch": torch.__version__, "numpy": np.__version__, "cuda": torch.cuda.is_available(),
              "options": {k: str(v) if isinstance(v, Path) else v for k, v in options.items()},
              "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
              "runtime_s": round(time.time() - started, 2), **(extra or {})}
    out.mkdir(parents=True, exist_ok=True)
    path = out / "run.json"
    path.write_text(json.dumps(record, indent=1, default=str))
    return path


# ----------------------------------------------------------------------------- fingerprint


def fingerprint_dataset(*, data, out, layout: str = "auto", max_slice_size: int = 128):
    """Reference dataset → ``fingerprint.json`` (measurements) and ``plan.json`` (decisions)."""
    from segqc.plan.fingerprint import compute_fingerprint, plan_from_fingerprint, save_fingerprint

    out = Path(out)
    cases, failed = load_cases(_refs(data, layout=layout), description="fingerprint")
    if not cases:
        raise ValueError(f"no readable case in {data}")
    fp = compute_fingerprint(cases)
    plan = plan_from_fingerprint(fp, max_slice_size=max_slice_size)
    save_fingerprint(fp, out / "fingerprint.json")
    plan.to_json(out / "plan.json")
    return fp, plan, failed


# ----------------------------------------------------------------------------- metrics


def compute_metrics(*, data, out, layout: str = "auto", masks=None, truth=None, resume: bool = True,
                    quiet: bool = False) -> BatchSummary:
    """Dice and HD95 (mm) per label between each case's mask and its truth → ``metrics.csv``.

    ``data`` is a CSV manifest with ``mask`` and ``truth`` columns, or a dataset whose
    labels are the truth with ``masks`` a folder of candidate masks.
    """
    from segqc.metrics import dice_per_class, hd95_per_class, mean_foreground

    refs = _refs(data, layout=layout)
    if masks is not None:  # dataset labels are the truth, `masks` the candidates
        cand = {r.case_id: r for r in _refs(data, layout=layout, masks=masks)}
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
    first_labels = labels or _peek_labels(refs)
    cols = ["dice", "hd95"] + [f"{m}_{k}" for k in first_labels for m in ("dice", "hd95")]
    identity = {"command": "metrics", "data": _where(data), "masks": _where(masks), "layout": layout,
                "labels": first_labels}
    return run_batch(refs, one, Path(out) / "metrics.csv", columns=cols, resume=resume, description="metrics",
                     quiet=quiet, identity=identity)


def _where(path) -> str | None:
    """An absolute path for run records (in-memory case lists have none)."""
    return None if path is None or isinstance(path, (list, tuple)) else str(Path(path).resolve())


def _peek_labels(refs: Sequence[CaseRef]) -> list[int]:
    from segqc.data.images import read_mask

    for r in refs[:5]:
        try:
            if r.truth is not None:
                return sorted(set(np.unique(read_mask(r.truth)[0]).tolist()) - {0}) or [1]
        except (OSError, ValueError):
            continue
    return [1]


# ----------------------------------------------------------------------------- evaluate


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
    return _evaluate_arrays(true, pred, pp, groups, tau, Path(out), title)


def _evaluate_arrays(true, pred, pp, groups, tau, out: Path, title: str) -> dict:
    from segqc import evaluation as ev

    out.mkdir(parents=True, exist_ok=True)
    result = ev.evaluate(true, pred, p_pass=pp, groups=groups, tau=tau)
    (out / "evaluation.json").write_text(json.dumps(result, indent=1))
    ev.plot_scatter(true, pred, out / "scatter.png", groups=groups, tau=tau, title=title)
    ok = np.isfinite(true) & np.isfinite(pred)
    ev.plot_risk_coverage(1 - true[ok], pred[ok], out / "risk_coverage.png", title=title)
    if pp is not None:
        ok &= np.isfinite(pp)
        ev.plot_calibration(true[ok], pp[ok], out / "calibration.png", tau=tau)
    return result


# ----------------------------------------------------------------------------- fit


def _split(n: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(n)
    n_cal = max(10, int(round(fraction * n))) if n >= 20 else max(1, n // 3)
    return np.sort(order[n_cal:]), np.sort(order[:n_cal])


def fit(*, reference, out, methods: Sequence[str] = ("features",), layout: str = "auto", tau: float = 0.8,
        coverage: float = 0.9, calibration_fraction: float = 0.25, calibration_pairs: int = 8, seed: int = 0,
        device: str = "auto", max_slice_size: int = 128, method_params: dict | None = None,
        extra_pairs=None, ids: Sequence[str] | None = None, model_failures: bool = True, fuse: bool = True,
        models: Sequence | None = None):
    """Reference cases (image + expert mask) → a QC bundle folder.

    Steps: fingerprint → plan; split the reference cases into a fitting part and a
    held-out calibration part; fit each method on the first; score realistic bad masks
    of the held-out part and fit each method's calibrator on them; save the bundle.

    Args:
        reference: dataset folder / manifest of reference cases with expert masks.
        methods: names from `segqc.methods.METHODS`.
        calibration_fraction: share of reference cases held out for calibration.
        calibration_pairs: bad masks per held-out case.
        method_params: ``{method: {param: value}}`` overriding a method's defaults.
        extra_pairs: manifest (``case_id, image, mask, truth``) of the user's own model's
            predictions on reference cases, ``case_id`` the reference case's id (repeated
            for several masks of one case) or a ``reference_id`` column naming it: extra
            training pairs, and calibration pairs for those of held-out reference cases.
        ids: restrict the reference cases to these ids (e.g. a benchmark's reference split).
        fuse: with two or more methods, also fit their fusion (`segqc.calibration.fusion`), offered
            as the method ``fusion``.
        model_failures: train segqc's cross-fitted reference segmenter and use its
            predictions on unseen reference cases, at early epochs and at the end, as
            realistic bad masks for fitting and calibration (see `segqc.components.segmenter`);
            its parameters come from ``method_params["segmenter"]``.
        models: the user's segmentation model(s), `segqc.user_models.SegModel` (first = the one
            whose masks will be judged, the others its ensemble partners): given to the
            methods that need it, and its own predictions on the reference cases become
            extra training / calibration pairs for every method.
    """
    from segqc.calibration.calibrator import DiceCalibrator
    from segqc.methods import METHODS, make_method
    from segqc.methods.base import make_training_pairs
    from segqc.pipeline.bundle import QCBundle, save_bundle
    from segqc.plan.fingerprint import compute_fingerprint, plan_from_fingerprint
    from segqc.utils import look_up_option

    started = time.time()
    out = Path(out)
    methods = [look_up_option(m, list(METHODS), "method") for m in methods]
    rng = np.random.default_rng(seed)
    refs = _refs(reference, layout=layout)
    if ids is not None:
        keep = set(ids)
        refs = [r for r in refs if r.case_id in keep]
    cases, failed = load_cases(refs, description="reference cases")
    empty = [c.case_id for c in cases if not np.any(c.mask)]
    if empty:
        _console().print(f"segqc: {len(empty)} reference case(s) with an empty expert mask kept: {empty[:5]}")
    if len(cases) < 4:
        raise ValueError(f"fit needs at least 4 readable reference cases, got {len(cases)}")
    fp = compute_fingerprint(cases)
    _refuse_rare_labels(cases, fp)
    plan = plan_from_fingerprint(fp, max_slice_size=max_slice_size)
    fit_idx, cal_idx = _split(len(cases), calibration_fraction, rng)
    fit_cases, cal_cases = [cases[i] for i in fit_idx], [cases[i] for i in cal_idx]
    extra_fit, extra_cal = [], []
    if extra_pairs is not None:
        extra, bad = load_cases(_refs(extra_pairs), description="extra pairs")
        cal_ids = {c.case_id for c in cal_cases}
        for c in extra:
            if c.truth is None:
                raise ValueError(f"extra pair {c.case_id} has no truth mask")
            (extra_cal if c.reference_id in cal_ids else extra_fit).append(c)
    console = _console()
    console.print(f"segqc fit: {len(fit_cases)} cases to fit, {len(cal_cases)} held out for calibration; "
                  f"plan {plan.ndim}D, {plan.modality}, slice {plan.slice_size}, labels {list(plan.labels)}")
    if models:
        own_fit, own_cal = _own_model_pairs(models[0], fit_cases, cal_cases, plan, console)
        extra_fit, extra_cal = extra_fit + own_fit, extra_cal + own_cal
    segmenter = None
    if model_failures:
        segmenter, failures_fit, failures_cal = _model_failures(
            fit_cases, cal_cases, plan, rng, device, dict((method_params or {}).get("segmenter", {})), console)
        extra_fit, extra_cal = extra_fit + failures_fit, extra_cal + failures_cal
    cal_pairs = make_training_pairs(cal_cases, rng, calibration_pairs, extra_cal)
    true_cal = np.array([_true_mean_dice(p, plan.labels) for p in cal_pairs])
    bundle = QCBundle(plan=plan, fingerprint=fp, info={"fit": {}})
    raws = {}
    params = method_params or {}
    for name in methods:
        t0 = time.time()
        kwargs = dict(params.get(name, {}))
        cls_params = make_method(name).get_params()
        if "device" in cls_params and "device" not in kwargs:
            kwargs["device"] = device
        method = make_method(name, **kwargs)
        console.print(f"[bold]fitting {name}[/bold] {method!r}")
        shared = {"segmenter": segmenter} if segmenter is not None and getattr(method, "segmenter", False) else {}
        if method.needs_model:
            if not models:
                raise ValueError(f"method {name!r} needs the segmentation model: pass --model PATH "
                                 "(repeat it for an ensemble)")
            shared["models"] = list(models)
        method.fit(fit_cases, plan, np.random.default_rng(rng.integers(1 << 31)), extra_pairs=extra_fit,
                   progress=lambda msg=None: console.print(f"  {msg}", highlight=False) if msg else None, **shared)
        t_fit = time.time() - t0
        raw = np.array([method.score(p).mean_dice for p in _track(cal_pairs, f"calibrating {name}")])
        cal = DiceCalibrator(tau=tau, coverage=coverage).fit(raw, true_cal)
        bundle.methods[name], bundle.calibrators[name] = method, cal
        raws[name] = raw
        pred = cal.predict_dice(raw)
        lo, hi = cal.interval(raw)
        from segqc import evaluation as ev

        bundle.info["fit"][name] = {
            "fit_seconds": round(t_fit, 1), "calibration_pairs": len(raw),
            # in-sample for the calibrator (it was fitted on these): a sanity check, not a benchmark
            "heldout_raw_pearson": ev.pearson(true_cal, raw), "heldout_raw_mae": ev.mae(true_cal, raw),
            "heldout_calibrated_mae": ev.mae(true_cal, pred),
            "interval_radius": cal.radius_, "interval_coverage_in_sample": float(np.mean((true_cal >= lo) &
                                                                                        (true_cal <= hi))),
        }
        info = bundle.info["fit"][name]
        console.print(f"  {name}: fitted in {t_fit:.0f} s; on held-out calibration pairs "
                      f"r={info['heldout_raw_pearson']:.3f}, raw MAE={info['heldout_raw_mae']:.3f}")
    if fuse and len(methods) >= 2:
        from segqc.calibration.fusion import FUSION, Fusion

        bundle.fusion = Fusion(list(methods), tau=tau, coverage=coverage).fit(raws, true_cal)
        bundle.calibrators[FUSION] = bundle.fusion.calibrator_
        bundle.info["fit"][FUSION] = {"members": list(methods), "weights": bundle.fusion.weights_.tolist(),
                                      "heldout_raw_pearson": bundle.fusion.heldout_pearson_}
        console.print(f"  fusion of {', '.join(methods)}: weights "
                      f"{', '.join(f'{w:.2f}' for w in bundle.fusion.weights_)}; on held-out calibration pairs "
                      f"r={bundle.fusion.heldout_pearson_:.3f} (out-of-fold)")
    # default: the answer whose raw score best follows true Dice on unseen reference cases
    # (Pearson r is scale-free, so methods with different raw scales compare fairly)
    bundle.default_method = max(bundle.info["fit"], key=lambda m: np.nan_to_num(
        bundle.info["fit"][m]["heldout_raw_pearson"], nan=-1.0))
    bundle.info.update({"n_reference": len(cases), "n_failed": len(failed), "tau": tau, "coverage": coverage,
                        "seed": seed, "fit_ids": [c.case_id for c in fit_cases],
                        "calibration_ids": [c.case_id for c in cal_cases],
                        "fit_seconds": round(time.time() - started, 1)})
    save_bundle(bundle, out)
    write_run_record(out, "fit", {"reference": str(reference), "methods": methods, "tau": tau, "seed": seed,
                                  "device": device}, started)
    console.print(f"segqc fit: bundle written to {out} (default method: {bundle.default_method})")
    return bundle


def _refuse_rare_labels(cases: list[Case], fp: dict) -> None:
    """Refuse a label that only one reference case has: it can be neither learned nor calibrated.

    (The plan's labels are measured on every reference mask, so no reference mask can hold
    a label outside the plan; a label this rare is the one way a mask can be off, most
    often a typo in that mask.) `fit` needs at least 4 reference cases before this check.
    """
    rare = [int(k) for k, n in fp["label_case_count"].items() if n < 2]
    if not rare:
        return
    present = {c.case_id: set(np.unique(c.mask).tolist()) - {0} for c in cases}
    problems = []
    for k in rare:
        (where,) = [cid for cid, labs in present.items() if k in labs]
        others = sorted(set().union(*(labs for cid, labs in present.items() if cid != where)))
        problems.append(f"label {k} is only in reference case {where} (the other cases have labels {others})")
    raise ValueError("; ".join(problems) + ": a label needs at least 2 reference cases to be learned and "
                     "calibrated; fix that mask or remap its labels")


def _own_model_pairs(model, fit_cases, cal_cases, plan, console):
    """The user's model on the reference cases: (its mask, expert mask) pairs, fit and calibration parts."""
    t0 = time.time()
    out = []
    for cases in (fit_cases, cal_cases):
        out.append([Case(f"{c.case_id}#model", c.image, model.predict_mask(c.image), c.geometry, truth=c.mask,
                         meta={**c.meta, "source": "model", "reference_id": c.case_id}) for c in cases])
    d = [_true_mean_dice(p, plan.labels) for p in out[0] + out[1]]
    console.print(f"  segmentation model on the reference cases: Dice mean {np.mean(d):.3f} "
                  f"(min {np.min(d):.3f}) in {time.time() - t0:.0f} s; these become extra pairs")
    return out[0], out[1]


def _use_models(bundle, models) -> None:
    """Give the segmentation model(s) to the bundle's methods that need one (else they reopen the fitted ones)."""
    if models:
        for m in bundle.methods.values():
            if getattr(m, "needs_model", False):
                m.set_models(list(models))


def _model_failures(fit_cases, cal_cases, plan, rng, device, params: dict, console):
    """Train the cross-fitted reference segmenter; its snapshot predictions become bad masks."""
    from segqc.components.segmenter import CrossFittedSegmenter
    from segqc.data.labels import to_index, to_labels
    from segqc.plan.preprocess import invert_mask, preprocess

    t0 = time.time()
    ms_fit = [preprocess(c, plan) for c in fit_cases]
    ms_cal = {c.case_id: preprocess(c, plan) for c in cal_cases}
    snapshots = tuple(params.pop("snapshot_epochs", (1, 2, 3, 5, 8, 13, 21, 30)))
    seg = CrossFittedSegmenter(**{"device": device, **params})
    # the segmenter's classes are label indices 0..L, whatever the label values
    seg.fit([(im, to_index(mk, plan.labels)) for im, mk, _ in ms_fit], len(plan.labels), rng,
            progress=lambda msg: console.print(f"  {msg}", highlight=False), case_ids=[c.case_id for c in fit_cases],
            snapshot_epochs=snapshots, predict_on={cid: im for cid, (im, _, _) in ms_cal.items()})
    props = {c.case_id: p for c, (_, _, p) in zip(fit_cases, ms_fit)} | {k: v[2] for k, v in ms_cal.items()}

    def pairs(cases):
        out = []
        for c in cases:
            for tag, mask_ms in seg.snapshot_masks_.get(c.case_id, []):
                cand = to_labels(invert_mask(mask_ms, props[c.case_id]), plan.labels)
                out.append(Case(c.case_id, c.image, cand, c.geometry, truth=c.mask,
                                meta={**c.meta, "source": tag, "reference_id": c.case_id}))
        return out

    fit_pairs, cal_pairs = pairs(fit_cases), pairs(cal_cases)
    seg.snapshot_masks_ = {}  # not needed any more; keeps memory and the bundle small
    d = [_true_mean_dice(p, plan.labels) for p in fit_pairs]
    console.print(f"  reference segmenter: {len(fit_pairs)} + {len(cal_pairs)} model-made bad masks "
                  f"(Dice mean {np.mean(d):.2f}, range {np.min(d):.2f}–{np.max(d):.2f}) in {time.time() - t0:.0f} s")
    return seg, fit_pairs, cal_pairs


def _track(items, description: str):
    with _progress() as progress:
        task = progress.add_task(description, total=len(items))
        for it in items:
            yield it
            progress.advance(task)


def _true_mean_dice(case: Case, labels) -> float:
    from segqc.metrics import binary_dice

    return float(np.mean([binary_dice(case.mask == k, case.truth == k) for k in labels]))


# ----------------------------------------------------------------------------- predict


def score_case(bundle, case: Case, methods: Sequence[str], *, maps_dir: Path | None = None) -> dict:
    """All methods' answers for one case as one flat row (the first method is the main answer)."""
    row = score_cases(bundle, [case], methods, maps_dir=maps_dir)[0]
    if isinstance(row, Exception):
        raise row
    return row


def score_cases(bundle, cases: Sequence[Case], methods: Sequence[str], *,
                maps_dir: Path | None = None) -> list[dict | Exception]:
    """`score_case` of several cases: each method scores them as one batch (`QCMethod.score_batch`).

    A case that cannot be scored gets its exception in its place; the others are answered.
    """
    from segqc.calibration.fusion import FUSION

    methods = _with_members(bundle, methods)  # the fusion needs every member's answer
    plan = bundle.plan
    errors: list[Exception | None] = [
        None if (c.ndim, c.n_channels) == (plan.ndim, plan.n_channels) else
        ValueError(f"case is {c.ndim}D with {c.n_channels} channel(s); the bundle expects {plan.ndim}D with "
                   f"{plan.n_channels}") for c in cases]
    raws: list[dict] = [{} for _ in cases]
    for name in dict.fromkeys(m for m in methods if m != FUSION):
        live = [i for i, e in enumerate(errors) if e is None]
        for i, raw in zip(live, bundle.methods[name].score_batch([cases[i] for i in live])):
            if isinstance(raw, Exception):
                errors[i] = raw
            else:
                raws[i][name] = raw
    out: list[dict | Exception] = []
    for case, raw, err in zip(cases, raws, errors):
        try:
            out.append(err or _row(bundle, case, methods, raw, maps_dir))
        except Exception as e:  # noqa: BLE001 — e.g. a map that cannot be written: this case's error
            out.append(e)
    return out


def _row(bundle, case: Case, methods: Sequence[str], raws: dict, maps_dir: Path | None) -> dict:
    """One case's row from its methods' raw scores: calibrated answers, maps written, true Dice if known."""
    from segqc.calibration.fusion import FUSION
    from segqc.data.images import is_photo, write_mask

    row: dict = {}
    for i, name in enumerate(methods):
        if name not in raws:
            raws[name] = _fused_score(bundle, case, raws)
        raw = raws[name]
        cal = bundle.calibrators[name]
        d = float(cal.predict_dice(raw.mean_dice))
        lo, hi = cal.interval(raw.mean_dice)
        p = float(cal.predict_pass(raw.mean_dice))
        row[f"{name}_raw"], row[f"{name}_dice"], row[f"{name}_p_pass"] = raw.mean_dice, d, p
        if i == 0:
            row.update({"method": name, "dice_pred": d, "p_pass": p, "flag": "pass" if p >= 0.5 else "review",
                        "dice_lo": float(lo), "dice_hi": float(hi)})
            for k, v in raw.dice.items():
                row[f"dice_pred_{k}"] = float(cal.predict_dice(v))
            if raw.hd95:
                row["hd95_pred"] = float(np.nanmean(list(raw.hd95.values())))
        if maps_dir is not None and raw.maps and name != FUSION:
            photo = case.meta.get("image") and is_photo(case.meta["image"][0])
            ext = ".png" if photo else ".nii.gz"
            safe = _file_stem(case.case_id)
            for key, arr in raw.maps.items():
                out_arr = arr if arr.dtype != np.float32 else (np.clip(arr, 0, 1) * 255).astype(np.uint8)
                path = write_mask(maps_dir / name / f"{safe}_{key}{ext}", out_arr, case.geometry)
                row[f"{name}_{key}"] = str(path)
    if FUSION in raws:  # the fusion shows the maps of its first member that has them
        member = next((m for m in bundle.fusion.members if raws[m].maps), None)
        for key in ("pgt", "error"):
            if member and f"{member}_{key}" in row:
                row[f"{FUSION}_{key}"] = row[f"{member}_{key}"]
    if case.truth is not None:
        from segqc.metrics import dice as dice_fn

        row["dice_true"] = dice_fn(case.mask, case.truth, list(bundle.plan.labels))
    return row


def _file_stem(case_id: str) -> str:
    """A file name for a case's maps: the id where it is safe, else a cleaned id + a hash of the real one.

    Two ids never share a file (``a/b`` and ``a_b`` differ by their hash suffix).
    """
    import hashlib
    import re

    clean = re.sub(r"[^\w.~+-]", "_", case_id).lstrip(".")[:120] or "case"
    if clean == case_id:
        return clean
    return f"{clean}-{hashlib.sha256(case_id.encode()).hexdigest()[:10]}"


def _fused_score(bundle, case: Case, raws: dict):
    """The fusion's raw score: members' calibrated Dice, weighted (scored here if not yet)."""
    from segqc.methods.base import RawScore

    fusion = bundle.fusion
    for m in fusion.members:
        if m not in raws:
            raws[m] = bundle.methods[m].score(case)
    calibrated = {m: float(bundle.calibrators[m].predict_dice(raws[m].mean_dice)) for m in fusion.members}
    per_label = {k: fusion.fused_raw({m: float(bundle.calibrators[m].predict_dice(raws[m].dice[k]))
                                      for m in fusion.members}) for k in bundle.plan.labels}
    # the fusion was fitted on the members' calibrated *mean* Dice, not on per-label values
    return RawScore(dice=per_label, hd95=next((raws[m].hd95 for m in fusion.members if raws[m].hd95), None),
                    features={f"{m}_dice": v for m, v in calibrated.items()}, overall=fusion.fused_raw(calibrated))


def _answers(bundle) -> list[str]:
    """The answers a bundle can give: its methods, then their fusion when fitted."""
    from segqc.calibration.fusion import FUSION

    return list(bundle.methods) + ([FUSION] if bundle.fusion is not None else [])


def _with_members(bundle, methods: Sequence[str]) -> list[str]:
    """``methods`` plus the fusion's members it needs (their columns are filled anyway)."""
    from segqc.calibration.fusion import FUSION

    extra = [m for m in bundle.fusion.members if m not in methods] if FUSION in methods else []
    return list(methods) + extra


def _columns(bundle, methods: Sequence[str], with_truth: bool) -> list[str]:
    cols = ["method", "dice_pred", "p_pass", "flag", "dice_lo", "dice_hi", "hd95_pred"]
    cols += [f"dice_pred_{k}" for k in bundle.plan.labels]
    for name in methods:
        cols += [f"{name}_raw", f"{name}_dice", f"{name}_p_pass", f"{name}_pgt", f"{name}_error"]
    return cols + (["dice_true"] if with_truth else [])


def _num(value) -> float:
    """A CSV cell as a float; empty (a case without a truth mask) is NaN."""
    return float(value) if value not in (None, "") else float("nan")


def predict(*, bundle, data, out, methods: Sequence[str] | None = None, masks=None, layout: str = "auto",
            save_maps: bool = True, resume: bool = True, quiet: bool = False,
            models: Sequence | None = None, engine: str = "local", batch_size: int | None = None,
            workers: int | None = None, address: str | None = None, gpus_per_worker: float = 0.0,
            num_parts: int = 1, part_id: int = 0) -> tuple[BatchSummary, dict]:
    """Bundle + images + candidate masks → ``predictions.csv`` (row by row) and ``dataset.json``.

    Args:
        engine: ``local`` (this process) or ``ray`` (Ray Data: reading in tasks, scoring in
            an actor pool that loads the bundle once per actor; `segqc.engines.ray_engine`).
        batch_size: cases scored together by each method (default: 16 with a GPU, else 1).
        workers, address, gpus_per_worker: the Ray engine's actors, cluster and GPUs per actor.
        num_parts, part_id: judge only part ``part_id`` of ``num_parts`` (cases ``part_id``,
            ``part_id + num_parts``, … of the listing), for schedulers without Ray; `segqc
            merge` joins the parts' folders.
    """
    from segqc.engines.shards import select_part
    from segqc.pipeline.bundle import bundle_hash, load_bundle

    started = time.time()
    out = Path(out)
    b = load_bundle(bundle)
    _use_models(b, models)  # the segmentation model(s), for methods that need one
    answers = _answers(b)
    methods = list(methods or [b.default_method] + [m for m in answers if m != b.default_method])
    for m in methods:
        if m not in answers:
            raise ValueError(f"method {m!r} is not in bundle {bundle}; it has {answers}")
    methods = _with_members(b, methods)
    refs = _refs(data, layout=layout, masks=masks)
    with_truth = any(r.truth is not None for r in refs)  # of all parts: every part has the same columns
    refs = select_part(refs, num_parts, part_id)
    identity = {"command": "predict", "bundle": bundle_hash(bundle), "methods": methods, "maps": save_maps,
                "data": _where(data), "masks": _where(masks), "layout": layout,
                "models": [repr(m) for m in models or []], "num_parts": num_parts, "part_id": part_id}
    maps_dir = out.absolute() / "maps" if save_maps else None  # the same path from every worker
    if engine == "ray":  # each actor loads the bundle itself: only its path travels
        make_scorer = partial(bundle_scorer, str(bundle), methods, maps_dir, list(models or []))
    else:
        def make_scorer():  # the bundle loaded above, in this process
            return partial(score_cases, b, methods=methods, maps_dir=maps_dir)
    summary = run_batch(refs, None, out / "predictions.csv", columns=_columns(b, methods, with_truth),
                        resume=resume, description="QC", quiet=quiet, identity=identity, make_scorer=make_scorer,
                        engine=_engine(engine, batch_size, workers, address, gpus_per_worker))
    dataset = write_dataset(out, b.tau, with_truth)
    # absolute paths, so that `segqc report` finds the images from anywhere
    write_run_record(out, "predict", {"bundle": str(Path(bundle).resolve()), "data": _where(data),
                                      "masks": _where(masks), "layout": layout, "methods": methods,
                                      "engine": engine, "num_parts": num_parts, "part_id": part_id}, started,
                     {"bundle_hash": bundle_hash(bundle), "n_ok": summary.n_done, "n_failed": summary.n_failed,
                      "n_skipped": summary.n_skipped})
    return summary, dataset


def bundle_scorer(bundle, methods: Sequence[str], maps_dir: Path | None, models: Sequence = ()):
    """A scorer of case lists with its own copy of the bundle (built once per process or Ray actor)."""
    from segqc.pipeline.bundle import load_bundle

    b = load_bundle(bundle)
    _use_models(b, models)
    return partial(score_cases, b, methods=methods, maps_dir=maps_dir)


def default_batch_size() -> int:
    """Cases scored together: 16 where a GPU can run them at once, 1 on a CPU (no gain there)."""
    import torch

    return 16 if torch.cuda.is_available() else 1


def _engine(name: str, batch_size: int | None, workers: int | None, address: str | None, gpus_per_worker: float):
    from segqc.engines.batch import LocalEngine
    from segqc.utils import look_up_option

    name = look_up_option(name, ["local", "ray"], "engine")
    batch_size = batch_size or default_batch_size()
    if name == "local":
        return LocalEngine(batch_size)
    from segqc.engines.ray_engine import RayEngine

    return RayEngine(batch_size=batch_size, workers=workers, address=address, gpus_per_worker=gpus_per_worker)


def write_dataset(out: Path, tau: float, with_truth: bool) -> dict:
    """``dataset.json`` from every ok row of ``out/predictions.csv``: the model's estimated performance."""
    from segqc.calibration.population import estimate_groups

    rows = [r for r in read_rows(out / "predictions.csv") if r["status"] == "ok"]
    dataset = estimate_groups([_num(r["dice_pred"]) for r in rows], [_num(r["p_pass"]) for r in rows],
                              [r["group"] or "all" for r in rows], tau=tau,
                              true_dice=[_num(r.get("dice_true")) for r in rows] if with_truth else None)
    (out / "dataset.json").write_text(json.dumps(dataset, indent=1))
    return dataset


# ----------------------------------------------------------------------------- bench


def bench(*, bundle, cases, out, root=None, methods: Sequence[str] | None = None, tau: float | None = None,
          limit: int | None = None, seed: int = 0, resume: bool = True, quiet: bool = False,
          models: Sequence | None = None) -> dict:
    """Every method of a bundle side by side on a benchmark ``cases.csv`` with true Dice.

    The benchmark's ``prediction`` column is the candidate, ``ground_truth`` the truth
    (used only to check, never shown to a method); ``dice`` is the true quality.
    Writes ``bench.csv`` (row by row), ``bench.json`` and per-method plots.
    """
    from segqc import evaluation as ev
    from segqc.calibration.population import estimate_groups
    from segqc.pipeline.bundle import bundle_hash, load_bundle

    started = time.time()
    out = Path(out)
    b = load_bundle(bundle)
    _use_models(b, models)
    methods = _with_members(b, list(methods or _answers(b)))
    tau = b.tau if tau is None else tau
    cases = Path(cases)
    root = Path(root) if root else _guess_root(cases)
    refs = read_manifest(cases, root=root, mask_col="prediction", truth_col="ground_truth", group_col="checkpoint")
    if limit is not None and limit < len(refs):
        refs = [refs[i] for i in sorted(np.random.default_rng(seed).choice(len(refs), limit, replace=False))]
    extra_cols = ["model", "is_deployed", "source_id"]  # source_id: the image's id as in cases.csv
    identity = {"command": "bench", "bundle": bundle_hash(bundle), "methods": methods, "cases": _where(cases),
                "root": _where(root), "limit": limit, "seed": seed, "models": [repr(m) for m in models or []]}
    summary = run_batch(refs, lambda c: {**score_case(b, c, methods),
                                         **{k: c.meta.get(k, "") for k in extra_cols}},
                        out / "bench.csv", columns=_columns(b, methods, True) + extra_cols, resume=resume,
                        description="bench", quiet=quiet, identity=identity)
    rows = [r for r in read_rows(out / "bench.csv") if r["status"] == "ok"]
    truth = {r.case_id: r.extra.get("dice") for r in refs}
    true = np.array([_num(truth.get(r["case_id"]) or r["dice_true"]) for r in rows])
    groups = [r["group"] for r in rows]
    deployed = np.array([r.get("is_deployed") == "True" for r in rows])
    result = {"cases": str(cases), "n": len(rows), "n_failed": summary.n_failed, "tau": tau, "methods": {}}
    for name in methods:
        pred = np.array([float(r[f"{name}_dice"]) for r in rows])
        pp = np.array([float(r[f"{name}_p_pass"]) for r in rows])
        res = _evaluate_arrays(true, pred, pp, groups, tau, out / name, f"{name} on {cases.parent.name}")
        if deployed.any():
            res["deployed"] = ev.evaluate(true[deployed], pred[deployed], p_pass=pp[deployed], tau=tau)["overall"]
        cal = b.calibrators[name]
        lo, hi = cal.interval(np.array([float(r[f"{name}_raw"]) for r in rows]))
        res["interval_coverage"] = float(np.mean((true >= lo) & (true <= hi)))
        res["interval_nominal"] = cal.coverage
        res["dataset_level"] = estimate_groups(pred, pp, groups, tau=tau, true_dice=true)
        result["methods"][name] = res
    (out / "bench.json").write_text(json.dumps(result, indent=1))
    write_run_record(out, "bench", {"bundle": str(bundle), "cases": str(cases), "methods": methods, "tau": tau},
                     started, {"n": len(rows)})
    return result


def _guess_root(cases: Path) -> Path:
    """Benchmark paths are relative to ``shared/``: walk up until the first path resolves."""
    listed = [r for r in read_manifest(cases, root=cases.parent) if r.image]
    if not listed:
        return cases.parent
    rel = listed[0].image[0].relative_to(cases.parent)
    for parent in [cases.parent, *cases.parents]:
        if (parent / rel).exists():
            return parent
    print(f"segqc: cannot resolve {rel} above {cases}; using its folder", file=sys.stderr)
    return cases.parent
