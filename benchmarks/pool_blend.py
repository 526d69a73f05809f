"""Would a blend of the two calibration pools be steadier than choosing one? Reference split only.

For each bundle (calibrated on every pair), each group of network-made calibration pairs is left
out in turn and judged as a batch with either pool (`segqc.calibration.pool.left_out_batch_errors`,
the comparison `segqc fit --calibrate-on auto` makes). The blend's estimate is (1 − λ)·all + λ·networks,
λ fitted by least squares on the other groups' errors (stacking), and on all groups (printed). Also
each pool's per-case mean |error| on the left-out groups (the isotonic map alone). No benchmark row
is used. README: "A volumetric outsider, and a judge that gets its epochs".

    python benchmarks/pool_blend.py runs/osnap/kvasir/bundle runs/h_now/hippocampus/bundle ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import calibration_pairs

from segqc.calibration.calibrator import MIN_GROUP, DiceCalibrator
from segqc.calibration.pool import SYNTHETIC, calibration_pool, left_out_batch_errors
from segqc.pipeline.bundle import load_bundle


def _summary(e: np.ndarray) -> str:
    return f"{np.abs(e).mean():.4f} / {int(np.sum(np.abs(e) <= 0.03))}"


def _case_mae(raw, true, groups, keep) -> float:
    """Per-case mean |calibrated − true| over the left-out groups, the map fitted on the rest ∩ ``keep``."""
    g = np.array([x or "" for x in groups], object)
    errors = []
    for name in sorted(set(g) - {""}):
        held = g == name
        if held.sum() < MIN_GROUP:
            continue
        cal = DiceCalibrator().fit(raw[~held & keep], true[~held & keep])
        errors.append(np.abs(cal.predict_dice(raw[held]) - true[held]))
    return float(np.concatenate(errors).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundles", type=Path, nargs="+")
    ap.add_argument("--method", default="features")
    args = ap.parse_args()
    print("| bundle | groups | batch mean abs error / within 0.03: all; networks; blend | λ | "
          "per-case MAE all / networks |\n|---|---|---|---|---|")
    for bundle in args.bundles:
        raw, true, groups = calibration_pairs(bundle, args.method)
        correction = load_bundle(bundle).calibrators[args.method].correction_
        ok = np.isfinite(raw) & np.isfinite(true)
        raw, true, groups = raw[ok], true[ok], [x for x, k in zip(groups, ok) if k]
        if correction is None or len(correction.descriptors_) != len(raw):
            print(f"| {bundle} | not calibrated on every pair with a batch correction: skipped |||||")
            continue
        descriptors = correction.descriptors_.astype(float)
        keep, _ = calibration_pool([SYNTHETIC if x is None else x for x in groups], raw, "networks")
        every = left_out_batch_errors(raw, true, groups, np.ones_like(keep), descriptors, correction.names_)
        networks = left_out_batch_errors(raw, true, groups, keep, descriptors, correction.names_)
        common = sorted(set(every) & set(networks))
        a, n = np.array([every[k] for k in common]), np.array([networks[k] for k in common])

        def stacked(rows: np.ndarray) -> float:
            d = a[rows] - n[rows]
            return float(np.clip(np.sum(a[rows] * d) / np.sum(d ** 2), 0, 1)) if np.any(d) else 0.0

        blend = np.array([(1 - (lam := stacked(np.arange(len(a)) != i))) * a[i] + lam * n[i] for i in range(len(a))])
        print(f"| {bundle} | {len(common)} | {_summary(a)}; {_summary(n)}; {_summary(blend)} | "
              f"{stacked(np.ones(len(a), bool)):.2f} | {_case_mae(raw, true, groups, np.ones_like(keep)):.4f} / "
              f"{_case_mae(raw, true, groups, keep):.4f} |")


if __name__ == "__main__":
    main()
