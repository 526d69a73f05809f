"""How big and how slow is the HTML report for a large run?

Takes a `segqc predict` folder whose ``run.json`` names a CSV manifest (for example
``runs/demo/kvasir/qc`` after ``make demo``), repeats its rows under new case ids up to
``--cases`` rows (every 500th one turned into an unreadable-case row, as real runs have),
writes the report and prints its size and the time taken.

    .venv/bin/python benchmarks/report_scale.py runs/demo/kvasir/qc --cases 5000
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

from segqc.report import write_report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("qc_dir", type=Path, help="a `segqc predict` output folder")
    ap.add_argument("--cases", type=int, default=5000)
    ap.add_argument("--out", type=Path, default=Path("runs/report_scale"))
    args = ap.parse_args()
    run = json.loads((args.qc_dir / "run.json").read_text())
    manifest = Path(run["options"]["data"])
    rows = list(csv.DictReader(open(args.qc_dir / "predictions.csv")))
    cases = {r["case_id"]: r for r in csv.DictReader(open(manifest))}
    args.out.mkdir(parents=True, exist_ok=True)
    fields = list(cases[rows[0]["case_id"]])
    with open(args.out / "predictions.csv", "w", newline="") as f, \
            open(args.out / "manifest.csv", "w", newline="") as g:
        pred, man = csv.DictWriter(f, fieldnames=list(rows[0])), csv.DictWriter(g, fieldnames=fields)
        pred.writeheader()
        man.writeheader()
        for i in range(args.cases):
            row = dict(rows[i % len(rows)])
            source = dict(cases[row["case_id"]])
            cid = f"{row['case_id']}_{i:05d}"
            if i % 500 == 7:
                row = {k: "" for k in row} | {"group": row["group"], "status": "error",
                                              "error": "cannot read mask: truncated PNG file"}
            row["case_id"] = source["case_id"] = cid
            for col in ("image", "mask", "truth"):  # absolute, as the copy lives elsewhere
                if source.get(col):
                    source[col] = str((manifest.parent / source[col]).resolve())
            pred.writerow(row)
            man.writerow(source)
    run["options"]["data"] = str((args.out / "manifest.csv").resolve())
    (args.out / "run.json").write_text(json.dumps(run))
    t0 = time.time()
    path = write_report(args.out, quiet=True)
    print(f"{args.cases} cases: {path} is {path.stat().st_size / 1e6:.1f} MB, written in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
