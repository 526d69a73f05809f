"""Quick accuracy / speed check of the mask-autoencoder QC method on Kvasir-SEG.

Fits `MaskAutoencoder` (default parameters) on the Kvasir ``reference`` ids minus 50
held out, reports the reconstruction Dice of those 50 expert masks, then scores a
random sample of rows of ``benchmarks/kvasir/cases.csv`` (real predictions on ``test``
ids, never used for fitting) and compares the raw score with the true Dice.

    .venv/bin/python benchmarks/autoencoder_quick.py --rows 200 --out runs/autoencoder_quick.json

Run it alone: it trains for up to ``max_minutes`` on the CPU.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from segqc.data import CaseRef, read_manifest
from segqc.evaluation import auroc_fail, mae, pearson, spearman
from segqc.methods.autoencoder import MaskAutoencoder
from segqc.methods.base import FitContext
from segqc.plan.fingerprint import compute_fingerprint, plan_from_fingerprint


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", default="/work/shared", help="folder holding data/ and benchmarks/")
    ap.add_argument("--rows", type=int, default=200, help="cases.csv rows to score (random, seed 0)")
    ap.add_argument("--holdout", type=int, default=50, help="reference ids kept out of fitting")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--params", default="{}", help="JSON of MaskAutoencoder parameters to override")
    ap.add_argument("--out", default=None, help="write the figures as JSON here")
    args = ap.parse_args()

    shared = Path(args.shared)
    rng = np.random.default_rng(0)
    split = json.loads((shared / "benchmarks/kvasir/split.json").read_text())
    ref_ids = sorted(split["reference"])
    assert not set(ref_ids) & set(split["test"]), "reference and test ids overlap"
    held = set(rng.choice(ref_ids, args.holdout, replace=False).tolist())
    data = shared / "data/kvasir-seg"

    def load(cid: str):
        return CaseRef(cid, (data / "images" / f"{cid}.jpg",), data / "masks" / f"{cid}.png").load()

    t = time.perf_counter()
    fit_cases = [load(c) for c in ref_ids if c not in held]
    held_cases = [load(c) for c in sorted(held)]
    t_load = time.perf_counter() - t

    t = time.perf_counter()
    plan = plan_from_fingerprint(compute_fingerprint(fit_cases))
    params = {"n_threads": args.threads, **json.loads(args.params)}
    method = MaskAutoencoder(**params)
    method.fit(fit_cases, plan, FitContext(rng=np.random.default_rng(0)))
    t_fit = time.perf_counter() - t
    print(f"plan: slice {plan.slice_size}, spacing {plan.target_spacing}; fit on {len(fit_cases)} masks "
          f"in {t_fit:.1f} s (training {method.history_['train_seconds']:.1f} s, "
          f"{method.history_['epochs_run']} epochs, {method.history_['steps']} steps, "
          f"last loss {method.history_['loss'][-1]:.4f})")

    recon = np.array([method.score(c).dice[1] for c in held_cases])
    print(f"reconstruction Dice of {len(held_cases)} held-out expert masks: mean {recon.mean():.4f}, "
          f"median {np.median(recon):.4f}, min {recon.min():.4f}")

    refs = read_manifest(shared / "benchmarks/kvasir/cases.csv", root=shared, mask_col="prediction",
                         truth_col="ground_truth", group_col="checkpoint")
    pick = np.sort(rng.choice(len(refs), min(args.rows, len(refs)), replace=False))
    true, raw, soft, secs, groups = [], [], [], [], []
    for i in pick:
        case = refs[i].load()
        t = time.perf_counter()
        s = method.score(case)
        secs.append(time.perf_counter() - t)
        true.append(float(refs[i].extra["dice"]))
        raw.append(s.dice[1])
        soft.append(s.features["soft_dice_1"])
        groups.append(refs[i].group)
    true, raw, soft = np.array(true), np.array(raw), np.array(soft)
    res = {
        "n_fit": len(fit_cases), "n_holdout": len(held_cases), "n_rows": len(pick),
        "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in method.get_params().items()},
        "slice_size": plan.slice_size, "load_seconds": t_load, "fit_seconds": t_fit,
        "train_seconds": method.history_["train_seconds"], "epochs_run": method.history_["epochs_run"],
        "recon_dice_mean": float(recon.mean()), "recon_dice_median": float(np.median(recon)),
        "recon_dice_min": float(recon.min()),
        "pearson": pearson(true, raw), "spearman": spearman(true, raw), "mae": mae(true, raw),
        "auroc_fail_0.8": auroc_fail(true, raw), "pearson_soft": pearson(true, soft), "mae_soft": mae(true, soft),
        "true_dice_mean": float(true.mean()), "raw_mean": float(raw.mean()),
        "predict_seconds_mean": float(np.mean(secs)), "predict_seconds_max": float(np.max(secs)),
    }
    print(f"{len(pick)} cases.csv rows: Pearson r {res['pearson']:.3f}, Spearman {res['spearman']:.3f}, "
          f"MAE {res['mae']:.3f}, AUROC(Dice<0.8) {res['auroc_fail_0.8']:.3f} | soft Dice: r "
          f"{res['pearson_soft']:.3f}, MAE {res['mae_soft']:.3f} | mean true {res['true_dice_mean']:.3f}, "
          f"mean raw {res['raw_mean']:.3f}")
    print(f"predict: {res['predict_seconds_mean'] * 1000:.0f} ms/case mean, "
          f"{res['predict_seconds_max'] * 1000:.0f} ms max (image loading excluded)")
    for g in sorted(set(groups)):
        sel = np.array([x == g for x in groups])
        print(f"  {g:20s} n={sel.sum():3d} true {true[sel].mean():.3f} raw {raw[sel].mean():.3f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
