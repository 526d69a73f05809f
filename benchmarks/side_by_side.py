"""Methods from several `segqc bench` runs, judged on the rows they all scored.

Benchmarks of different methods are often run separately (one bundle each, or one
with a ``--limit`` subset). This joins their ``bench.csv`` files on (case id,
checkpoint), keeps the rows that every run scored without error, and prints one
markdown table of r, MAE, AUROC (Dice < τ), AURC and ECE per method, the same for the
deployed model's rows, and the estimated vs true mean Dice per checkpoint.

    python benchmarks/side_by_side.py runs/kbench2/kvasir/bench/bench.csv \\
        runs/bench/kvasir/bench/bench.csv --out runs/side_by_side_kvasir.json
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
from common import bench_image_id

from segqc import evaluation as ev


def _methods(header: list[str]) -> list[str]:
    """Methods of a bench.csv: every ``<m>_dice`` column with its ``<m>_p_pass``."""
    return [c[:-5] for c in header if c.endswith("_dice") and c != "dice_true" and f"{c[:-5]}_p_pass" in header]


def load_runs(paths: list[Path]) -> tuple[list[tuple[str, str]], dict[str, dict], dict]:
    """Rows common to all runs (ok in each) → keys, {method: {pred, p_pass}}, {true, group, deployed}."""
    tables, methods = [], {}
    for path in paths:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = {(bench_image_id(r), r["group"]): r for r in reader if r["status"] == "ok"}
            names = _methods(reader.fieldnames or [])
        tables.append(rows)
        for m in names:
            methods.setdefault(m, len(tables) - 1)  # a method benched twice: the first file wins
    keys = sorted(set.intersection(*(set(t) for t in tables)))
    if not keys:
        raise SystemExit("the bench files have no successfully scored row in common")
    first = tables[0]
    truth = {"true": np.array([float(first[k]["dice_true"]) for k in keys]),
             "group": np.array([k[1] for k in keys]),
             "deployed": np.array([first[k].get("is_deployed") == "True" for k in keys])}
    preds = {m: {"pred": np.array([float(tables[i][k][f"{m}_dice"]) for k in keys]),
                 "p_pass": np.array([float(tables[i][k][f"{m}_p_pass"]) for k in keys])}
             for m, i in methods.items()}
    return keys, preds, truth


def _fmt(x) -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.3f}"


def compare(paths: list[Path], tau: float = 0.8) -> dict:
    keys, preds, truth = load_runs(paths)
    t, g, dep = truth["true"], truth["group"], truth["deployed"]
    out = {"n_rows": len(keys), "files": [str(p) for p in paths], "methods": {}}
    for m, p in preds.items():
        res = ev.evaluate(t, p["pred"], p_pass=p["p_pass"], groups=list(g), tau=tau)
        if dep.any():
            res["deployed"] = ev.evaluate(t[dep], p["pred"][dep], p_pass=p["p_pass"][dep], tau=tau)["overall"]
        res["per_checkpoint_mean"] = {c: {"estimated": float(p["pred"][g == c].mean()),
                                          "true": float(t[g == c].mean())} for c in dict.fromkeys(g)}
        out["methods"][m] = res
    return out


def markdown(res: dict) -> str:
    lines = [f"{res['n_rows']} rows scored by every run", "",
             "| method | r | MAE | AUROC | AURC | ECE | deployed r / MAE / AUROC | max abs. error of mean Dice "
             "per checkpoint |", "|---|---|---|---|---|---|---|---|"]
    for m, r in res["methods"].items():
        o, d = r["overall"], r.get("deployed", {})
        worst = max(abs(v["estimated"] - v["true"]) for v in r["per_checkpoint_mean"].values())
        dep = " / ".join(_fmt(d.get(k)) for k in ("pearson", "mae", "auroc")) if d else "–"
        lines.append(f"| {m} | {_fmt(o['pearson'])} | {_fmt(o['mae'])} | {_fmt(o['auroc'])} | {_fmt(o['aurc'])} | "
                     f"{_fmt(o['ece'])} | {dep} | {worst:.3f} |")
    ckpts = list(next(iter(res["methods"].values()))["per_checkpoint_mean"])
    lines += ["", "Mean Dice per checkpoint, estimated (true):", "",
              "| method | " + " | ".join(ckpts) + " |", "|---|" + "---|" * len(ckpts)]
    for m, r in res["methods"].items():
        pc = r["per_checkpoint_mean"]
        lines.append(f"| {m} | " + " | ".join(f"{pc[c]['estimated']:.3f} ({pc[c]['true']:.3f})" for c in ckpts) + " |")
    lines += ["", "r per checkpoint:", "", "| method | " + " | ".join(ckpts) + " |", "|---|" + "---|" * len(ckpts)]
    for m, r in res["methods"].items():
        lines.append(f"| {m} | " + " | ".join(_fmt(r["groups"][c]["pearson"]) for c in ckpts) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench_csv", type=Path, nargs="+", help="bench.csv files written by `segqc bench`")
    ap.add_argument("--tau", type=float, default=0.8)
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    args = ap.parse_args()
    res = compare(args.bench_csv, args.tau)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1))
    print(markdown(res))


if __name__ == "__main__":
    main()
