"""Does segqc's shift score grow with a site's shift, and does it say when the estimate drifts?

For each site of a shift benchmark (`benchmarks/shift_benchmark.py`, default ``runs/shift``)
the score of `segqc.calibration.shift.shift_score` is computed between the site's images
and the Kvasir ``reference`` images (what a bundle fitted on them stores), next to the
site's severity, the deployed model's true mean Dice there, and — given a `segqc bench`
run on the benchmark (``--bench``) — how far a method's estimated mean Dice was from it.
Controls: the reference images split in two halves, and the original test images.

    .venv/bin/python benchmarks/shift_score.py --bench runs/shift_bench
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
from common import data_dir, read_split

from segqc.calibration.shift import appearance, shift_score
from segqc.data import load_dataset, read_image


def _descriptors(paths) -> np.ndarray:
    out = []
    for p in paths:
        image, geometry = read_image(p)
        out.append(appearance(image, geometry.spacing))
    return np.array(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shift", type=Path, default=Path("runs/shift"), help="the shift benchmark's folder")
    ap.add_argument("--bench", type=Path, default=None, help="a `segqc bench` folder of that benchmark")
    ap.add_argument("--method", default="features", help="with --bench: the method whose estimate is shown")
    ap.add_argument("--out", type=Path, default=Path("runs/shift_score.json"))
    args = ap.parse_args()

    split = read_split("kvasir")
    listed = load_dataset(data_dir("kvasir"))
    ref = _descriptors([r.image[0] for r in listed if r.case_id in set(split["reference"])])
    test = _descriptors([r.image[0] for r in listed if r.case_id in set(split["test"])])
    half = np.random.default_rng(0).permutation(len(ref))
    rows = [{"site": "reference half vs half", "score": shift_score(ref[half[::2]], ref[half[1::2]])["score"]},
            {"site": "original test images", "score": shift_score(ref, test)["score"]}]
    cases = list(csv.DictReader(open(args.shift / "cases.csv", newline="")))
    bench = []
    if args.bench:
        bench = [r for r in csv.DictReader(open(args.bench / "bench.csv", newline="")) if r["status"] == "ok"]
    for site in sorted({r["site"] for r in cases}):
        mine = [r for r in cases if r["site"] == site]
        res = shift_score(ref, _descriptors(sorted({args.shift / r["image"] for r in mine})))
        deployed = [float(r["dice"]) for r in mine if r["is_deployed"] == "True"]
        row = {"site": site, "severity": float(mine[0]["severity"]), "score": res["score"],
               "distance_ratio": res["distance_ratio"], "warning": bool(res["warning"]),
               "most_different": res["most_different"][0]["descriptor"],
               "true_mean_dice_deployed": float(np.mean(deployed))}
        ours = [r for r in bench if r["group"].endswith(f"@{site}") and r["is_deployed"] == "True"]
        if ours:
            row["estimated_minus_true_deployed"] = float(np.mean([float(r[f"{args.method}_dice"]) for r in ours]) -
                                                         np.mean([float(r["dice_true"]) for r in ours]))
        rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    print("| site | severity | shift score | distance ratio | warning | moved most | true mean Dice (deployed) | "
          f"{args.method} estimate − truth |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [r["site"], r.get("severity", ""), f"{r['score']:.2f}", f"{r.get('distance_ratio', float('nan')):.3g}",
                 {True: "yes", False: "no"}.get(r.get("warning"), ""), r.get("most_different", ""),
                 f"{r['true_mean_dice_deployed']:.3f}" if "true_mean_dice_deployed" in r else "",
                 f"{r['estimated_minus_true_deployed']:+.3f}" if "estimated_minus_true_deployed" in r else ""]
        print("| " + " | ".join(str(c) for c in cells) + " |")


if __name__ == "__main__":
    main()
