"""Benchmark atlas-based RCA: fit on a benchmark's `reference` ids, judge cases.csv rows, time it.

Usage (from the repository root, with ../shared beside it):

    .venv/bin/python benchmarks/rca_bench.py kvasir --limit 200 --out runs/rca
    .venv/bin/python benchmarks/rca_bench.py hippocampus --limit 60 --out runs/rca --set rca.k=10

Same protocol as `run_benchmark.py --methods rca` (only `reference` ids fit and
calibrate; a guard refuses any overlap with the judged rows), with three differences
that keep one run within ~25 minutes on 2 shared cores: the reference segmenter whose
predictions serve as realistic bad masks for calibration is trained with a smaller
budget (10 epochs, 3 minutes; ``--set segmenter.epochs=15 --set segmenter.max_minutes=5``
changes it); RCA parameters can be set (``--set rca.k=5``); and the timing section
measures, on ``--time-cases`` distinct test images with a freshly loaded bundle (empty
registration cache) and 1 torch thread, the seconds per new image and per further
candidate of an already registered image, with the machine's load average
(`os.getloadavg`) next to them.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from common import (
    DATASETS,
    SHARED,
    add_set_option,
    add_threads_option,
    cases_csv,
    data_dir,
    method_params,
    read_split,
    set_threads,
)

from segqc import api
from segqc.data import read_manifest
from segqc.evaluation.tables import print_bench
from segqc.pipeline.bundle import load_bundle

#: the reference segmenter's budget unless ``--set segmenter.PARAM=VALUE`` says otherwise
SEGMENTER = {"epochs": 10, "max_minutes": 3.0}
#: what ``--set`` may name: the method and the reference segmenter whose masks calibrate it
SETTABLE = ("rca", "segmenter")


def time_cases(bundle_dir: Path, rows, n: int) -> dict:
    """Seconds per new image (registration included) and per re-scored candidate, 1 torch thread."""
    import torch

    torch.set_num_threads(1)
    method = load_bundle(bundle_dir, methods=["rca"]).methods["rca"]
    seen, picked = set(), []
    for r in rows:  # distinct images: the first candidate of each pays the registration
        if r.extra["source_id"] not in seen:
            seen.add(r.extra["source_id"])
            picked.append(r)
        if len(picked) == n:
            break
    from segqc.metrics import dice

    first, again, load, pgt = [], [], [], []
    for r in picked:
        case = r.load()
        load.append(os.getloadavg()[0])
        t0 = time.perf_counter()
        raw = method.score(case)
        first.append(time.perf_counter() - t0)
        if case.truth is not None:  # how good the majority vote is as a pseudo ground truth
            pgt.append(dice(raw.maps["pgt"], case.truth, method.labels_))
        t0 = time.perf_counter()
        method.score(case.with_mask(np.zeros_like(case.mask)))
        again.append(time.perf_counter() - t0)
    return {"n_images": len(picked), "new_image_s_mean": float(np.mean(first)),
            "new_image_s_median": float(np.median(first)), "new_image_s_max": float(np.max(first)),
            "cached_candidate_s_mean": float(np.mean(again)), "load_avg_1min_mean": float(np.mean(load)),
            "pgt_dice_vs_truth_mean": float(np.mean(pgt)) if pgt else None,
            "k": method.k, "n_jobs": method.n_jobs, "itk_threads": method.itk_threads, "cpu_count": os.cpu_count()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", choices=DATASETS)
    ap.add_argument("--out", type=Path, default=Path("runs/rca"))
    ap.add_argument("--limit", type=int, default=None, help="judge a random subset of rows (seeded)")
    ap.add_argument("--no-model-failures", action="store_true", help="calibrate on synthetic bad masks only")
    ap.add_argument("--time-cases", type=int, default=10)
    ap.add_argument("--refit", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    add_set_option(ap)
    add_threads_option(ap, default=1, help="torch CPU threads (default 1: a shared 2-core machine, no "
                                           "oversubscription; the timing section always uses 1)")
    args = ap.parse_args()
    given = method_params(args.params)
    if unknown := sorted(set(given) - set(SETTABLE)):
        ap.error(f"--set takes {' or '.join(m + '.PARAM=VALUE' for m in SETTABLE)}, not {unknown}")

    set_threads(args.threads)
    cases = cases_csv(args.dataset)
    split = read_split(args.dataset)
    out = args.out / args.dataset
    bundle_dir = out / "bundle"
    timings: dict = {"load_avg_start": os.getloadavg()}
    segmenter = {**SEGMENTER, **given.get("segmenter", {})}
    segmenter.setdefault("snapshot_epochs", tuple(e for e in (1, 2, 4, 7, 10) if e <= segmenter["epochs"]))
    params = {"rca": given.get("rca", {}), "segmenter": segmenter}
    if args.refit or not (bundle_dir / "bundle.json").exists():
        t0 = time.time()
        api.fit(reference=data_dir(args.dataset), out=bundle_dir, methods=["rca"], ids=split["reference"],
                seed=args.seed, method_params=params, model_failures=not args.no_model_failures)
        timings["fit_total_s"] = round(time.time() - t0, 1)
    bundle = load_bundle(bundle_dir)
    timings["fit_info"] = bundle.info["fit"]["rca"]
    seen = set(bundle.info["fit_ids"]) | set(bundle.info["calibration_ids"])
    rows = read_manifest(cases, root=SHARED, mask_col="prediction", truth_col="ground_truth")
    leaked = {r.extra["source_id"] for r in rows} & seen
    if leaked:
        raise SystemExit(f"benchmark rows overlap the fitting cases: {sorted(leaked)[:5]}")
    t0 = time.time()
    result = api.bench(bundle=bundle_dir, cases=cases, root=SHARED, out=out / "bench",
                       methods=["rca"], limit=args.limit, seed=args.seed)
    timings["bench_total_s"] = round(time.time() - t0, 1)
    timings["bench_s_per_row"] = round(timings["bench_total_s"] / max(result["n"], 1), 2)
    timings["load_avg_after_bench"] = os.getloadavg()
    if args.time_cases:
        order = np.random.default_rng(args.seed + 1).permutation(len(rows))
        timings["isolated"] = time_cases(bundle_dir, [rows[i] for i in order], args.time_cases)
    result["timings"] = timings
    result["rca_params"] = bundle.methods["rca"].get_params()
    (out / "bench" / "bench.json").write_text(json.dumps(result, indent=1, default=str))
    print_bench(result)
    print(json.dumps(timings, indent=1, default=str))


if __name__ == "__main__":
    main()
