"""The batch correction judged on reference ids only: each group of calibration pairs in turn is the batch.

A bundle keeps its calibration pairs (raw score, true Dice, group) and, for a method that
describes its candidates, their descriptors (`segqc.calibration.batch_correction`). Each
group — a snapshot of a fold network of segqc's segmenter, a simulated site, a network of
another architecture — is left out in turn; the calibrator is fitted on the rest as `segqc
fit` fits it, and the left-out group is judged as a batch whose truth is hidden: its mean
calibrated Dice, then that mean corrected by the rest's pairs that look like it. How far is
each from the group's true mean? The same for the share of cases with Dice ≥ τ (mean P(pass)), and
what the same weighting of the pairs' pass residuals would make of it (segqc does not make it).
No benchmark row is used, so a choice may rest on this. For a bundle calibrated on all pairs it
also says which pool `segqc fit --calibrate-on auto` would have chosen on these pairs
(`segqc.calibration.pool.choose_pool`). With ``--calibrate-on networks`` a bundle calibrated on
all pairs is judged as if it had been fitted with `segqc fit --calibrate-on
networks` (`segqc.calibration.pool`): the same left-out groups, the calibrator and the correction
fitted on the rest's network-made pairs only — a comparison of the two pools on the same pairs.

    python benchmarks/batch_correction.py runs/X/kvasir/bundle [--method features] [--strength 0.01 0.1 1]
        [--groups] [--calibrate-on networks]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from common import calibrated_mask, kept_pairs

from segqc.calibration.batch_correction import BatchCorrection
from segqc.calibration.calibrator import MIN_GROUP, DiceCalibrator, cross_fitted_residuals
from segqc.calibration.pool import POOLS, SYNTHETIC, calibration_pool, choose_pool
from segqc.pipeline.bundle import load_bundle


def left_out_errors(raw, true, groups, descriptors, names, strengths) -> list[dict]:
    """Per left-out group: its size, true mean, and the estimate's error uncorrected and per strength."""
    g = np.asarray([x if x is not None else "" for x in groups], dtype=object)
    out = []
    for name in sorted(set(g.tolist()) - {""}):
        held = g == name
        if held.sum() < MIN_GROUP:
            continue
        cal = DiceCalibrator().fit(raw[~held], true[~held], descriptors=descriptors[~held], names=names)
        base = float(cal.predict_dice(raw[held]).mean())
        share = float(cal.predict_pass(raw[held]).mean())
        # the same weighting of the pairs' cross-fitted pass residuals: the share's correction, which segqc
        # does not make (README: it moved the share away from the truth)
        passed = (true[~held] >= cal.tau).astype(float)
        share_bc = BatchCorrection().fit(descriptors[~held], cross_fitted_residuals(raw[~held], passed), names)
        row = {"group": str(name), "n": int(held.sum()), "true": float(true[held].mean()), "uncorrected": base,
               "true share": float(np.mean(true[held] >= cal.tau)), "share uncorrected": share}
        for s in strengths:
            cal.correction_.strength = share_bc.strength = s
            c = cal.correction_.correct(descriptors[held])
            row[s] = base + c["correction"]
            row[f"share {s}"] = share + share_bc.correct(descriptors[held])["correction"]
            row[f"pairs {s}"] = c["effective_pairs"]
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--method", default="features")
    ap.add_argument("--strength", type=float, nargs="+", default=[0.01, 0.1, 1.0],
                    help="the domain classifier's inverse regularisation (the shipped default: 0.1)")
    ap.add_argument("--groups", action="store_true", help="also each left-out group's estimates")
    ap.add_argument("--calibrate-on", choices=list(POOLS), default="all",
                    help="networks: refit on the network-made pairs only, as `segqc fit --calibrate-on networks` "
                         "(for a bundle calibrated on all pairs)")
    args = ap.parse_args()
    correction = load_bundle(args.bundle).calibrators[args.method].correction_
    if correction is None:
        raise SystemExit(f"{args.bundle}: the calibrator of {args.method} has no batch correction (fitted before "
                         "it existed, or the method does not describe its candidates)")
    kept = kept_pairs(args.bundle, args.method)  # the pairs the calibrator kept, in their order
    raw, true, groups = kept["raw"], kept["true"], list(kept["group"])
    descriptors = correction.descriptors_.astype(float)
    assert len(descriptors) == len(raw), "the bundle's descriptors do not match its calibration pairs"
    sources = [SYNTHETIC if g is None else g for g in groups]
    stored = json.loads((args.bundle / "bundle.json").read_text())["info"]["calibration_pairs"]
    if calibrated_mask(stored, args.method).all():  # the bundle kept every pair: what auto would choose is known
        chosen, evidence = choose_pool(sources, raw, true, descriptors, correction.names_)
        print(f"`segqc fit --calibrate-on auto` would calibrate on {chosen}: {evidence['reason']}")
    if args.calibrate_on == "networks":
        keep, pooled = calibration_pool(sources, raw, "networks")
        raw, true, descriptors = raw[keep], true[keep], descriptors[keep]
        groups = [g for g, k in zip(groups, keep) if k]
        print(f"calibrated on {int(keep.sum())} pairs ({pooled})")
    rows = left_out_errors(raw, true, groups, descriptors, correction.names_, args.strength)
    columns = ["uncorrected"] + args.strength
    if args.groups:
        print("| group | n | true | " + " | ".join(map(str, columns)) + " |")
        print("|---" * (3 + len(columns)) + "|")
        for r in rows:
            print(f"| {r['group']} | {r['n']} | {r['true']:.3f} | "
                  + " | ".join(f"{r[c] - r['true']:+.3f}" for c in columns) + " |")
    print(f"{len(rows)} left-out groups of {args.bundle} ({args.method}): estimate − truth of the group's mean Dice")
    print("| estimate | mean | mean abs | max abs | within 0.03 | effective pairs (median) |")
    print("|---|---|---|---|---|---|")
    for c in columns:
        pairs = "–" if c == "uncorrected" else f"{np.median([r[f'pairs {c}'] for r in rows]):.0f}"
        print(_errors_row(c, [r[c] - r["true"] for r in rows]) + f" {pairs} |")
    print(f"\nthe same groups' estimated share of cases with Dice ≥ {DiceCalibrator().tau:g} (mean P(pass)), and "
          "what the same correction would make of it (segqc does not correct the share)")
    print("| estimate | mean | mean abs | max abs | within 0.03 |\n|---|---|---|---|---|")
    for c in columns:
        print(_errors_row(c, [r["share uncorrected" if c == "uncorrected" else f"share {c}"] - r["true share"]
                              for r in rows]))


def _errors_row(column, errors) -> str:
    """One table row: the estimate's name, then its errors' mean, mean and max |·|, and how many within 0.03."""
    e = np.asarray(errors)
    label = column if column == "uncorrected" else f"corrected, strength {column:g}"
    return (f"| {label} | {e.mean():+.3f} | {np.abs(e).mean():.3f} | {np.abs(e).max():.3f} | "
            f"{int(np.sum(np.abs(e) <= 0.03))}/{len(e)} |")


if __name__ == "__main__":
    main()
