"""Fit segqc on a benchmark's `reference` ids, then judge every row of its cases.csv.

Usage (from the repository root, with ../shared beside it):

    .venv/bin/python benchmarks/run_benchmark.py kvasir --methods features cnn autoencoder
    .venv/bin/python benchmarks/run_benchmark.py hippocampus --methods features cnn autoencoder
    # a quick look at one method: fit on 100 reference ids, judge 200 rows
    .venv/bin/python benchmarks/run_benchmark.py kvasir --methods cnn --n-reference 100 --limit 200 \
        --set cnn.epochs=5 --out runs/quick

Writes runs/bench/<dataset>/{bundle,bench}/ and prints the table of `segqc bench`,
plus fit time and predict time per case for each method. Only `reference` ids are
used to fit and calibrate; `test` ids (the rows of cases.csv) are never seen before
judging.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import DATASETS, SHARED, cases_csv, data_dir, intervals_holding_truth, parse_fit_args, read_split

from segqc import api
from segqc.calibration.pool import CALIBRATE_ON
from segqc.data import read_manifest
from segqc.evaluation.tables import print_bench
from segqc.pipeline.bundle import load_bundle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", choices=DATASETS)
    ap.add_argument("--methods", nargs="+", default=["features"])
    ap.add_argument("--out", type=Path, default=Path("runs/bench"))
    ap.add_argument("--limit", type=int, default=None, help="judge a random subset of rows (quick look)")
    ap.add_argument("--n-reference", type=int, default=None,
                    help="fit on a seeded random subset of this many reference ids (quick look; default: all)")
    ap.add_argument("--refit", action="store_true", help="fit again even if the bundle exists")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calibrate-on", choices=list(CALIBRATE_ON), default="auto",
                    help="held-out pairs the calibrators are fitted on (`segqc fit --calibrate-on`)")
    args, params = parse_fit_args(ap)

    cases = cases_csv(args.dataset)
    split = read_split(args.dataset)
    reference_ids = split["reference"]
    if args.n_reference is not None and args.n_reference < len(reference_ids):
        pick = np.random.default_rng(args.seed).choice(len(reference_ids), args.n_reference, replace=False)
        reference_ids = [reference_ids[i] for i in sorted(pick)]
    out = args.out / args.dataset
    bundle_dir = out / "bundle"
    timings = {}
    if args.refit or not (bundle_dir / "bundle.json").exists():
        t0 = time.time()
        api.fit(reference=data_dir(args.dataset), out=bundle_dir, methods=args.methods, ids=reference_ids,
                device=args.device, seed=args.seed, method_params=params, calibrate_on=args.calibrate_on)
        timings["fit_total_s"] = round(time.time() - t0, 1)
    bundle = load_bundle(bundle_dir)
    timings["fit_per_method_s"] = {m: v["fit_seconds"] for m, v in bundle.info["fit"].items() if "fit_seconds" in v}
    # a guard against leakage: no benchmark row may come from a case the bundle was fitted on
    seen = set(bundle.info["fit_ids"]) | set(bundle.info["calibration_ids"])
    rows = read_manifest(cases, root=SHARED)
    leaked = {r.extra["source_id"] for r in rows} & seen
    if leaked:
        raise SystemExit(f"benchmark rows overlap the fitting cases: {sorted(leaked)[:5]}")
    t0 = time.time()
    result = api.bench(bundle=bundle_dir, cases=cases, root=SHARED, out=out / "bench",
                       limit=args.limit, seed=args.seed)  # every method of the bundle, and their fusion
    # per-method predict time on a few cases (each method alone)
    sample = [r.load() for r in read_manifest(cases, root=SHARED, mask_col="prediction")[:20]]
    for m in args.methods:
        t1 = time.time()
        for c in sample:
            bundle.methods[m].score(c)
        timings.setdefault("predict_s_per_case", {})[m] = round((time.time() - t1) / len(sample), 3)
    timings["bench_total_s"] = round(time.time() - t0, 1)
    result["timings"] = timings
    (out / "bench" / "bench.json").write_text(json.dumps(result, indent=1))
    print_bench(result)
    print(json.dumps(timings, indent=1))
    for m, res in result["methods"].items():
        level = res["dataset_level"]
        print(m, "dataset level:", {k: (round(v["mean_dice"], 3), round(v["true_mean_dice"], 3))
                                    for k, v in level.items()})
        held = intervals_holding_truth({k: v for k, v in level.items() if k != "all"})
        print(f"{m}: 95 % mean-Dice intervals holding the truth for {held} of {len(level) - 1} groups "
              f"(systematic error bound {level['all'].get('systematic_error')})")


if __name__ == "__main__":
    main()
