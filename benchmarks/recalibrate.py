"""Refit a bundle's calibrators with the current code, from the calibration pairs the bundle keeps.

A change to the calibration alone (the isotonic map, the intervals, the systematic bound, the
batch correction) needs no new networks: `segqc fit` stores every calibration pair's raw score,
true Dice, source and, for a method that describes its candidates, descriptors. This script fits
each method's calibrator again on the same pairs (the same pool, the same groups, tau and
coverage) and writes a copy of the bundle, to bench against the original with
`run_benchmark.py --out` (which reuses an existing bundle). Pairs are read from the bundle, never
from a benchmark. A bundle with a fusion keeps its fusion as fitted (said so).

    python benchmarks/recalibrate.py runs/X/kvasir/bundle runs/Y/kvasir/bundle
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import kept_pairs

from segqc.calibration.calibrator import DiceCalibrator
from segqc.pipeline.bundle import load_bundle, save_bundle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("out", type=Path)
    args = ap.parse_args()
    if args.out.resolve() == args.bundle.resolve():
        raise SystemExit("write the recalibrated bundle to another folder: the original is the comparison")
    bundle = load_bundle(args.bundle)
    if "calibration_pairs" not in bundle.info:
        raise SystemExit(f"{args.bundle}: keeps no calibration pairs (fitted before they were stored)")
    for name, old in bundle.calibrators.items():
        kept = kept_pairs(args.bundle, name)  # in the order of the correction's descriptors
        correction = old.correction_
        described = None if correction is None else correction.descriptors_.astype(float)
        if described is not None and len(described) != len(kept["raw"]):
            raise SystemExit(f"{args.bundle}: {name}'s descriptors ({len(described)}) are not its calibration "
                             f"pairs ({len(kept['raw'])})")
        new = DiceCalibrator(tau=old.tau, coverage=old.coverage).fit(
            kept["raw"], kept["true"], list(kept["group"]), described,
            None if correction is None else correction.names_)
        if correction is not None:  # keep the correction's own settings
            for key in ("strength", "max_weight", "min_batch"):
                setattr(new.correction_, key, getattr(correction, key))
        bundle.calibrators[name] = new
        fit_info = bundle.info.get("fit", {}).get(name)
        if isinstance(fit_info, dict):
            fit_info.update(systematic_error=new.systematic_, systematic_groups=new.n_groups_)
        print(f"{name}: {new.n_} pairs, {new.n_groups_} groups; systematic bound {old.systematic_:.3f} → "
              f"{new.systematic_:.3f}; half widths {np.round(old.half_widths_, 3).tolist()} → "
              f"{np.round(new.half_widths_, 3).tolist()}")
    if bundle.fusion is not None:
        print("the fusion is kept as fitted (its calibrator is not refitted here)")
    save_bundle(bundle, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
