"""Per-case intervals on a model or site the calibration never saw, judged on reference ids only.

A bundle stores the held-out pairs its calibrators were fitted on, with their groups (each
snapshot of each fold network of segqc's segmenter, each simulated site, the user's model;
corruptions of the expert mask are no group). Each group in turn is left out, the calibrator
is fitted on the rest as `segqc fit` fits it, and the left-out group's cases are judged:
how often does the interval hold their true Dice, with the conformal radius alone (the
interval before) and with the radius plus the systematic error bound (the interval now)?
No benchmark row is used, so this is evidence a choice may rest on.

    python benchmarks/group_coverage.py runs/X/kvasir/bundle [more bundles] [--method features] [--groups]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import calibration_pairs

from segqc.calibration.calibrator import MIN_GROUP, DiceCalibrator


def left_out_coverage(raw: np.ndarray, true: np.ndarray, groups: list) -> dict:
    """Coverage of each left-out group's cases: by the radius alone, and by radius + systematic bound."""
    g = np.asarray([x if x is not None else "" for x in groups], dtype=object)
    ok = np.isfinite(raw) & np.isfinite(true)
    out = {"group": [], "n": [], "error": [], "radius": [], "radius_plus_bound": [], "half_width": []}
    for name in sorted(set(g[ok].tolist()) - {""}):
        held = ok & (g == name)
        if held.sum() < MIN_GROUP:
            continue
        rest = ok & ~held
        cal = DiceCalibrator().fit(raw[rest], true[rest], list(g[rest]))
        pred = cal.predict_dice(raw[held])
        err = np.abs(pred - true[held])
        out["group"].append(str(name))
        out["error"].append(float(np.mean(pred - true[held])))
        out["n"].append(int(held.sum()))
        out["radius"].append(float(np.mean(err <= cal.radius_)))
        out["radius_plus_bound"].append(float(np.mean(err <= cal.half_width_)))
        out["half_width"].append((cal.radius_, cal.half_width_))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundles", type=Path, nargs="+")
    ap.add_argument("--method", default="features")
    ap.add_argument("--groups", action="store_true", help="also each left-out group's mean error and coverage")
    args = ap.parse_args()
    print("| bundle | groups | cases | coverage, radius alone: pooled / worst group | radius + bound: pooled / "
          "worst group | half width: radius / radius + bound (median) |\n|---|---|---|---|---|---|")
    for bundle in args.bundles:
        c = left_out_coverage(*calibration_pairs(bundle, args.method))
        n = np.asarray(c["n"])
        width = np.median(np.asarray(c["half_width"]), axis=0)
        print(f"| {bundle} | {len(n)} | {n.sum()} | {np.average(c['radius'], weights=n):.3f} / "
              f"{min(c['radius']):.2f} | {np.average(c['radius_plus_bound'], weights=n):.3f} / "
              f"{min(c['radius_plus_bound']):.2f} | {width[0]:.3f} / {width[1]:.3f} |")
        if args.groups:
            for g, n_g, e, r, rb in zip(c["group"], n, c["error"], c["radius"], c["radius_plus_bound"]):
                print(f"|   {g} | | {n_g} | mean error {e:+.3f}: coverage {r:.2f} | {rb:.2f} | |")


if __name__ == "__main__":
    main()
