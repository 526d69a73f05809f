"""Per-case intervals on a model or site the calibration never saw, judged on reference ids only.

A bundle stores the held-out pairs its calibrators were fitted on, with their groups (each
snapshot of each fold network of segqc's segmenter, each simulated site, the user's model;
corruptions of the expert mask are no group). Each group in turn is left out, the calibrator
is fitted on the rest as `segqc fit` fits it, and the left-out group's cases are judged: how
often does the interval hold their true Dice, and how wide is it? Three intervals side by side:
the conformal radius alone, one radius plus the systematic error bound (the interval before
the bins), and the radius of the case's bin of calibrated Dice plus the bound (the interval
now, `segqc.calibration.calibrator`). Coverage and width are also given per band of
calibrated Dice: one radius for all levels over-covers the cases QC judges good. No
benchmark row is used, so this is evidence a choice may rest on.

``--bench BENCH_CSV`` (one per bundle, in order) also judges a `segqc bench` output's rows
with the calibrator refitted on the bundle's stored pairs, as `segqc fit` now fits it, from
the rows' raw scores: what the bench would have said with these intervals (its predictions are
the same). Those figures report; they choose nothing.

    python benchmarks/group_coverage.py runs/X/kvasir/bundle [more bundles] [--method features] [--groups]
        [--bench runs/X/kvasir/bench/bench.csv ...]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from common import calibration_pairs

from segqc.calibration.calibrator import MIN_GROUP, DiceCalibrator

#: the intervals compared: each a function of a fitted calibrator and raw scores → half widths
RULES = {
    "radius alone": lambda cal, raw: np.full(len(raw), cal.radius_),
    "one radius + bound": lambda cal, raw: np.full(len(raw), cal.radius_ + np.nan_to_num(cal.systematic_)),
    "bin radius + bound": lambda cal, raw: cal.half_width(raw),
}
#: bands of calibrated Dice the coverage is also given in
BANDS = ((0.0, 0.5), (0.5, 0.8), (0.8, 1.01))


class Tally:
    """Coverage and width of each rule, overall and per band of calibrated Dice."""

    def __init__(self):
        self.hit = {r: np.zeros(len(BANDS)) for r in RULES}
        self.width = {r: np.zeros(len(BANDS)) for r in RULES}
        self.n = np.zeros(len(BANDS))

    def add(self, cal: DiceCalibrator, raw: np.ndarray, true: np.ndarray) -> dict[str, float]:
        """Count these cases; their coverage under each rule."""
        pred = cal.predict_dice(raw)
        band = np.digitize(pred, [b[1] for b in BANDS[:-1]])
        self.n += np.bincount(band, minlength=len(BANDS))
        out = {}
        for rule, half in RULES.items():
            h = half(cal, raw)
            inside = np.abs(pred - true) <= h
            self.hit[rule] += np.bincount(band, weights=inside, minlength=len(BANDS))
            # the interval's width as a user sees it: clipped to [0, 1]
            self.width[rule] += np.bincount(band, weights=np.clip(pred + h, 0, 1) - np.clip(pred - h, 0, 1),
                                            minlength=len(BANDS))
            out[rule] = float(inside.mean())
        return out

    def row(self, rule: str) -> str:
        n = np.maximum(self.n, 1)
        bands = " | ".join(f"{h:.2f} / {w:.2f}" if m else "–"
                           for h, w, m in zip(self.hit[rule] / n, self.width[rule] / n, self.n))
        return (f"{self.hit[rule].sum() / self.n.sum():.3f} / {self.width[rule].sum() / self.n.sum():.3f} | "
                f"{bands}")


def left_out_coverage(raw: np.ndarray, true: np.ndarray, groups: list) -> tuple[Tally, dict]:
    """Each left-out group's cases judged by the calibrator fitted without the group."""
    g = np.asarray([x if x is not None else "" for x in groups], dtype=object)
    ok = np.isfinite(raw) & np.isfinite(true)
    tally, per_group = Tally(), {"group": [], "n": [], "error": [], "coverage": [], "half_width": []}
    for name in sorted(set(g[ok].tolist()) - {""}):
        held = ok & (g == name)
        if held.sum() < MIN_GROUP:
            continue
        rest = ok & ~held
        cal = DiceCalibrator().fit(raw[rest], true[rest], list(g[rest]))
        per_group["coverage"].append(tally.add(cal, raw[held], true[held]))
        per_group["group"].append(str(name))
        per_group["n"].append(int(held.sum()))
        per_group["error"].append(float(np.mean(cal.predict_dice(raw[held]) - true[held])))
        per_group["half_width"].append((cal.radius_, cal.radius_ + np.nan_to_num(cal.systematic_)))
    return tally, per_group


def bench_coverage(raw: np.ndarray, true: np.ndarray, groups: list, bench_csv: Path, method: str) -> dict:
    """A bench's rows (all, and the deployed model's) judged by the calibrator fitted on all stored pairs."""
    ok = np.isfinite(raw) & np.isfinite(true)
    cal = DiceCalibrator().fit(raw[ok], true[ok], [x for x, k in zip(groups, ok) if k])
    with open(bench_csv, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "ok" and r.get("dice_true") not in (None, "")]
    x = np.array([float(r[f"{method}_raw"]) for r in rows])
    t = np.array([float(r["dice_true"]) for r in rows])
    deployed = np.array([r.get("is_deployed") == "True" for r in rows])
    out = {"all": Tally(), "deployed": Tally()}
    out["all"].add(cal, x, t)
    if deployed.any():
        out["deployed"].add(cal, x[deployed], t[deployed])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundles", type=Path, nargs="+")
    ap.add_argument("--method", default="features")
    ap.add_argument("--groups", action="store_true", help="also each left-out group's mean error and coverage")
    ap.add_argument("--bench", type=Path, nargs="*", default=[], help="a bench.csv per bundle, in order")
    args = ap.parse_args()
    if args.bench and len(args.bench) != len(args.bundles):
        ap.error("--bench needs one bench.csv per bundle")
    pairs = {bundle: calibration_pairs(bundle, args.method) for bundle in args.bundles}
    found = [(bundle, *left_out_coverage(*pairs[bundle])) for bundle in args.bundles]
    print("| bundle | groups | cases | coverage, radius alone: pooled / worst group | one radius + bound: pooled / "
          "worst group | half width: radius / radius + bound (median) |\n|---|---|---|---|---|---|")
    for bundle, tally, per_group in found:
        n = np.asarray(per_group["n"])
        cover = {r: np.array([c[r] for c in per_group["coverage"]]) for r in RULES}
        width = np.median(np.asarray(per_group["half_width"]), axis=0)
        print(f"| {bundle} | {len(n)} | {n.sum()} | {np.average(cover['radius alone'], weights=n):.3f} / "
              f"{cover['radius alone'].min():.2f} | {np.average(cover['one radius + bound'], weights=n):.3f} / "
              f"{cover['one radius + bound'].min():.2f} | {width[0]:.3f} / {width[1]:.3f} |")
    bands = " | ".join(f"Dice {a:.1f}–{min(b, 1):.1f}" for a, b in BANDS)
    print(f"\ncoverage / mean width of the 90 % interval, by calibrated Dice\n\n"
          f"| bundle: cases | groups | interval | all | {bands} |\n|---|---|---|---|---|---|---|")
    for i, (bundle, tally, per_group) in enumerate(found):
        raw, true, groups = pairs[bundle]
        for rule in RULES:
            print(f"| {bundle}: left-out groups | {len(per_group['n'])} | {rule} | {tally.row(rule)} |")
        if args.groups:
            for g, n_g, e, c in zip(per_group["group"], per_group["n"], per_group["error"], per_group["coverage"]):
                cover = ", ".join(f"{r} {v:.2f}" for r, v in c.items())
                print(f"|   {g} | {n_g} | mean error {e:+.3f} | {cover} | | | |")
        if args.bench:
            for rows, t in bench_coverage(raw, true, groups, args.bench[i], args.method).items():
                if t.n.sum():
                    for rule in RULES:
                        print(f"| {args.bench[i]}: {rows} rows | | {rule} | {t.row(rule)} |")


if __name__ == "__main__":
    main()
