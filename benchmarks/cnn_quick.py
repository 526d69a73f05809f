"""Quick accuracy check of the `cnn` QC method on real Kvasir predictions.

Fits `CNNRegressor` (default parameters unless given) on the Kvasir ``reference`` ids
of ``shared/benchmarks/kvasir/split.json`` (never the ``test`` ids), then scores a
random subset of ``cases.csv`` rows (real network predictions on test ids) and compares
the raw predicted Dice with the true one.

    .venv/bin/python benchmarks/cnn_quick.py [--shared /work/shared] [--rows 200] [--param k=v ...]

Prints Pearson r, Spearman ρ, MAE, AUROC (Dice < 0.8), fit time and predict time per case,
and writes them as JSON to ``--out`` (default: runs/cnn_quick.json).
"""

from __future__ import annotations

import argparse
import ast
import json
import time
from pathlib import Path

import numpy as np

from segqc.data import CaseRef, read_manifest
from segqc.evaluation import auroc_fail, mae, pearson, spearman
from segqc.methods.base import FitContext
from segqc.methods.cnn import CNNRegressor
from segqc.plan.fingerprint import compute_fingerprint, plan_from_fingerprint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", default="/work/shared")
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--n-ref", type=int, default=None, help="use only the first N reference ids (smoke runs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--param", action="append", default=[], help="CNNRegressor parameter, e.g. epochs=4")
    ap.add_argument("--out", default="runs/cnn_quick.json")
    args = ap.parse_args()

    shared = Path(args.shared)
    data = shared / "data" / "kvasir-seg"
    split = json.loads((shared / "benchmarks" / "kvasir" / "split.json").read_text())
    ref_ids = split["reference"][: args.n_ref] if args.n_ref else split["reference"]
    assert not set(ref_ids) & set(split["test"]), "reference and test ids overlap"
    params = {}
    for kv in args.param:
        k, v = kv.split("=", 1)
        try:
            params[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            params[k] = v

    t = time.perf_counter()
    cases = [CaseRef(i, (data / "images" / f"{i}.jpg",), data / "masks" / f"{i}.png").load() for i in ref_ids]
    t_load = time.perf_counter() - t
    plan = plan_from_fingerprint(compute_fingerprint(cases))
    method = CNNRegressor(**params)
    epochs_done = []
    t = time.perf_counter()
    method.fit(cases, plan, FitContext(rng=np.random.default_rng(args.seed),
                                       progress=lambda msg: epochs_done.append(time.perf_counter())))
    t_fit = time.perf_counter() - t
    for h in method.history_:
        print(f"epoch {h['epoch']}: mse {h['mse']:.4f} loss {h['loss']:.4f} ({h['samples']} samples, {h['seconds']}s)")

    refs = read_manifest(shared / "benchmarks" / "kvasir" / "cases.csv", root=shared, mask_col="prediction",
                         truth_col="ground_truth", group_col="checkpoint")
    test_ids = set(split["test"])
    refs = [r for r in refs if r.extra["source_id"] in test_ids]
    rng = np.random.default_rng(args.seed)
    pick = sorted(rng.choice(len(refs), size=min(args.rows, len(refs)), replace=False))
    true, pred, groups, t_score = [], [], [], 0.0
    for j in pick:
        ref = refs[j]
        case = ref.load()
        case.truth = None  # QC never sees the expert mask
        t = time.perf_counter()
        s = method.score(case)
        t_score += time.perf_counter() - t
        true.append(float(ref.extra["dice"]))
        groups.append(ref.group)
        pred.append(s.dice[1])
    true, pred = np.asarray(true), np.asarray(pred)
    out = {"params": method.get_params(), "fit_info": method.fit_info_, "n_reference": len(cases),
           "n_train_pairs_per_epoch": method.n_train_, "rows": len(true),
           "pearson": pearson(true, pred), "spearman": spearman(true, pred), "mae": mae(true, pred),
           "auroc_dice_below_0.8": auroc_fail(true, pred, 0.8), "mean_true": float(true.mean()),
           "mean_pred": float(pred.mean()), "load_seconds": round(t_load, 1), "fit_seconds": round(t_fit, 1),
           "predict_seconds_per_case": t_score / max(len(true), 1)}
    by_group = {}
    for g in sorted(set(groups)):
        sel = np.array([x == g for x in groups])
        by_group[g] = {"n": int(sel.sum()), "mean_true": float(true[sel].mean()), "mean_pred": float(pred[sel].mean()),
                       "mae": mae(true[sel], pred[sel])}
    out["by_checkpoint"] = by_group
    print(json.dumps(out, indent=1, default=str))
    out["rows_scored"] = [{"case_id": refs[j].case_id, "checkpoint": g, "dice": float(t), "pred": float(p)}
                          for j, g, t, p in zip(pick, groups, true, pred)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
