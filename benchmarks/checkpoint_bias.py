"""Where a checkpoint's mean-Dice error comes from: a few misjudged cases, or the batch correction?

For each group (checkpoint) of a `segqc bench` run of a method that describes its candidates
(`features`), from its ``bench.csv`` and the bundle it was judged with:

* true mean Dice, the mean calibrated Dice (uncorrected), the batch correction
  (`segqc.calibration.batch_correction`) and the corrected estimate, as ``dataset_level`` of
  ``bench.json`` reports them;
* how much of the uncorrected error the tenth of its cases with the largest residuals
  (true − calibrated, of the error's sign) carries (above 100 %: the rest err the other way),
  their calibrated and true Dice, and the mean residual of the rest: is the error spread over
  the cases, or a handful of cases the judge misjudged?
* with ``--sources``, the calibration pairs the correction rests on, by source family: their share
  of the weight and their weighted residual (what they add to the correction).

Reads tables only (no network is run).

    python benchmarks/checkpoint_bias.py runs/X/kvasir/bench runs/X/kvasir/bundle [--method features] [--sources]
        [--describe compactness ...]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
from common import kept_pairs, noise_floor

from segqc.engines.batch import read_rows
from segqc.pipeline.bundle import load_bundle
from segqc.pipeline.outputs import descriptors


def pair_families(bundle_dir: Path, method: str, n_kept: int) -> np.ndarray:
    """The source family of each calibration pair the method's correction keeps (in its order): a snapshot's or a
    simulated site's network of segqc's segmenter, an outsider architecture, a corruption of an expert mask."""
    source = kept_pairs(bundle_dir, method)["source"]
    if len(source) != n_kept:
        raise SystemExit(f"{bundle_dir}: its calibration pairs ({len(source)}) are not its correction's ({n_kept}); "
                         "a calibrator refitted outside `segqc fit` (e.g. benchmarks/sibling_pairs.py --write)?")
    # segmenter:fold1_ep55 → segmenter:late snapshots; outsider:segresnet_site2 → outsider:segresnet
    return np.array([re.sub(r"^segmenter:fold\d+_ep(\d+)$",
                            lambda m: "segmenter:snapshot ep" + ("≥34" if int(m.group(1)) >= 34 else "<34"), s)
                     .replace("_final", "").split("_site")[0].split("_ep")[0] for s in source], dtype=object)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", type=Path, help="a `segqc bench` output folder (bench.csv)")
    ap.add_argument("bundle", type=Path, help="the bundle it was judged with")
    ap.add_argument("--method", default="features")
    ap.add_argument("--sources", action="store_true", help="the correction's weight by calibration-pair family")
    ap.add_argument("--describe", nargs="+", default=[], metavar="DESCRIPTOR",
                    help="the median of these descriptors (e.g. compactness) per checkpoint and per pair family: "
                         "where the batches lie among the pairs")
    args = ap.parse_args()
    cal = load_bundle(args.bundle).calibrators[args.method]
    if cal.correction_ is None:
        raise SystemExit(f"{args.bundle}: {args.method} has no batch correction")
    rows = [r for r in read_rows(args.bench / "bench.csv") if r["status"] == "ok"]
    described = descriptors(rows, args.method)
    if described is None:
        raise SystemExit(f"{args.bench / 'bench.csv'}: rows without {args.method}'s descriptors (an edited table?)")
    families = (pair_families(args.bundle, args.method, len(cal.correction_.residuals_))
                if args.sources or args.describe else None)
    residuals = cal.correction_.residuals_.astype(float)
    print("| group | n | true | uncorrected | correction | corrected | error (± its cases' noise) | top tenth's share "
          "of the uncorrected error | rest's mean residual |\n|---|---|---|---|---|---|---|---|---|")
    errors, case_errors = {"uncorrected": [], "corrected": []}, {}
    for group in dict.fromkeys(r["group"] for r in rows):
        sel = np.array([r["group"] == group for r in rows])
        true = np.array([float(r["dice_true"]) for r, s in zip(rows, sel) if s])
        pred = cal.predict_dice([float(r[f"{args.method}_raw"]) for r, s in zip(rows, sel) if s])
        shift = cal.correction_.correct(described[sel]) or {"correction": 0.0}
        corrected = pred.mean() + shift["correction"]
        order = np.argsort(true - pred)[::-1 if true.mean() > pred.mean() else 1]  # the error's sign first
        resid, top = (true - pred)[order], max(1, len(true) // 10)
        share = resid[:top].sum() / len(resid) / (true.mean() - pred.mean())
        worst = order[:top]
        case_errors[group] = pred - true
        errors["uncorrected"].append(pred.mean() - true.mean())
        errors["corrected"].append(corrected - true.mean())
        noise = np.std(pred - true, ddof=1) / np.sqrt(len(true))
        print(f"| {group} | {len(true)} | {true.mean():.3f} | {pred.mean():.3f} | {shift['correction']:+.3f} | "
              f"{corrected:.3f} | {corrected - true.mean():+.3f} (± {noise:.3f}) | {share:.0%}: calibrated "
              f"{pred[worst].min():.2f}–{pred[worst].max():.2f}, true {true[worst].min():.2f}–"
              f"{true[worst].max():.2f} | {resid[top:].mean():+.3f} |")
        if args.sources:
            w = cal.correction_.weights(described[sel])
            for fam in sorted(set(families.tolist()), key=lambda f: -w[families == f].sum())[:3]:
                f = families == fam
                print(f"|   ↳ {fam} | {int(f.sum())} pairs | weight {w[f].sum():.2f} | residual "
                      f"{residuals[f].mean():+.3f} | adds {np.sum(w[f] * residuals[f]):+.3f} | | | | |")
    for what, e in errors.items():
        e = np.abs(e)
        print(f"{what}: mean |estimate − truth| {e.mean():.3f}, max {e.max():.3f}, {int(np.sum(e <= 0.03))} of "
              f"{len(e)} within 0.03")
    print(noise_floor(case_errors))
    if args.describe:
        describe(args.describe, cal.correction_, rows, described, families)


def describe(names, correction, rows, described, families) -> None:
    """The median of each descriptor in ``names`` per benchmark group and per calibration-pair family."""
    unknown = sorted(set(names) - set(correction.names_))
    if unknown:
        raise SystemExit(f"no descriptor {unknown}; the correction's are {correction.names_}")
    cols = [correction.names_.index(n) for n in names]
    groups = np.array([r["group"] for r in rows])
    print("\n| checkpoint or pair family | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for label, values in ([(g, described[groups == g]) for g in dict.fromkeys(groups)]
                          + [(f"pairs: {f}", correction.descriptors_[families == f].astype(float))
                             for f in sorted(set(families.tolist()))]):
        print(f"| {label} | " + " | ".join(f"{np.nanmedian(values[:, c]):.2f}" for c in cols) + " |")


if __name__ == "__main__":
    main()
