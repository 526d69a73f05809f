"""How good a signal is segqc's judge on a good model's masks, next to the model's own siblings?

Without the user's model, `features` rests on the candidate's agreement with segqc's own segmenter (the
judge); with it, `model_uncertainty` rests on agreement between networks trained as the model was (pairwise
Dice between ensemble members, Zenk et al. 2024). This script measures both raw signals, with no regressor
and no calibration, on every test row of ``--checkpoint`` (by default the deployed model's masks):

* the judge: the candidate's Dice with the judge's mask (fold networks averaged, as at scoring), and the
  judge's fold networks' mean pairwise Dice (its own disagreement);
* the siblings: the candidate's mean Dice with the masks of ``--siblings`` (other checkpoints of the
  benchmark: networks trained as the deployed one, other seeds or architectures);
* stand-in judges (``--stand-ins``): each checkpoint's masks on their own, as a one-network judge of that
  checkpoint's strength would draw them: weaker and stronger judges than segqc's, of the same or another
  architecture than the model, to see how strong a judge has to be for a given r and AUROC. Without a
  bundle only the checkpoints' signals are measured (no network is run).

For each opinion it reports its own Dice with the expert mask on these images (how strong it is), the
correlation of that Dice with the candidate's (whether the two fail on the same images), and how the
agreement predicts the candidate's true Dice: Pearson r, AUROC of failures (true Dice < ``--tau``), how many
of the candidate's failures it passes (agreement ≥ ``--tau``: failures it shares) and how many of its good
masks it flags (agreement < ``--tau``: false alarms). Every Dice here is of the foreground as one label
(Kvasir's); on a dataset of several labels it is the Dice of their union, not the benchmark's mean over labels.
README: "A judge that gets twice the updates; how strong a judge the per-case targets need".

    python benchmarks/judge_strength.py runs/boxes/kvasir/bundle --checkpoint unet_s0_ep100 \\
        --siblings unet_s1_ep100 unet_s2_ep100
    python benchmarks/judge_strength.py --stand-ins unet_s0_ep3 unet_s0_ep8 segresnet_s0_ep8 \\
        segresnet_s0_ep30 unet_s1_ep100
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from common import read_split, rows_by_image

from segqc.data.images import read_mask
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
    ap.add_argument("bundle", type=Path, nargs="?", default=None,
                    help="a bundle with `features`: its judge's signals (left out: the checkpoints' alone)")
    ap.add_argument("--dataset", default="kvasir")
    ap.add_argument("--checkpoint", default="unet_s0_ep100", help="the candidates: this checkpoint's test rows")
    ap.add_argument("--siblings", nargs="*", default=["unet_s1_ep100", "unet_s2_ep100"],
                    help="checkpoints whose masks stand for the model's ensemble members")
    ap.add_argument("--stand-ins", nargs="*", default=[],
                    help="checkpoints each standing for a one-network judge of its own strength")
    ap.add_argument("--tau", type=float, default=0.8)
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here too")
    args = ap.parse_args()

    by_image = rows_by_image(args.dataset, set(read_split(args.dataset)["test"]))
    images = sorted(i for i, rows in by_image.items() if args.checkpoint in rows)
    if not images:
        raise SystemExit(f"no test rows of checkpoint {args.checkpoint!r} in {args.dataset}")
    method = load_bundle(args.bundle, methods=["features"]).methods["features"] if args.bundle else None

    # per signal: its own Dice with the expert mask, and its agreement with the candidate, image by image
    own: dict[str, list[float]] = defaultdict(list)
    agree: dict[str, list[float]] = defaultdict(list)
    true = []
    judge, members = "judge agrees with the candidate", "judge's fold networks agree with each other"
    siblings = f"siblings ({', '.join(args.siblings)}) agree with the candidate"
    for image_id in track(images, f"judging {args.checkpoint}'s masks"):
        masks_of = by_image[image_id]  # this image's row of each checkpoint
        case = masks_of[args.checkpoint].load()
        candidate, expert = case.mask > 0, case.truth > 0
        true.append(binary_dice(candidate, expert))
        if method is not None:
            mask = method.segmenter_proba(case).argmax(0) > 0
            own[judge].append(binary_dice(mask, expert))
            agree[judge].append(binary_dice(candidate, mask))
            folds = [p.argmax(0) > 0 for p in method.segmenter_members(case)]
            agree[members].append(float(np.mean([binary_dice(a, b) for a, b in itertools.combinations(folds, 2)])))
        other = {c: read_mask(masks_of[c].mask)[0] > 0 for c in {*args.siblings, *args.stand_ins} if c in masks_of}
        if args.siblings and all(c in other for c in args.siblings):
            own[siblings].append(float(np.mean([binary_dice(other[c], expert) for c in args.siblings])))
            agree[siblings].append(float(np.mean([binary_dice(candidate, other[c]) for c in args.siblings])))
        for c in args.stand_ins:
            if c in other:
                own[f"{c} alone agrees with the candidate"].append(binary_dice(other[c], expert))
                agree[f"{c} alone agrees with the candidate"].append(binary_dice(candidate, other[c]))
    true_a = np.asarray(true)
    rows = [_signal(name, own.get(name, []), values, true_a, args.tau) for name, values in agree.items()
            if len(values) == len(true)]
    print(f"{args.checkpoint}: {len(true)} test images, true mean Dice {true_a.mean():.3f}, "
          f"{int((true_a < args.tau).sum())} below {args.tau}")
    print("| signal | its own Dice | r (own Dice, candidate's) | r | AUROC | failures passed | good masks flagged |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        own_dice = "–" if r["own_dice"] is None else f"{r['own_dice']:.3f}"
        shared = "–" if r["r_own_vs_candidate"] is None else f"{r['r_own_vs_candidate']:.3f}"
        print(f"| {r['signal']} | {own_dice} | {shared} | {r['r']:.3f} | {r['auroc']:.3f} | "
              f"{r['failures_passed']} of {r['failures']} | {r['good_flagged']} of {r['good']} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"bundle": str(args.bundle), "checkpoint": args.checkpoint, "n": len(true),
                                        "true_mean_dice": round(float(true_a.mean()), 4), "signals": rows}, indent=1))


if __name__ == "__main__":
    main()
