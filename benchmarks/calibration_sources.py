"""Where does the optimism come from? A bundle's calibration pairs by source, against a bench run.

A bundle records what each calibrator was fitted on (`info["calibration_pairs"]`: for each
pair of a held-out reference case, its source — a synthetic corruption or a snapshot of
segqc's reference segmenter — its true Dice and every method's raw score). This script
shows, for one method:

1. per source, the pairs' raw score → true Dice relation (mean true Dice per raw-score bin);
2. the same for the benchmark's rows (real networks' masks of unseen cases) from a
   `segqc bench` run of that bundle;
3. what the estimated mean Dice per checkpoint would be with a calibrator fitted on each
   source alone — a diagnosis on benchmark rows, NOT a way to choose a calibration (that
   would be tuning on test ids);
4. with ``--by-segmenter`` (``features`` bundles): the estimate's error by how well segqc's
   own reference segmenter segments the same image (its Dice against the expert mask).

    .venv/bin/python benchmarks/calibration_sources.py runs/calrec/kvasir/bundle runs/calrec/kvasir/bench \
        --by-segmenter
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from common import calibrated_mask

from segqc.calibration.calibrator import DiceCalibrator

BINS = np.linspace(0, 1, 6)


def _kind(source: str) -> str:
    """``corruption``, the reference segmenter's snapshots (early: epoch ≤ 8, or late) or its simulated sites."""
    if not source.startswith("segmenter:"):
        return source
    if "_ep" not in source:  # segmenter:site<k>: the trained segmenter at a simulated acquisition site
        return "segmenter at simulated sites"
    epoch = int(source.rsplit("_ep", 1)[-1])  # tags are segmenter:fold<f>_ep<e>
    return "segmenter ep ≤ 8" if epoch <= 8 else "segmenter ep > 8"


def _by_bin(raw: np.ndarray, true: np.ndarray) -> str:
    cells = []
    for lo, hi in zip(BINS[:-1], BINS[1:]):
        m = (raw >= lo) & (raw < hi if hi < 1 else raw <= hi)
        cells.append(f"{true[m].mean():.2f} ({m.sum()})" if m.any() else "–")
    return " | ".join(cells)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("bench", type=Path, help="a `segqc bench` folder of that bundle (bench.csv)")
    ap.add_argument("--method", default="features")
    ap.add_argument("--by-segmenter", action="store_true", help="error by the reference segmenter's own Dice")
    args = ap.parse_args()

    info = json.loads((args.bundle / "bundle.json").read_text())["info"]
    rec = info["calibration_pairs"]
    raw = np.asarray(rec["raw"][args.method], float)
    true = np.asarray(rec["true_dice"], float)
    kinds = np.array([_kind(s) for s in rec["source"]])
    tau, coverage = info["tau"], info["coverage"]
    rows = [r for r in csv.DictReader(open(args.bench / "bench.csv", newline="")) if r["status"] == "ok"]
    b_raw = np.array([float(r[f"{args.method}_raw"]) for r in rows])
    b_true = np.array([float(r["dice_true"]) for r in rows])
    groups = np.array([r["group"] for r in rows])
    deployed = np.array([r.get("is_deployed") == "True" for r in rows])

    print(f"mean true Dice per raw-score bin (count), {args.method}:\n")
    print("| pairs | n | " + " | ".join(f"raw {lo:.1f}–{hi:.1f}" for lo, hi in zip(BINS[:-1], BINS[1:])) + " |")
    print("|---|---|" + "---|" * (len(BINS) - 1))
    for k in sorted(set(kinds)):
        m = kinds == k
        print(f"| calibration: {k} | {m.sum()} | {_by_bin(raw[m], true[m])} |")
    print(f"| calibration: all | {len(raw)} | {_by_bin(raw, true)} |")
    print(f"| benchmark rows | {len(b_raw)} | {_by_bin(b_raw, b_true)} |")
    print(f"| benchmark, deployed | {deployed.sum()} | {_by_bin(b_raw[deployed], b_true[deployed])} |")

    subsets = {"all pairs": np.ones(len(raw), bool), "the bundle's pool": calibrated_mask(rec, args.method)}
    subsets.update({f"{k} only": kinds == k for k in sorted(set(kinds))})
    est = defaultdict(dict)
    for name, m in subsets.items():
        if m.sum() < 20:
            continue
        cal = DiceCalibrator(tau=tau, coverage=coverage).fit(raw[m], true[m])
        pred = cal.predict_dice(b_raw)
        for g in sorted(set(groups)):
            est[g][name] = float(pred[groups == g].mean())
        est["deployed rows"][name] = float(pred[deployed].mean())
    names = list(next(iter(est.values())))
    print("\nestimated mean Dice with a calibrator fitted on each source alone (diagnosis only):\n")
    print("| checkpoint | true | " + " | ".join(names) + " |\n|---|---|" + "---|" * len(names))
    for g, vals in est.items():
        t = b_true[deployed].mean() if g == "deployed rows" else b_true[groups == g].mean()
        print(f"| {g} | {t:.3f} | " + " | ".join(f"{vals[n]:.3f}" for n in names) + " |")
    if args.by_segmenter:
        by_segmenter(args.bundle, rows)


def by_segmenter(bundle_dir: Path, rows: list[dict]) -> None:
    """`features`' estimate − truth by the Dice of segqc's reference segmenter on the same image."""
    from common import benchmark_rows

    from segqc.metrics import dice
    from segqc.pipeline.bundle import load_bundle

    method = load_bundle(bundle_dir).methods["features"]
    by_id = {r["case_id"]: r for r in rows}
    refs = [r for r in benchmark_rows("kvasir", group_col="checkpoint") if r.case_id in by_id]
    seg, out = {}, []
    for ref in refs:
        case = ref.load()
        key = str(case.meta.get("image", [case.case_id])[0])
        if key not in seg:  # the segmenter's own mask of this image (all folds averaged, as at scoring)
            seg[key] = dice(np.asarray(method.segmenter_proba(case)).argmax(0).astype(np.uint8), case.truth, [1])
        r = by_id[ref.case_id]
        out.append((seg[key], float(r["features_dice"]) - float(r["dice_true"]), r.get("is_deployed") == "True"))
    a = np.array([o[:2] for o in out])
    dep = np.array([o[2] for o in out])
    print(f"\nreference segmenter's mean Dice on these images: {np.mean(list(seg.values())):.3f}\n")
    print("| segmenter Dice on the image | rows | estimate − truth | deployed rows | estimate − truth |\n"
          "|---|---|---|---|---|")
    for lo, hi in [(0, .5), (.5, .8), (.8, .9), (.9, 1.01)]:
        s = (a[:, 0] >= lo) & (a[:, 0] < hi)
        d = s & dep
        print(f"| {lo:.1f}–{min(hi, 1):.1f} | {s.sum()} | {a[s, 1].mean():+.3f} | {d.sum()} | "
              f"{a[d, 1].mean() if d.any() else float('nan'):+.3f} |")


if __name__ == "__main__":
    main()
