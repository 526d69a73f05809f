"""How well does the diffusion segmenter of `diffusion` segment unseen REFERENCE images?

Fits `DiffusionEnsemble` on all but the last ``--held-out`` of the shuffled `reference`
ids of a benchmark and reports mean Dice(pGT, expert) on those held-out reference ids,
with the seconds per case of sampling. Test ids are never touched, so this is the
honest place to compare design choices (e.g. ``--prediction epsilon`` vs ``sample``).

    python benchmarks/diffusion_heldout.py hippocampus --minutes 4 --prediction sample
    python benchmarks/diffusion_heldout.py hippocampus --minutes 4 --prediction epsilon
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA = {"kvasir": "data/kvasir-seg", "hippocampus": "data/hippocampus"}


def main() -> None:
    from segqc.data import load_dataset
    from segqc.methods.base import FitContext
    from segqc.methods.diffusion_ensemble import DiffusionEnsemble
    from segqc.metrics import dice
    from segqc.plan.fingerprint import compute_fingerprint, plan_from_fingerprint

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", choices=sorted(DATA))
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--minutes", type=float, default=4.0, help="training budget")
    ap.add_argument("--prediction", default="sample", choices=["sample", "epsilon"])
    ap.add_argument("--ddim-steps", type=int, nargs="+", default=[5])
    ap.add_argument("--held-out", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    ref = set(json.loads((args.shared / "benchmarks" / args.dataset / "split.json").read_text())["reference"])
    refs = [r for r in load_dataset(args.shared / DATA[args.dataset]) if r.case_id in ref]
    np.random.default_rng(args.seed).shuffle(refs)
    cases = [r.load() for r in refs]
    fit, held = cases[:-args.held_out], cases[-args.held_out:]
    plan = plan_from_fingerprint(compute_fingerprint(fit))
    m = DiffusionEnsemble(max_minutes=args.minutes, prediction=args.prediction, n_threads=args.threads)
    m.fit(fit, plan, FitContext(rng=np.random.default_rng(args.seed), device="cpu", progress=print))
    print(f"{m.train_steps_done_} training steps, final loss {m.final_loss_:.4f}")
    for steps in args.ddim_steps:
        m.ddim_steps = steps
        t0, scores = time.time(), []
        for c in held:
            scores.append(dice(m.score_samples(c, *m.sample(c)).maps["pgt"], c.mask, m.labels_))
        print(f"prediction={args.prediction}, {steps} DDIM steps: held-out reference Dice(pGT, expert) "
              f"{np.mean(scores):.3f} over {len(held)} cases, {(time.time() - t0) / len(held):.2f} s per case")


if __name__ == "__main__":
    main()
