"""Fitting, as nnU-Net tells it: fingerprint → plan → training pairs → methods → calibration → bundle.

`fit` never asks what a method is: every method gets the same `FitContext` and is
calibrated the same way, on held-out reference cases it never saw.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from segqc import ui
from segqc.calibration.pool import CALIBRATE_ON, calibration_pool, choose_pool, is_network_made
from segqc.data.case import Case
from segqc.methods.base import FitContext, TrainingPair
from segqc.pipeline.profiles import resolve_profile, with_profile
from segqc.pipeline.records import list_cases, load_cases, where, write_run_record
from segqc.utils import resolve_device

__all__ = ["fingerprint_dataset", "fit", "raw_scores", "reference_cases", "split_for_calibration"]


def fingerprint_dataset(*, data, out, layout: str = "auto", max_slice_size: int = 128):
    """Reference dataset → ``fingerprint.json`` (measurements) and ``plan.json`` (decisions)."""
    from segqc.plan.fingerprint import compute_fingerprint, save_fingerprint
    from segqc.plan.plan import plan_from_fingerprint

    out = Path(out)
    cases, failed = load_cases(list_cases(data, layout=layout), description="fingerprint")
    if not cases:
        raise ValueError(f"no readable case in {data}")
    fp = compute_fingerprint(cases)
    plan = plan_from_fingerprint(fp, max_slice_size=max_slice_size)
    save_fingerprint(fp, out / "fingerprint.json")
    plan.to_json(out / "plan.json")
    return fp, plan, failed


def split_for_calibration(n: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the fitting part and of the held-out calibration part (at least 10 held out when n ≥ 20)."""
    order = rng.permutation(n)
    n_cal = max(10, int(round(fraction * n))) if n >= 20 else max(1, n // 3)
    return np.sort(order[n_cal:]), np.sort(order[:n_cal])


def fit(*, reference, out, methods: Sequence[str] = ("features",), layout: str = "auto", tau: float = 0.8,
        coverage: float = 0.9, calibration_fraction: float = 0.25, calibration_pairs: int = 8, seed: int = 0,
        device: str = "auto", max_slice_size: int = 128, method_params: dict | None = None,
        extra_pairs=None, ids: Sequence[str] | None = None, model_failures: bool = True, fuse: bool = True,
        models: Sequence | None = None, profile: str = "auto", simulated_sites: int = 4,
        calibrate_on: str = "auto"):
    """Reference cases (image + expert mask) → a QC bundle folder.

    Steps: fingerprint → plan; split the reference cases into a fitting part and a
    held-out calibration part; gather training pairs; fit each method on the first part;
    score bad masks of the held-out part and fit each method's calibrator on them; fuse;
    save the bundle.

    Args:
        reference: dataset folder / manifest of reference cases with expert masks.
        methods: names from `segqc.methods.METHODS`.
        calibration_fraction: share of reference cases held out for calibration.
        calibration_pairs: bad masks per held-out case.
        method_params: ``{method: {param: value}}`` overriding a method's defaults
            (``segmenter``: the reference segmenter's).
        extra_pairs: manifest (``case_id, image, mask, truth``) of the user's own model's
            predictions on reference cases, ``case_id`` the reference case's id (repeated
            for several masks of one case) or a ``reference_id`` column naming it.
        ids: restrict the reference cases to these ids (e.g. a benchmark's reference split).
        fuse: with two or more methods, also fit their fusion, offered as the method ``fusion``.
        model_failures: train segqc's cross-fitted reference segmenter and use its
            predictions on unseen reference cases as realistic bad masks
            (`segqc.pipeline.training_pairs.segmenter_pairs`).
        simulated_sites: held-out cases are also segmented by segqc's segmenter as this many
            simulated acquisition sites see them (`segqc.data.acquisition`), so that
            calibration, its intervals and the site-level error bound see how QC errs at an
            unfamiliar site (needs ``model_failures``; 0: none).
        calibrate_on: which held-out pairs the calibrators are fitted on: ``all``, ``networks``
            (the masks models made; synthetic corruptions only beyond their scores), or ``auto``
            (the default: each method's choice of the two on its own held-out pairs,
            `segqc.calibration.pool.choose_pool`).
        profile: ``cpu``, ``gpu`` or ``auto`` (``gpu`` on a CUDA device): settings sized for
            the hardware (`segqc.pipeline.profiles`), beneath ``method_params``.
        models: the user's segmentation model(s), `segqc.user_models.SegModel` (first = the one
            whose masks will be judged, the others its ensemble partners): given to the
            methods that need it; its own predictions become extra training pairs.
    """
    from segqc.methods import METHODS, make_method
    from segqc.methods.base import make_training_pairs
    from segqc.pipeline.bundle import QCBundle, save_bundle
    from segqc.pipeline.training_pairs import manifest_pairs, model_pairs, segmenter_pairs
    from segqc.utils import look_up_option

    started = time.time()
    out = Path(out)
    methods = [look_up_option(m, list(METHODS), "method") for m in methods]
    if calibrate_on not in CALIBRATE_ON:
        raise ValueError(f"calibrate_on must be one of {list(CALIBRATE_ON)}, got {calibrate_on!r}")
    if simulated_sites < 0:
        raise ValueError(f"simulated_sites must be 0 or more, got {simulated_sites}")
    device = resolve_device(device)
    profile = resolve_profile(profile, device)
    params = with_profile(profile, method_params)
    rng = np.random.default_rng(seed)
    console = ui.console()
    cases, failed, fp, plan = reference_cases(reference, layout=layout, ids=ids, max_slice_size=max_slice_size)
    fit_idx, cal_idx = split_for_calibration(len(cases), calibration_fraction, rng)
    fit_cases, cal_cases = [cases[i] for i in fit_idx], [cases[i] for i in cal_idx]
    cal_ids = {c.case_id for c in cal_cases}
    extra_fit: list[TrainingPair] = []
    extra_cal: list[TrainingPair] = []
    if extra_pairs is not None:
        extra_fit, extra_cal = manifest_pairs(load_cases(list_cases(extra_pairs), description="extra pairs")[0],
                                              cal_ids)
    console.print(f"segqc fit: {len(fit_cases)} cases to fit, {len(cal_cases)} held out for calibration; "
                  f"plan {plan.ndim}D, {plan.modality}, slice {plan.slice_size}, labels {list(plan.labels)}; "
                  f"{profile} profile on {device}")
    if models:
        own_fit, own_cal = model_pairs(models[0], fit_cases, cal_cases, plan)
        extra_fit, extra_cal = extra_fit + own_fit, extra_cal + own_cal
    segmenter = None
    if model_failures:
        segmenter, seg_fit, seg_cal = segmenter_pairs(fit_cases, cal_cases, plan, rng, device,
                                                      params.get("segmenter", {}), simulated_sites)
        extra_fit, extra_cal = extra_fit + seg_fit, extra_cal + seg_cal
    cal_pairs = make_training_pairs(cal_cases, rng, calibration_pairs, extra_cal)
    true_cal = np.array([float(np.mean(p.true_dice(plan.labels))) for p in cal_pairs])
    # a model's (or a simulated site's) pairs form a group: how far QC's mean strays on a group it
    # was not calibrated on bounds a batch's mean Dice; corruptions are no model's, no group
    groups = [p.source if is_network_made(p.source) else None for p in cal_pairs]
    from segqc.calibration.shift import appearance

    # the reference images' appearance: what a batch is compared with to say how far it moved
    bundle = QCBundle(plan=plan, fingerprint=fp, info={"fit": {}},
                      appearance=np.stack([appearance(c.image, c.spacing) for c in cases]))
    raws, pools = {}, {}
    for name in methods:
        method = make_method(name, **params.get(name, {}))
        console.print(f"[bold]fitting {name}[/bold] {method!r}")
        ctx = FitContext(rng=np.random.default_rng(rng.integers(1 << 31)), device=device, pairs=extra_fit,
                         segmenter=segmenter, models=list(models or ()),
                         progress=lambda msg: console.print(f"  {msg}", highlight=False))
        t0 = time.time()
        method.fit(fit_cases, plan, ctx)
        t_fit = time.time() - t0
        raws[name], described = described_scores(method, cal_pairs, f"calibrating {name} ({len(cal_pairs)} pairs)")
        bundle.methods[name] = method
        # every pair, or the masks models made (`segqc.calibration.pool`), or the one the pairs say suits
        sources, pool, choice = [p.source for p in cal_pairs], calibrate_on, None
        if calibrate_on == "auto":
            pool, choice = choose_pool(sources, raws[name], true_cal, *_descriptors(described))
            console.print(f"  {name}: calibrated on {pool} ({choice['reason']})")
        pools[name], pooled = calibration_pool(sources, raws[name], pool)
        keep = pools[name]
        _calibrate(bundle, name, raws[name][keep], true_cal[keep], _kept(groups, keep), tau, coverage, t_fit,
                   console, _kept(described, keep), pooled)
        if choice is not None:
            bundle.info["fit"][name]["pool_choice"] = choice | {"chosen": pool}
    if fuse and len(methods) >= 2:
        keep = np.logical_or.reduce([pools[m] for m in methods])
        _fuse(bundle, methods, {m: r[keep] for m, r in raws.items()}, true_cal[keep], _kept(groups, keep), tau,
              coverage, console)
    # what every calibrator was fitted on, pair by pair: to study calibration later without refitting
    bundle.info["calibration_pairs"] = {"reference_id": [p.reference_id for p in cal_pairs],
                                        "source": [p.source for p in cal_pairs], "true_dice": true_cal.tolist(),
                                        "raw": {name: raws[name].tolist() for name in methods},
                                        "calibrated": {name: pools[name].tolist() for name in methods}}
    # default: the answer whose raw score best follows true Dice on unseen reference cases
    # (Pearson r is scale-free, so methods with different raw scales compare fairly)
    bundle.default_method = max(bundle.info["fit"], key=lambda m: np.nan_to_num(
        bundle.info["fit"][m]["heldout_raw_pearson"], nan=-1.0))
    if segmenter is not None:
        bundle.info["segmenter"] = segmenter.report_
    bundle.info.update({"profile": profile, "device": device,
                        "simulated_sites": simulated_sites if model_failures else 0, "calibrate_on": calibrate_on,
                        "n_reference": len(cases), "n_failed": len(failed),
                        "tau": tau, "coverage": coverage, "seed": seed, "fit_ids": [c.case_id for c in fit_cases],
                        "calibration_ids": [c.case_id for c in cal_cases],
                        "fit_seconds": round(time.time() - started, 1)})
    save_bundle(bundle, out)
    write_run_record(out, "fit", {"reference": where(reference) or str(reference), "methods": methods, "tau": tau,
                                  "seed": seed, "device": device, "profile": profile}, started)
    console.print(f"segqc fit: bundle written to {out} (default method: {bundle.default_method})")
    return bundle


def raw_scores(method, pairs: Sequence[TrainingPair], description: str, chunk: int = 256) -> np.ndarray:
    """``method``'s raw mean Dice of each pair's candidate (`described_scores` without the descriptors)."""
    return described_scores(method, pairs, description, chunk)[0]


def described_scores(method, pairs: Sequence[TrainingPair], description: str,
                     chunk: int = 256) -> tuple[np.ndarray, list[dict[str, float]]]:
    """``method``'s raw mean Dice of each pair's candidate and the numbers it gives about it
    (`RawScore.features`, the batch correction's descriptors), scored a chunk at a time with `score_batch`
    (network methods stack their forward passes, `features` measures on several processes);
    a pair that cannot be scored stops the fit, as a calibration without it would be silently another.
    The candidates of one image are scored next to each other, so that work on the image alone (segqc's
    segmenter pass) is done once, or twice where a chunk ends among them, whatever the size of the
    method's image cache; the scores come back in the pairs' order."""
    order = sorted(range(len(pairs)), key=lambda i: pairs[i].image_id)  # stable: ties keep their order
    out = np.empty(len(pairs))
    described: list[dict[str, float]] = [{} for _ in pairs]
    parts = [order[i:i + chunk] for i in range(0, len(order), chunk)]
    for part in ui.track(parts, description):
        for i, raw in zip(part, method.score_batch([pairs[i].case for i in part])):
            if isinstance(raw, Exception):
                p = pairs[i]
                raise ValueError(f"{method.name} could not score the calibration candidate of {p.reference_id} "
                                 f"({p.source}): {raw}") from raw
            out[i], described[i] = raw.mean_dice, raw.features
    return out, described


def reference_cases(reference, *, layout: str = "auto", ids: Sequence[str] | None = None, max_slice_size: int = 128):
    """The readable reference cases (only ``ids`` when given), their failures, fingerprint and plan,
    as `fit` uses them; refuses what cannot be fitted."""
    from segqc.plan.fingerprint import compute_fingerprint
    from segqc.plan.plan import plan_from_fingerprint

    refs = list_cases(reference, layout=layout)
    if ids is not None:
        keep = set(ids)
        refs = [r for r in refs if r.case_id in keep]
    cases, failed = load_cases(refs, description="reference cases")
    empty = [c.case_id for c in cases if not np.any(c.mask)]
    if empty:
        ui.console().print(f"segqc: {len(empty)} reference case(s) with an empty expert mask kept: {empty[:5]}")
    if len(cases) < 4:
        raise ValueError(f"fit needs at least 4 readable reference cases, got {len(cases)}")
    fp = compute_fingerprint(cases)
    refuse_rare_labels(cases, fp)
    return cases, failed, fp, plan_from_fingerprint(fp, max_slice_size=max_slice_size)


def refuse_rare_labels(cases: list[Case], fp: dict) -> None:
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
        (at,) = [cid for cid, labs in present.items() if k in labs]
        others = sorted(set().union(*(labs for cid, labs in present.items() if cid != at)))
        problems.append(f"label {k} is only in reference case {at} (the other cases have labels {others})")
    raise ValueError("; ".join(problems) + ": a label needs at least 2 reference cases to be learned and "
                     "calibrated; fix that mask or remap its labels")


def _kept(items: list, keep: np.ndarray) -> list:
    return [x for x, k in zip(items, keep) if k]


def _descriptors(described: list[dict[str, float]] | None) -> tuple[np.ndarray | None, list[str]]:
    """The pairs' descriptors as a matrix (one row per pair, NaN where a pair lacks one) and its column names;
    None when some pair was not described (the method gives no numbers about its candidates)."""
    names = sorted({k for d in described or () for k in d})
    if not (names and all(described)):
        return None, names
    return np.array([[d.get(k, np.nan) for k in names] for d in described], float), names


def _calibrate(bundle, name: str, raw: np.ndarray, true_cal: np.ndarray, groups: list, tau: float,
               coverage: float, t_fit: float, console, described: list[dict[str, float]] | None = None,
               pooled: str = "all pairs") -> None:
    """Fit ``name``'s calibrator on its raw scores of the held-out pairs (those ``pooled`` says, in words);
    record how well it did there. When the method describes every pair (``described``), the calibrator can
    correct a batch's mean for where its candidates lie among the pairs (`segqc.calibration.batch_correction`)."""
    from segqc.calibration.calibrator import DiceCalibrator
    from segqc.evaluation.scores import mae, pearson

    descriptors, names = _descriptors(described)
    cal = DiceCalibrator(tau=tau, coverage=coverage).fit(raw, true_cal, groups, descriptors, names)
    bundle.calibrators[name] = cal
    lo, hi = cal.interval(raw)
    bundle.info["fit"][name] = info = {
        "fit_seconds": round(t_fit, 1), "calibration_pairs": len(raw), "calibrated_on": pooled,
        # in-sample for the calibrator (it was fitted on these): a sanity check, not a benchmark
        "heldout_raw_pearson": pearson(true_cal, raw), "heldout_raw_mae": mae(true_cal, raw),
        "heldout_calibrated_mae": mae(true_cal, cal.predict_dice(raw)),
        # the interval's half width per bin of calibrated Dice: below the first edge, between edges, above the last
        "interval_radius": cal.radius_, "interval_bin_edges": cal.bin_edges_.tolist(),
        "interval_half_widths": cal.half_widths_.tolist(),
        "systematic_error": cal.systematic_, "systematic_groups": cal.n_groups_,
        "interval_coverage_in_sample": float(np.mean((true_cal >= lo) & (true_cal <= hi))),
    }
    console.print(f"  {name}: fitted in {t_fit:.0f} s; calibrated on {len(raw)} pairs ({pooled}); on them "
                  f"r={info['heldout_raw_pearson']:.3f}, raw MAE={info['heldout_raw_mae']:.3f}")


def _fuse(bundle, methods: list[str], raws: dict, true_cal: np.ndarray, groups: list, tau: float, coverage: float,
          console) -> None:
    from segqc.calibration.fusion import FUSION, Fusion

    bundle.fusion = Fusion(list(methods), tau=tau, coverage=coverage).fit(raws, true_cal, groups)
    bundle.calibrators[FUSION] = bundle.fusion.calibrator_
    bundle.info["fit"][FUSION] = {"members": list(methods), "weights": bundle.fusion.weights_.tolist(),
                                  "heldout_raw_pearson": bundle.fusion.heldout_pearson_}
    console.print(f"  fusion of {', '.join(methods)}: weights "
                  f"{', '.join(f'{w:.2f}' for w in bundle.fusion.weights_)}; on held-out calibration pairs "
                  f"r={bundle.fusion.heldout_pearson_:.3f} (out-of-fold)")
