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

from common import bench_image_id, rows_by_image

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
    by_image = rows_by_image(args.dataset, {bench_image_id(r) for r in rows})
    method = load_bundle(args.bundle).methods["features"]
    print("| case | true Dice | predicted | judge vs candidate | judge vs expert |\n|---|---|---|---|---|")
    for r in rows:
        case = by_image[bench_image_id(r)][args.checkpoint].load()
        judge = method.segmenter_proba(case).argmax(0) > 0
        print(f"| {bench_image_id(r)} | {float(r['dice_true']):.3f} | {float(r['dice_pred']):.3f} | "
              f"{binary_dice(judge, case.mask > 0):.2f} | {binary_dice(judge, case.truth > 0):.2f} |")


if __name__ == "__main__":
    main()
