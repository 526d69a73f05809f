"""Calibration pairs whose candidate is as strong as the judge: how does a bundle's calibration judge them?

Every network-made calibration pair of a fit is made by a network *weaker* than segqc's judge
(the reference segmenter's early snapshots, its networks at simulated sites, the outsiders'
five-minute networks): on Kvasir the best groups reach a mean Dice of 0.67–0.76 where the judge
is at 0.75, while a deployed model is often stronger (0.76–0.80). Where a weaker candidate
disagrees with the judge the candidate is mostly wrong; where a stronger one does, the judge
often is. Does a calibration that never saw the second kind underestimate strong models?

On the held-out calibration cases (reference ids only) the judge's own fold networks give that
kind: fold ``k``'s final mask of a case none of the folds trained on, judged by the *other*
folds' mean — a candidate as strong as a member of the judge, judged independently, as a
model's siblings judge it. This script makes those *sibling pairs* from a fitted bundle and
prints

* how the bundle's calibrator errs on them (calibrated − true mean), per fold, beside its
  strongest groups' left-out errors;
* with ``--check``, the batch correction judged on reference ids with the sibling groups among
  the groups, under three hold-outs: each group left out (as `benchmarks/batch_correction.py`),
  the same with the images split in two halves (the left-out group's pairs on one half judged by
  the rest's pairs on the other), and each *family* left out whole (all of a fold network's
  snapshots, all simulated sites, all outsider networks, all sibling pairs): a deployed model
  is none of segqc's networks;
* with ``--write OUT``, a copy of the bundle whose calibrator was refitted with the sibling pairs
  added (one group per fold), to bench with `run_benchmark.py --out` (it reuses an existing bundle).

    python benchmarks/sibling_pairs.py runs/X/kvasir/bundle [--dataset kvasir] [--check] [--write runs/Y/kvasir/bundle]
"""

from __future__ import annotations

import argparse
import zlib
from pathlib import Path

import numpy as np
from common import data_dir, kept_pairs

from segqc.calibration.calibrator import MIN_GROUP, DiceCalibrator, group_errors, source_family
from segqc.metrics import binary_dice
from segqc.pipeline.bundle import load_bundle, save_bundle
from segqc.pipeline.fit import reference_cases
from segqc.pipeline.training_pairs import mask_on_grid


def sibling_pairs(bundle, method_name: str, cases) -> list[dict]:
    """Per calibration case and fold: the fold's final mask scored against the other folds' mean (raw score,
    descriptors) and its true Dice."""
    from segqc.plan.preprocess import invert_map, preprocess

    method, plan = bundle.methods[method_name], bundle.plan
    out = []
    for c in cases:
        image_ms, _, props = preprocess(c, plan)
        members = method.segmenter_.predict_members(image_ms)
        for k, own in enumerate(members):
            candidate = c.with_mask(mask_on_grid(own, props, plan))
            others = invert_map(np.mean([m for j, m in enumerate(members) if j != k], axis=0), props)
            score = method.score_against(candidate, others)
            truth = [binary_dice(candidate.mask == lab, c.mask == lab) for lab in plan.labels]
            out.append({"fold": k, "case_id": c.case_id, "raw": float(np.mean(list(score.dice.values()))),
                        "true": float(np.mean(truth)), "described": score.features})
    return out


def family(group: str) -> str:
    """What a deployed model is not: a group's network(s) as the systematic bound leaves them out
    (`segqc.calibration.calibrator.source_family`), all sibling pairs counted as one."""
    return "siblings" if group.startswith("sibling:") else source_family(group)


def held_out_errors(raw, true, groups, images, descriptors, names, scheme: str) -> dict[str, tuple]:
    """Per group: (true mean, uncorrected error, corrected error) of its mean Dice, judged as a batch by a
    calibrator fitted on the rest: ``group`` (the group left out), ``image`` (and the other half of the images),
    ``family`` (its whole family left out)."""
    g = np.asarray([x or "" for x in groups], dtype=object)
    half = np.array([zlib.crc32(str(i).encode()) % 2 for i in images])
    out = {}
    for name in sorted(set(g.tolist()) - {""}):
        held = g == name
        if held.sum() < MIN_GROUP:
            continue
        if scheme == "family":
            splits = [(held, ~np.isin(g, [x for x in set(g.tolist()) if x and family(x) == family(name)]))]
        elif scheme == "image":
            splits = [(held & (half == h), ~held & (half != h)) for h in (0, 1)]
        else:
            splits = [(held, ~held)]
        found = []
        for batch, fit in splits:
            cal = DiceCalibrator().fit(raw[fit], true[fit], descriptors=descriptors[fit], names=names)
            base = float(cal.predict_dice(raw[batch]).mean())
            found.append((true[batch].mean(), base, base + cal.correction_.correct(descriptors[batch])["correction"]))
        t, u, c = np.mean(found, axis=0)
        out[name] = (t, u - t, c - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--dataset", default="kvasir")
    ap.add_argument("--method", default="features")
    ap.add_argument("--check", action="store_true", help="judge the batch correction on reference ids, siblings "
                    "among the groups, under three hold-outs")
    ap.add_argument("--write", type=Path, default=None, metavar="OUT",
                    help="write the bundle with the method's calibrator refitted on its pairs plus the sibling pairs")
    args = ap.parse_args()
    bundle = load_bundle(args.bundle)
    cal = bundle.calibrators[args.method]
    if cal.correction_ is None:
        raise SystemExit(f"{args.bundle}: {args.method} keeps no descriptors of its calibration pairs")
    cases, *_ = reference_cases(data_dir(args.dataset), ids=bundle.info["calibration_ids"])
    sib = sibling_pairs(bundle, args.method, cases)
    kept = kept_pairs(args.bundle, args.method)
    if len(kept["raw"]) != cal.n_:
        raise SystemExit(f"{args.bundle}: its stored pairs ({len(kept['raw'])}) are not its calibrator's ({cal.n_})")
    raw, true, groups, images = kept["raw"], kept["true"], list(kept["group"]), kept["image"]
    print(f"{args.bundle}: {len(cases)} calibration cases; judge (all folds) held-out Dice "
          f"{bundle.info['segmenter']['heldout_dice_mean']:.3f}")
    print("| group | n | true | calibrated | error |\n|---|---|---|---|---|")
    for k in sorted({s["fold"] for s in sib}):
        t = np.array([s["true"] for s in sib if s["fold"] == k])
        d = cal.predict_dice([s["raw"] for s in sib if s["fold"] == k])
        print(f"| sibling:fold{k} (final mask, judged by the other folds) | {len(t)} | {t.mean():.3f} | "
              f"{d.mean():.3f} | {d.mean() - t.mean():+.3f} |")
    g = np.asarray([x or "" for x in groups], dtype=object)
    strongest = sorted(group_errors(raw, true, groups).items(), key=lambda kv: -true[g == kv[0]].mean())[:6]
    for name, err in strongest:
        print(f"| {name} (left out of the fit) | {int((g == name).sum())} | {true[g == name].mean():.3f} | "
              f"{true[g == name].mean() + err:.3f} | {err:+.3f} |")
    names = cal.correction_.names_
    all_raw = np.r_[raw, [s["raw"] for s in sib]]
    all_true = np.r_[true, [s["true"] for s in sib]]
    all_groups = list(groups) + [f"sibling:fold{s['fold']}" for s in sib]
    all_images = np.r_[images, [s["case_id"] for s in sib]]
    described = np.vstack([cal.correction_.descriptors_.astype(float),
                           [[s["described"].get(n, np.nan) for n in names] for s in sib]])
    if args.check:
        print("\nbatch correction on reference ids (siblings among the groups): estimate − truth of each "
              "group's mean Dice")
        print("| hold-out | groups | uncorrected: mean abs / within 0.03 / max | corrected: mean abs / within 0.03 / "
              "max | siblings corrected |\n|---|---|---|---|---|")
        for scheme in ("group", "image", "family"):
            res = held_out_errors(all_raw, all_true, all_groups, all_images, described, names, scheme)
            u, c = (np.array([v[i] for v in res.values()]) for i in (1, 2))
            sibs = " ".join(f"{v[2]:+.3f}" for k, v in res.items() if k.startswith("sibling:"))
            print(f"| {scheme} | {len(res)} | {np.abs(u).mean():.3f} / {int((np.abs(u) <= 0.03).sum())} / "
                  f"{np.abs(u).max():.3f} | {np.abs(c).mean():.3f} / {int((np.abs(c) <= 0.03).sum())} / "
                  f"{np.abs(c).max():.3f} | {sibs} |")
    if args.write is None:
        return
    refit = DiceCalibrator(tau=cal.tau, coverage=cal.coverage).fit(all_raw, all_true, all_groups, described, names)
    bundle.calibrators[args.method] = refit
    save_bundle(bundle, args.write)
    print(f"wrote {args.write}: {args.method} calibrated on {refit.n_} pairs ({len(sib)} sibling pairs added); "
          f"systematic bound {cal.systematic_:.3f} → {refit.systematic_:.3f}")


if __name__ == "__main__":
    main()
