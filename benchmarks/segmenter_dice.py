"""segqc's reference segmenter on its own: its Dice on held-out reference cases, per seed.

The segmenter's probability map is the pseudo ground truth `features` scores candidates
against, so its quality bounds QC accuracy. This script trains it exactly as `segqc fit`
does (the same reference ids, the same fit / calibration split for a seed, the same
snapshots) without fitting any QC method, and reports the mean Dice of the fold networks'
average on the held-out calibration cases, with the epochs each network got. Run it for
several seeds to see how far the figure moves between runs before reading a difference
between settings.

    python benchmarks/segmenter_dice.py kvasir --seeds 0 1 --threads 1
    python benchmarks/segmenter_dice.py kvasir --profile gpu --device cuda
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from common import DATASETS, data_dir, parse_fit_args, read_split

from segqc.pipeline.fit import reference_cases, split_for_calibration
from segqc.pipeline.training_pairs import segmenter_pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", choices=DATASETS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--profile", default="cpu", help="cpu or gpu (segqc.pipeline.profiles); --set wins")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--calibration-fraction", type=float, default=0.25)
    args, params = parse_fit_args(ap)
    if args.profile != "cpu":
        from segqc.pipeline.profiles import with_profile

        params = with_profile(args.profile, params)

    cases, _, _, plan = reference_cases(data_dir(args.dataset), ids=read_split(args.dataset)["reference"])
    results = []
    for seed in args.seeds:
        rng = np.random.default_rng(seed)  # consumed as `segqc fit --seed` consumes it
        fit_idx, cal_idx = split_for_calibration(len(cases), args.calibration_fraction, rng)
        t0 = time.time()
        seg, _, _ = segmenter_pairs([cases[i] for i in fit_idx], [cases[i] for i in cal_idx], plan, rng,
                                    args.device, params.get("segmenter", {}))
        report = getattr(seg, "report_", {})
        results.append({"seed": seed, "heldout_dice": round(report.get("heldout_dice_mean", float("nan")), 4),
                        "heldout_cases": report.get("heldout_cases"), "seconds": round(time.time() - t0, 1),
                        "epochs": [h["epochs"] for h in report.get("training", [])]})
        print(json.dumps(results[-1]), flush=True)
    dice = [r["heldout_dice"] for r in results]
    print(json.dumps({"dataset": args.dataset, "profile": args.profile, "params": params.get("segmenter", {}),
                      "mean_heldout_dice": round(float(np.mean(dice)), 4), "per_seed": dice}))


if __name__ == "__main__":
    main()
