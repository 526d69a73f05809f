"""Streaming a bundle over many cases: ``predict`` (new cases) and ``bench`` (cases with true Dice).

Cases stream in through an engine (`segqc.engines`), the bundle answers them
(`QCBundle.answer`), rows and maps stream out (`segqc.pipeline.outputs`). Nothing here
knows what a method is.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np

from segqc.data.case import Case
from segqc.engines.batch import BatchSummary, read_rows, run_batch
from segqc.pipeline.outputs import answer_row, columns, described, descriptors, number, write_dataset
from segqc.pipeline.records import list_cases, where, write_run_record

__all__ = ["bench", "bundle_scorer", "default_batch_size", "predict", "score_case", "score_cases"]


def score_cases(bundle, cases: Sequence[Case], methods: Sequence[str], *,
                maps_dir: Path | None = None) -> list[dict | Exception]:
    """Each case's row of answers by ``methods`` (maps in ``maps_dir``); a failed case's exception in its place."""
    rows: list[dict | Exception] = []
    for answer in bundle.answer(cases, methods):
        if isinstance(answer, Exception):
            rows.append(answer)
            continue
        try:
            rows.append(answer_row(answer, bundle.plan.labels, maps_dir))
        except Exception as e:  # noqa: BLE001 — e.g. a map that cannot be written: this case's error
            rows.append(e)
    return rows


def score_case(bundle, case: Case, methods: Sequence[str], *, maps_dir: Path | None = None) -> dict:
    """`score_cases` of one case; its error raised."""
    row = score_cases(bundle, [case], methods, maps_dir=maps_dir)[0]
    if isinstance(row, Exception):
        raise row
    return row


def bundle_scorer(bundle, methods: Sequence[str], maps_dir: Path | None, models: Sequence = ()):
    """A scorer of case lists with its own copy of the bundle (built once per process or Ray actor)."""
    from segqc.pipeline.bundle import load_bundle

    b = load_bundle(bundle)
    b.use_models(models)
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


def _methods(bundle, methods: Sequence[str] | None, where_: str) -> list[str]:
    """The asked answers (default: the bundle's default first, then the others) and the fusion's members."""
    asked = list(methods or [bundle.default_method] + [m for m in bundle.answers if m != bundle.default_method])
    bundle.check_methods(asked, where_)
    return bundle.needed(asked)


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
    from segqc.pipeline.bundle import bundle_hash, load_bundle
    from segqc.pipeline.parts import select_part

    started = time.time()
    out = Path(out)
    b = load_bundle(bundle)
    b.use_models(models)  # the segmentation model(s), for methods that need one
    methods = _methods(b, methods, f"bundle {bundle}")
    refs = list_cases(data, layout=layout, masks=masks)
    with_truth = any(r.truth is not None for r in refs)  # of all parts: every part has the same columns
    refs = select_part(refs, num_parts, part_id)
    identity = {"command": "predict", "bundle": bundle_hash(bundle), "methods": methods, "maps": save_maps,
                "data": where(data), "masks": where(masks), "layout": layout,
                "models": [repr(m) for m in models or []], "num_parts": num_parts, "part_id": part_id}
    maps_dir = out.absolute() / "maps" if save_maps else None  # the same path from every worker
    if engine == "ray":  # each actor loads the bundle itself: only its path travels
        make_scorer = partial(bundle_scorer, str(bundle), methods, maps_dir, list(models or []))
    else:
        def make_scorer():  # the bundle loaded above, in this process
            return partial(score_cases, b, methods=methods, maps_dir=maps_dir)
    cols = columns(b.plan.labels, methods, with_truth, appearance=b.appearance is not None,
                   described=described(b.calibrators, methods))
    summary = run_batch(refs, None, out / "predictions.csv", columns=cols,
                        resume=resume, description="QC", quiet=quiet, identity=identity, make_scorer=make_scorer,
                        engine=_engine(engine, batch_size, workers, address, gpus_per_worker))
    dataset = write_dataset(out, b.tau, with_truth, b.appearance, b.calibrators, b.info.get("segmenter"))
    # absolute paths, so that `segqc report` finds the images from anywhere
    write_run_record(out, "predict", {"bundle": str(Path(bundle).resolve()), "data": where(data),
                                      "masks": where(masks), "layout": layout, "methods": methods,
                                      "engine": engine, "num_parts": num_parts, "part_id": part_id}, started,
                     {"bundle_hash": bundle_hash(bundle), "n_ok": summary.n_done, "n_failed": summary.n_failed,
                      "n_skipped": summary.n_skipped})
    return summary, dataset


def bench(*, bundle, cases, out, root=None, methods: Sequence[str] | None = None, tau: float | None = None,
          limit: int | None = None, seed: int = 0, resume: bool = True, quiet: bool = False,
          models: Sequence | None = None) -> dict:
    """Every method of a bundle side by side on a benchmark ``cases.csv`` with true Dice.

    The benchmark's ``prediction`` column is the candidate, ``ground_truth`` the truth
    (used only to check, never shown to a method); ``dice`` is the true quality.
    Writes ``bench.csv`` (row by row), ``bench.json`` and per-method plots.
    """
    from segqc.calibration.population import estimate_groups
    from segqc.data.layouts import guess_root, read_manifest
    from segqc.evaluation.scores import evaluate
    from segqc.pipeline.bundle import bundle_hash, load_bundle
    from segqc.pipeline.measure import evaluate_arrays

    started = time.time()
    out = Path(out)
    b = load_bundle(bundle)
    b.use_models(models)
    methods = b.needed(list(methods or b.answers))
    b.check_methods(methods, f"bundle {bundle}")
    tau = b.tau if tau is None else tau
    cases = Path(cases)
    root = Path(root) if root else guess_root(cases)
    refs = read_manifest(cases, root=root, mask_col="prediction", truth_col="ground_truth", group_col="checkpoint")
    if limit is not None and limit < len(refs):
        refs = [refs[i] for i in sorted(np.random.default_rng(seed).choice(len(refs), limit, replace=False))]
    extra_cols = ["model", "is_deployed", "source_id"]  # source_id: the image's id as in cases.csv
    identity = {"command": "bench", "bundle": bundle_hash(bundle), "methods": methods, "cases": where(cases),
                "root": where(root), "limit": limit, "seed": seed, "models": [repr(m) for m in models or []]}
    # the appearance the bundle computes for every case is kept, not thrown away (a shift analysis needs it)
    cols = columns(b.plan.labels, methods, True, appearance=b.appearance is not None,
                   described=described(b.calibrators, methods)) + extra_cols
    summary = run_batch(refs, lambda c: {**score_case(b, c, methods), **{k: c.meta.get(k, "") for k in extra_cols}},
                        out / "bench.csv", columns=cols, resume=resume, description="bench", quiet=quiet,
                        identity=identity)
    rows = [r for r in read_rows(out / "bench.csv") if r["status"] == "ok"]
    truth = {r.case_id: r.extra.get("dice") for r in refs}
    true = np.array([number(truth.get(r["case_id"]) or r["dice_true"]) for r in rows])
    groups = [r["group"] for r in rows]
    deployed = np.array([r.get("is_deployed") == "True" for r in rows])
    group_of = np.asarray(groups, dtype=object)
    result = {"cases": str(cases), "n": len(rows), "n_failed": summary.n_failed, "tau": tau, "methods": {}}
    for name in methods:
        pred = np.array([float(r[f"{name}_dice"]) for r in rows])
        pp = np.array([float(r[f"{name}_p_pass"]) for r in rows])
        res = evaluate_arrays(true, pred, pp, groups, tau, out / name, f"{name} on {cases.parent.name}")
        if deployed.any():
            res["deployed"] = evaluate(true[deployed], pred[deployed], p_pass=pp[deployed], tau=tau)["overall"]
        cal = b.calibrators[name]
        lo, hi = cal.interval(np.array([float(r[f"{name}_raw"]) for r in rows]))
        inside = (true >= lo) & (true <= hi)
        res["interval_coverage"] = float(np.mean(inside))
        res["interval_coverage_by_group"] = {g: float(np.mean(inside[group_of == g])) for g in sorted(set(groups))}
        res["interval_nominal"] = cal.coverage
        res["dataset_level"] = estimate_groups(pred, pp, groups, tau=tau, true_dice=true,
                                               systematic=getattr(cal, "systematic_", float("nan")),
                                               correction=getattr(cal, "correction_", None),
                                               descriptors=descriptors(rows, name))
        result["methods"][name] = res
    (out / "bench.json").write_text(json.dumps(result, indent=1))
    write_run_record(out, "bench", {"bundle": str(bundle), "cases": str(cases), "methods": methods, "tau": tau},
                     started, {"n": len(rows)})
    return result
