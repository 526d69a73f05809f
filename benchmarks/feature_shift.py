"""Why does `features` answer differently at another site? Its features' contributions, group against group.

For the rows of two groups of a benchmark manifest (by default the shift benchmark's
``checkpoint`` column, e.g. one model at the unchanged site ``s0`` and at a new site),
the bundle's `features` method measures every candidate and LightGBM splits each raw
prediction into per-feature contributions (TreeSHAP, ``pred_contrib``). The script prints
each group's true and predicted mean Dice, its pseudo ground truth's Dice against the
expert mask, and the features whose mean contribution moved most between the groups,
with their mean values. A feature that moves the prediction while the truth moves the
other way measures the site rather than the mask.

    python benchmarks/feature_shift.py runs/X/kvasir/bundle runs/shift/cases_50.csv \\
        --root runs/shift --groups segresnet_s0_ep30@s0 segresnet_s0_ep30@s6
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import add_threads_option, set_threads


def measure(method, refs) -> dict:
    """The rows' features, contributions, true Dice and pseudo ground truth Dice."""
    from segqc.components.quality_features import measure_candidates
    from segqc.metrics import binary_dice

    cases = [r.load() for r in refs]
    probas = [method.segmenter_proba(c) for c in cases]
    rows = [row for case_rows in measure_candidates(list(zip(cases, probas)), method.labels_, method.ref_stats_, 1)
            for row in case_rows]
    X = method._matrix(rows)
    label = method.labels_[0]  # one foreground label: the segmenter's channel 1
    return {"X": X, "contrib": method.model_.booster_.predict(X, pred_contrib=True),
            "true": np.array([float(r.extra["dice"]) for r in refs]),
            "pgt": np.array([binary_dice(p.argmax(0) == 1, c.truth == label) for c, p in zip(cases, probas)])}


def main() -> None:
    from segqc.data import read_manifest
    from segqc.pipeline.bundle import load_bundle

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("cases", type=Path, help="a benchmark manifest (prediction, ground_truth and dice columns)")
    ap.add_argument("--root", type=Path, default=None, help="folder the manifest's paths are relative to")
    ap.add_argument("--groups", nargs=2, required=True, metavar=("A", "B"))
    ap.add_argument("--column", default="checkpoint", help="the manifest column the groups are values of")
    ap.add_argument("--top", type=int, default=10)
    add_threads_option(ap, default=1)
    args = ap.parse_args()
    set_threads(args.threads)
    method = load_bundle(args.bundle).methods["features"]
    if len(method.labels_) != 1:
        raise SystemExit("feature_shift.py: one foreground label only")
    refs = read_manifest(args.cases, root=args.root, mask_col="prediction", truth_col="ground_truth")
    a, b = (measure(method, [r for r in refs if r.extra.get(args.column) == g]) for g in args.groups)
    for name, g in zip(args.groups, (a, b)):
        print(f"{name}: n {len(g['true'])}, true mean Dice {g['true'].mean():.3f}, raw prediction "
              f"{g['contrib'].sum(1).mean():.3f}, pseudo ground truth Dice {g['pgt'].mean():.3f}")
    names = method.feature_names_ + ["(bias)"]
    moved = b["contrib"].mean(0) - a["contrib"].mean(0)
    print(f"\n| feature | contribution {args.groups[0]} → {args.groups[1]} | mean value |\n|---|---|---|")
    for i in np.argsort(-np.abs(moved))[:args.top]:
        value = (f"{np.nanmean(a['X'][:, i]):.3f} → {np.nanmean(b['X'][:, i]):.3f}" if i < len(method.feature_names_)
                 else "")
        print(f"| {names[i]} | {moved[i]:+.4f} | {value} |")


if __name__ == "__main__":
    main()
