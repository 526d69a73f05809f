"""Does importance weighting by image appearance correct a site's estimate? (It did not; kept to show why.)

Covariate-shift corrections weight each calibration pair by how much more likely its
image is at the new site than in the reference data, p_site(x) / p_ref(x), estimated by a
domain classifier (Sugiyama et al.; Tibshirani et al. 2019 for conformal intervals). Here
x is the image's appearance descriptor (`segqc.calibration.shift.appearance`, stored in
the bundle for every reference image and in `bench.csv` for every row), the classifier an
L2 logistic regression on the descriptors' normal scores, reference images vs one
(site, checkpoint) group of a shift-benchmark `segqc bench` run. Three corrections of
that group's estimate are compared with none:

* ``weighted isotonic``: the calibrator refitted on the weighted calibration pairs;
* ``bias correction``: the estimate minus the weighted mean out-of-fold error of the pairs;
* ``weighted conformal``: per-case intervals whose radius is the weighted 90 % quantile of
  the pairs' out-of-fold residuals, the case's own weight at +∞ (Tibshirani et al.).

Evaluation only: nothing is fitted on benchmark truth (the truth only scores).

    .venv/bin/python benchmarks/shift_weighting.py runs/sites/kvasir/bundle runs/shift_sites
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from common import data_dir
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from segqc.calibration.crossfit import out_of_fold
from segqc.calibration.shift import _standardise
from segqc.pipeline.bundle import load_bundle
from segqc.pipeline.records import list_cases


def _weighted_quantile(res: np.ndarray, w: np.ndarray, w_case: float, q: float) -> float:
    order = np.argsort(res)
    mass = np.cumsum(w[order]) / (w.sum() + w_case)  # the case's own weight sits at +inf
    k = int(np.searchsorted(mass, q))
    return float(res[order][k]) if k < len(res) else 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("bench", type=Path, help="a `segqc bench` folder of the shift benchmark")
    ap.add_argument("--method", default="features")
    ap.add_argument("--dataset", default="kvasir", help="the bundle's reference dataset under ../shared/data")
    args = ap.parse_args()

    b = load_bundle(args.bundle)
    info = b.info
    # the bundle's appearance rows follow its reference cases in listing order
    kept = set(info["fit_ids"]) | set(info["calibration_ids"])
    order = [r.case_id for r in list_cases(data_dir(args.dataset)) if r.case_id in kept]
    if len(order) != len(b.appearance):
        raise SystemExit(f"{len(order)} reference ids listed, {len(b.appearance)} appearance rows in the bundle")
    row_of = {c: i for i, c in enumerate(order)}
    pairs = info["calibration_pairs"]
    raw, true = np.array(pairs["raw"][args.method]), np.array(pairs["true_dice"])
    ref = b.appearance
    at_pair = ref[[row_of[c] for c in pairs["reference_id"]]]
    cal = b.calibrators[args.method]
    oof = out_of_fold(IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1), raw, true, n_folds=5, seed=0)
    z = _standardise(ref)
    per_pair = len(raw) / len(set(pairs["reference_id"]))  # a case weighs as its image's pairs do

    with open(args.bench / "bench.csv", newline="") as f:
        groups = defaultdict(list)
        for r in csv.DictReader(f):
            if r["status"] == "ok":
                groups[r["group"]].append(r)
    errs, cover = defaultdict(list), defaultdict(list)
    print("| group | true | none | weighted isotonic | bias correction | ESS | 90 % cov. plain / weighted |")
    print("|---|---|---|---|---|---|---|")
    for g in sorted(groups, key=lambda g: (g.split("@")[-1], g)):
        rows = groups[g]
        r_raw = np.array([float(r[f"{args.method}_raw"]) for r in rows])
        r_true = np.array([float(r["dice_true"]) for r in rows])
        look = np.array([[float(v) for v in r["appearance"].split(";")] for r in rows])
        clf = LogisticRegression(C=0.1, class_weight="balanced", max_iter=2000).fit(
            np.vstack([z(ref), z(look)]), np.r_[np.zeros(len(ref)), np.ones(len(look))])
        w = np.exp(np.clip(clf.decision_function(z(at_pair)), -30, 30))
        w_case = np.exp(np.clip(clf.decision_function(z(look)), -30, 30)) * per_pair
        est = {"none": cal.predict_dice(r_raw).mean(),
               "weighted isotonic": IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1)
               .fit(raw, true, sample_weight=w / w.mean()).predict(r_raw).mean(),
               "bias correction": cal.predict_dice(r_raw).mean() - np.sum(w * (oof - true)) / w.sum()}
        for k, v in est.items():
            errs[k].append(v - r_true.mean())
        d = np.abs(r_true - cal.predict_dice(r_raw))
        radius = np.array([_weighted_quantile(np.abs(oof - true), w, wc, cal.coverage) for wc in w_case])
        cover["plain"] += list(d <= cal.radius_)
        cover["weighted"] += list(d <= radius)
        ess = w.sum() ** 2 / (w ** 2).sum() / len(w)
        print(f"| {g} | {r_true.mean():.3f} | " + " | ".join(f"{e[-1]:+.3f}" for e in errs.values())
              + f" | {ess:.0%} | {np.mean(d <= cal.radius_):.2f} / {np.mean(d <= radius):.2f} (radius "
              f"{radius.mean():.2f}) |")
    summary = {k: {"mean_abs": float(np.mean(np.abs(v))), "max_abs": float(np.max(np.abs(v))),
                   "within_0.03": int(np.sum(np.abs(v) <= 0.03)), "groups": len(v)} for k, v in errs.items()}
    summary["per_case_coverage"] = {k: float(np.mean(v)) for k, v in cover.items()}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
