"""Fit `features` once and keep every table it learns and is judged on, to study the regressor offline.

The feature regressor's accuracy depends on what it is trained on (synthetic corruptions,
segqc's own segmenter's snapshots) and on how the reference segmenter's opinion enters
its features (one out-of-fold network while fitting, every fold averaged when scoring).
Refitting to try each idea costs ~20 min on 2 cores; this script fits once, through the
real `segqc.api.fit`, and writes:

* ``fit``: the regressor's training rows (features, true Dice, pair source, reference id),
  exactly as `FeatureRegressor._fit` built them;
* ``cal``: the held-out calibration pairs (reference cases no network of the bundle saw),
  their features against the averaged segmenter (as the bundle scores them) and against
  each fold network alone, with the members' agreement among themselves;
* ``bench``: the same for benchmark rows (``--limit`` of them, as `run_benchmark.py` picks).

Selection between ideas must use ``fit``/``cal`` only; ``bench`` rows are for reporting.

    .venv/bin/python benchmarks/feature_tables.py kvasir --limit 1000 --threads 1 --out runs/tables
"""

from __future__ import annotations

import argparse
import pickle
import time
from pathlib import Path

import numpy as np
from common import (
    add_set_option,
    add_threads_option,
    benchmark_rows,
    data_dir,
    method_params,
    read_split,
    set_threads,
)

import segqc.methods.base as base
from segqc import api
from segqc.components.quality_features import mask_features
from segqc.data.labels import to_index
from segqc.methods.features import FeatureRegressor
from segqc.metrics import binary_dice, dice


def _members(method: FeatureRegressor, case) -> tuple[np.ndarray, list[np.ndarray]]:
    """The averaged segmenter's probabilities and each fold network's, on the case's grid."""
    per = method.segmenter_members(case)
    return np.mean(per, axis=0), per


def _rows(method: FeatureRegressor, case, proba: np.ndarray, per: list[np.ndarray]) -> dict:
    labels = method.labels_
    out = {"ens": [mask_features(case, k, method.ref_stats_, proba) for k in labels],
           "folds": [[mask_features(case, k, method.ref_stats_, p) for k in labels] for p in per]}
    cand = to_index(case.mask, labels)
    masks = [p.argmax(0) for p in per]
    member = []
    for j, _ in enumerate(labels, start=1):
        pair_d = [binary_dice(masks[a] == j, masks[b] == j)
                  for a in range(len(masks)) for b in range(a + 1, len(masks))]
        cand_d = [binary_dice(cand == j, m == j) for m in masks]
        member.append({"member_pair_dice_mean": float(np.mean(pair_d)), "member_pair_dice_min": float(np.min(pair_d)),
                       "cand_member_dice_mean": float(np.mean(cand_d)), "cand_member_dice_min": float(np.min(cand_d)),
                       "cand_member_dice_std": float(np.std(cand_d))})
    out["member"] = member
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", choices=["kvasir", "hippocampus"])
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-reference", type=int, default=None, help="fit on this many reference ids (smoke test)")
    ap.add_argument("--out", type=Path, default=Path("runs/tables"))
    add_set_option(ap)
    add_threads_option(ap)
    args = ap.parse_args()
    set_threads(args.threads)
    out = args.out / args.dataset
    out.mkdir(parents=True, exist_ok=True)

    seen: dict = {"make_pairs": []}
    make_pairs, table = base.make_training_pairs, FeatureRegressor._table

    def recording_make_pairs(*a, **k):
        pairs = make_pairs(*a, **k)
        seen["make_pairs"].append(pairs)
        return pairs

    def recording_table(self, pairs, probas, progress):
        X, y = table(self, pairs, probas, progress)
        seen["method"], seen["fit"] = self, {"X": X, "y": y, "source": [p.source for p in pairs],
                                             "reference_id": [p.reference_id for p in pairs]}
        return X, y

    base.make_training_pairs = recording_make_pairs
    FeatureRegressor._table = recording_table
    t0 = time.time()
    ids = read_split(args.dataset)["reference"][:args.n_reference]
    bundle = api.fit(reference=data_dir(args.dataset), out=out / "bundle", methods=["features"], ids=ids,
                     seed=args.seed, method_params=method_params(args.params))
    print(f"fit in {time.time() - t0:.0f} s")
    method: FeatureRegressor = seen["method"]
    cal_pairs = seen["make_pairs"][0]  # pipeline.fit makes the calibration pairs before any method fits
    labels = method.labels_
    cal = {"true": [p.true_dice(labels).tolist() for p in cal_pairs], "source": [p.source for p in cal_pairs],
           "reference_id": [p.reference_id for p in cal_pairs],
           "raw": bundle.info["calibration_pairs"]["raw"]["features"], "rows": []}
    cache: dict = {}
    for i, p in enumerate(cal_pairs):
        if p.reference_id not in cache:
            cache = {p.reference_id: _members(method, p.case)}
        cal["rows"].append(_rows(method, p.case, *cache[p.reference_id]))
        if (i + 1) % 200 == 0:
            print(f"calibration pairs: {i + 1}/{len(cal_pairs)}", flush=True)

    rows = benchmark_rows(args.dataset, group_col="checkpoint")
    pick = np.random.default_rng(args.seed).choice(len(rows), min(args.limit, len(rows)), replace=False)
    bench = {"true": [], "group": [], "deployed": [], "image": [], "rows": []}
    by_image: dict = {}
    for n, i in enumerate(sorted(pick)):
        case = rows[i].load()
        key = str(case.meta.get("image", [case.case_id])[0])
        if key not in by_image:
            by_image = {key: _members(method, case)}
        bench["rows"].append(_rows(method, case, *by_image[key]))
        bench["true"].append(dice(case.mask, case.truth, labels))
        bench["group"].append(rows[i].group)
        bench["deployed"].append(str(rows[i].extra.get("is_deployed")) == "True")
        bench["image"].append(key)
        if (n + 1) % 100 == 0:
            print(f"benchmark rows: {n + 1}/{len(pick)}", flush=True)
    with open(out / "tables.pkl", "wb") as f:
        pickle.dump({"fit": seen["fit"], "cal": cal, "bench": bench, "feature_names": method.feature_names_,
                     "labels": labels, "segmenter": bundle.info.get("segmenter")}, f)
    print(f"written {out / 'tables.pkl'} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
