"""How good is each method's pseudo ground truth as a segmentation? (test images, expert masks)

For the rows of one checkpoint of a benchmark (default: the deployed model's), every
method of a fitted bundle that makes a pGT scores the candidate; the table gives mean
Dice(pGT, expert) beside Dice(candidate, expert) and the share of rows where the pGT is
the better mask. The bundle must have been fitted on `reference` ids only (as by
`run_benchmark.py`), so these test images are unseen.

    python benchmarks/pgt_quality.py kvasir runs/bench/kvasir/bundle --limit 100
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import DATASETS, add_threads_option, benchmark_rows, set_threads


def main() -> None:
    from segqc.metrics import dice
    from segqc.pipeline.bundle import load_bundle

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", choices=DATASETS)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--checkpoint", default=None, help="rows of this checkpoint (default: the deployed model)")
    ap.add_argument("--methods", nargs="+", default=None, help="default: every method of the bundle")
    ap.add_argument("--limit", type=int, default=None, help="a seeded random subset of those rows")
    ap.add_argument("--seed", type=int, default=0)
    add_threads_option(ap, default=1)
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = ap.parse_args()
    set_threads(args.threads)
    refs = benchmark_rows(args.dataset)
    pick = [i for i, r in enumerate(refs) if (r.extra["checkpoint"] == args.checkpoint if args.checkpoint
                                              else r.extra["is_deployed"] == "True")]
    if not pick:
        raise SystemExit(f"no row of checkpoint {args.checkpoint!r}")
    if args.limit and args.limit < len(pick):
        pick = sorted(np.random.default_rng(args.seed).choice(pick, args.limit, replace=False).tolist())
    bundle = load_bundle(args.bundle)
    methods = args.methods or [m for m in bundle.methods]
    labels = [int(k) for k in bundle.plan.labels]
    cand, pgt, secs = [], {m: [] for m in methods}, {m: 0.0 for m in methods}
    for n, i in enumerate(pick):
        case = refs[i].load()
        cand.append(dice(case.mask, case.truth, labels))
        for m in methods:
            t0 = time.time()
            maps = bundle.methods[m].score(case).maps
            secs[m] += time.time() - t0
            pgt[m].append(dice(maps["pgt"], case.truth, labels) if "pgt" in maps else np.nan)
        if (n + 1) % 20 == 0:
            print(f"  {n + 1}/{len(pick)} rows", flush=True)
    cand = np.array(cand)
    res = {"rows": len(pick), "checkpoint": args.checkpoint or "deployed", "candidate_dice": float(cand.mean()),
           "methods": {}}
    for m in methods:
        p = np.array(pgt[m])
        if np.isnan(p).all():
            continue
        res["methods"][m] = {"pgt_dice": float(np.nanmean(p)), "share_pgt_better": float(np.mean(p > cand)),
                             "seconds_per_row": secs[m] / len(pick)}
    print(f"{res['rows']} rows of {res['checkpoint']}; mean Dice(candidate, expert) {res['candidate_dice']:.3f}")
    print("| method | mean Dice(pGT, expert) | share of rows where the pGT is better |\n|---|---|---|")
    for m, v in res["methods"].items():
        print(f"| {m} | {v['pgt_dice']:.3f} | {v['share_pgt_better']:.2f} |")
    if args.out:
        args.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
