"""Which held-out pairs should a calibrator be fitted on? Judged on reference ids only.

A bundle stores the held-out pairs its calibrators were fitted on (`info["calibration_pairs"]`):
synthetic corruptions of the expert mask, and masks that networks made — segqc's reference
segmenter's snapshots and its simulated sites, the outsider networks, the user's model. Each
network group (one snapshot of one fold network, one site, one outsider epoch…) is left out in
turn, or with ``--families`` every group of one family at once (all of segqc's segmenter, all
outsiders: the harder test, a kind of network the calibration never saw); a calibrator is
fitted on the rest as `segqc fit` fits it, from two pools:

- ``all``: every other pair, corruptions included;
- ``networks``: the other network-made pairs only;
- ``networks+ends``: those, and the corruptions whose raw score lies beyond every network-made
  pair's — `segqc fit`'s pool (`segqc.calibration.pool.calibration_pool`).

and the left-out cases are judged: the group's mean Dice (signed error, groups within 0.03),
per-case MAE, the per-case interval's coverage, and P(Dice ≥ τ) (Brier score, ECE). No
benchmark row is used, so this is evidence a choice may rest on.

    python benchmarks/calibration_pool.py runs/X/kvasir/bundle [more bundles] [--method features] [--families]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from segqc.calibration.calibrator import MIN_GROUP, DiceCalibrator
from segqc.calibration.pool import calibration_pool, is_network_made
from segqc.evaluation.scores import expected_calibration_error

POOLS = ("all", "networks", "networks+ends")


def pairs_of(bundle: Path, method: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw scores, true Dice and source of each stored calibration pair."""
    pairs = json.loads((Path(bundle) / "bundle.json").read_text())["info"]["calibration_pairs"]
    return (np.asarray(pairs["raw"][method], float), np.asarray(pairs["true_dice"], float),
            np.asarray(pairs["source"], dtype=object))


def left_out(raw: np.ndarray, true: np.ndarray, source: np.ndarray, families: bool, tau: float) -> dict:
    """Per left-out unit and pool: the unit's cases judged by a calibrator fitted without it."""
    network = np.array([is_network_made(s) for s in source])
    unit = np.array([s.split(":")[0] if families else s for s in source], dtype=object)
    ok = np.isfinite(raw) & np.isfinite(true)
    out: dict = {pool: {"unit": [], "n": [], "error": [], "abs": [], "covered": [], "brier": [],
                        "p_pass": [], "true": []} for pool in POOLS}
    for name in sorted(set(unit[ok & network].tolist())):
        held = ok & (unit == name)
        if held.sum() < MIN_GROUP:
            continue
        for pool in POOLS:
            rest = ok & ~held
            if pool == "networks":
                rest &= network
            elif pool == "networks+ends":
                rest[rest] = calibration_pool(source[rest], raw[rest])[0]
            groups = [s if n else None for s, n in zip(source[rest], network[rest])]
            cal = DiceCalibrator(tau=tau).fit(raw[rest], true[rest], groups)
            pred, p = cal.predict_dice(raw[held]), cal.predict_pass(raw[held])
            passed = (true[held] >= tau).astype(float)
            o = out[pool]
            o["unit"].append(str(name))
            o["n"].append(int(held.sum()))
            o["error"].append(float(np.mean(pred - true[held])))
            o["abs"].extend(np.abs(pred - true[held]).tolist())
            o["covered"].extend((np.abs(pred - true[held]) <= cal.half_width(raw[held])).tolist())
            o["brier"].extend(((p - passed) ** 2).tolist())
            o["p_pass"].extend(p.tolist())
            o["true"].extend(true[held].tolist())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundles", type=Path, nargs="+")
    ap.add_argument("--method", default="features")
    ap.add_argument("--tau", type=float, default=0.8)
    ap.add_argument("--families", action="store_true",
                    help="leave out every group of one family at once (segmenter, outsider, model…)")
    ap.add_argument("--groups", action="store_true", help="also each left-out unit's mean error")
    args = ap.parse_args()
    unit, units = ("family", "families") if args.families else ("group", "groups")
    print(f"| bundle | pool | left-out {units} | cases | {unit} mean error: mean signed / mean abs / max abs | "
          "within 0.03 | per-case MAE | interval coverage | P(pass) Brier / ECE |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for bundle in args.bundles:
        res = left_out(*pairs_of(bundle, args.method), args.families, args.tau)
        for pool in POOLS:
            r = res[pool]
            e = np.asarray(r["error"])
            if not e.size:
                print(f"| {bundle} | {pool} | 0 | | | | | | |")
                continue
            print(f"| {bundle} | {pool} | {len(e)} | {sum(r['n'])} | {np.average(e, weights=r['n']):+.3f} / "
                  f"{np.mean(np.abs(e)):.3f} / {np.max(np.abs(e)):.3f} | {int(np.sum(np.abs(e) <= 0.03))} | "
                  f"{np.mean(r['abs']):.3f} | {np.mean(r['covered']):.3f} | {np.mean(r['brier']):.3f} / "
                  f"{expected_calibration_error(r['true'], r['p_pass'], args.tau):.3f} |")
        if args.groups:
            for pool in POOLS:
                r = res[pool]
                print("|   " + pool + ": " + ", ".join(f"{u} {e:+.3f}" for u, e in zip(r["unit"], r["error"])) + " |")


if __name__ == "__main__":
    main()
