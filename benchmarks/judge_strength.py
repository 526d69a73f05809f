"""How good a signal is segqc's judge on a good model's masks, next to the model's own siblings?

Without the user's model, `features` rests on the candidate's agreement with segqc's own segmenter (the
judge); with it, `model_uncertainty` rests on agreement between networks trained as the model was (pairwise
Dice between ensemble members, Zenk et al. 2024). This script measures both raw signals, with no regressor
and no calibration, on every test row of ``--checkpoint`` (by default the deployed model's masks):

* the judge: the candidate's Dice with the judge's mask (fold networks averaged, as at scoring), and the
  judge's fold networks' mean pairwise Dice (its own disagreement);
* the siblings: the candidate's mean Dice with the masks of ``--siblings`` (other checkpoints of the
  benchmark: networks trained as the deployed one, other seeds or architectures).

For each opinion it reports its own Dice with the expert mask on these images (how strong it is), the
correlation of that Dice with the candidate's (whether the two fail on the same images), and how the
agreement predicts the candidate's true Dice: Pearson r, AUROC of failures (true Dice < ``--tau``), how many
of the candidate's failures it passes (agreement ≥ ``--tau``: failures it shares) and how many of its good
masks it flags (agreement < ``--tau``: false alarms).
README: "A judge that gets twice the updates; how strong a judge the per-case targets need".

    python benchmarks/judge_strength.py runs/boxes/kvasir/bundle --checkpoint unet_s0_ep100 \\
        --siblings unet_s1_ep100 unet_s2_ep100
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from common import SHARED, read_split

from segqc.data import read_manifest
from segqc.evaluation.scores import auroc_fail, pearson
from segqc.metrics import binary_dice
from segqc.pipeline.bundle import load_bundle
from segqc.ui import track


def _signal(name: str, own: list[float], agreement: list[float], true: np.ndarray, tau: float) -> dict:
    own_a, agree = np.asarray(own), np.asarray(agreement)
    failures = true < tau
    return {"signal": name, "own_dice": round(float(own_a.mean()), 3) if len(own_a) else None,
            "r_own_vs_candidate": round(pearson(true, own_a), 3) if len(own_a) else None,
            "r": round(pearson(true, agree), 3), "auroc": round(auroc_fail(true, agree, tau), 3),
            "failures_passed": int((agree[failures] >= tau).sum()), "failures": int(failures.sum()),
            "good_flagged": int((agree[~failures] < tau).sum()), "good": int((~failures).sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--dataset", default="kvasir")
    ap.add_argument("--checkpoint", default="unet_s0_ep100", help="the candidates: this checkpoint's test rows")
    ap.add_argument("--siblings", nargs="*", default=["unet_s1_ep100", "unet_s2_ep100"],
                    help="checkpoints whose masks stand for the model's ensemble members")
    ap.add_argument("--tau", type=float, default=0.8)
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here too")
    args = ap.parse_args()

    test = set(read_split(args.dataset)["test"])
    refs = read_manifest(SHARED / "benchmarks" / args.dataset / "cases.csv", root=SHARED, mask_col="prediction",
                         truth_col="ground_truth")
    by_image: dict[str, dict[str, object]] = defaultdict(dict)
    for ref in refs:
        if ref.extra.get("source_id") in test:
            by_image[ref.extra["source_id"]][ref.extra.get("checkpoint")] = ref
    images = sorted(i for i, rows in by_image.items() if args.checkpoint in rows)
    if not images:
        raise SystemExit(f"no test rows of checkpoint {args.checkpoint!r} in {args.dataset}")
    method = load_bundle(args.bundle, methods=["features"]).methods["features"]

    true, judge_own, judge_agree, members_agree, sib_own, sib_agree = [], [], [], [], [], []
    for image_id in track(images, f"judging {args.checkpoint}'s masks"):
        case = by_image[image_id][args.checkpoint].load()
        candidate, expert = case.mask > 0, case.truth > 0
        true.append(binary_dice(candidate, expert))
        judge = method.segmenter_proba(case).argmax(0) > 0
        judge_own.append(binary_dice(judge, expert))
        judge_agree.append(binary_dice(candidate, judge))
        members = [p.argmax(0) > 0 for p in method.segmenter_members(case)]
        members_agree.append(float(np.mean([binary_dice(a, b) for a, b in itertools.combinations(members, 2)])))
        siblings = [by_image[image_id][s].load().mask > 0 for s in args.siblings if s in by_image[image_id]]
        if siblings:
            sib_own.append(float(np.mean([binary_dice(s, expert) for s in siblings])))
            sib_agree.append(float(np.mean([binary_dice(candidate, s) for s in siblings])))
    true_a = np.asarray(true)
    rows = [_signal("judge agrees with the candidate", judge_own, judge_agree, true_a, args.tau),
            _signal("judge's fold networks agree with each other", [], members_agree, true_a, args.tau)]
    if len(sib_agree) == len(true):
        rows.append(_signal(f"siblings ({', '.join(args.siblings)}) agree with the candidate", sib_own, sib_agree,
                            true_a, args.tau))
    print(f"{args.checkpoint}: {len(true)} test images, true mean Dice {true_a.mean():.3f}, "
          f"{int((true_a < args.tau).sum())} below {args.tau}")
    print("| signal | its own Dice | r (own Dice, candidate's) | r | AUROC | failures passed | good masks flagged |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        own = "–" if r["own_dice"] is None else f"{r['own_dice']:.3f}"
        shared = "–" if r["r_own_vs_candidate"] is None else f"{r['r_own_vs_candidate']:.3f}"
        print(f"| {r['signal']} | {own} | {shared} | {r['r']:.3f} | {r['auroc']:.3f} | "
              f"{r['failures_passed']} of {r['failures']} | {r['good_flagged']} of {r['good']} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"bundle": str(args.bundle), "checkpoint": args.checkpoint, "n": len(true),
                                        "true_mean_dice": round(float(true_a.mean()), 4), "signals": rows}, indent=1))


if __name__ == "__main__":
    main()
