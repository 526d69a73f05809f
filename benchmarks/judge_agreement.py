"""Where `features` is most wrong on a checkpoint's rows: does segqc's own segmenter (the judge) agree with the
candidate or with the expert? For the ``--worst`` rows of ``--checkpoint`` in a bench CSV (lowest true Dice),
the Dice of the judge's mask (all fold networks, as at scoring) with the candidate and with the expert mask.
A judge that draws the candidate's wrong region cannot flag it. README: "A volumetric outsider, and a judge
that gets its epochs".

    python benchmarks/judge_agreement.py runs/blur/kvasir/bundle runs/auto2/kvasir/bench/bench.csv \
        --checkpoint unet_s0_ep100 --worst 4
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from common import SHARED

from segqc.data import read_manifest
from segqc.metrics import binary_dice
from segqc.pipeline.bundle import load_bundle


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("bench_csv", type=Path)
    ap.add_argument("--checkpoint", default="unet_s0_ep100")
    ap.add_argument("--worst", type=int, default=4)
    ap.add_argument("--dataset", default="kvasir")
    args = ap.parse_args()
    with open(args.bench_csv, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["group"] == args.checkpoint and r["dice_true"]]
    rows = sorted(rows, key=lambda r: float(r["dice_true"]))[:args.worst]
    wanted = {r["source_id"]: r for r in rows}
    refs = read_manifest(SHARED / "benchmarks" / args.dataset / "cases.csv", root=SHARED, mask_col="prediction",
                         truth_col="ground_truth")
    method = load_bundle(args.bundle).methods["features"]
    print("| case | true Dice | predicted | judge vs candidate | judge vs expert |\n|---|---|---|---|---|")
    for ref in refs:
        r = wanted.get(ref.extra.get("source_id"))
        if r is None or ref.extra.get("checkpoint") != args.checkpoint:
            continue
        case = ref.load()
        judge = method.segmenter_proba(case).argmax(0) > 0
        print(f"| {r['source_id']} | {float(r['dice_true']):.3f} | {float(r['dice_pred']):.3f} | "
              f"{binary_dice(judge, case.mask > 0):.2f} | {binary_dice(judge, case.truth > 0):.2f} |")


if __name__ == "__main__":
    main()
